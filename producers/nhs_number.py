"""NHS numbers: the Modulus 11 check, and a generator for synthetic test data.

An NHS number is ten digits; the tenth is a check digit over the first nine
(weights 10 down to 2, check = 11 - (sum mod 11), where 11 becomes 0 and 10
means the nine digits can never form a valid number).

`generate` only produces numbers in 999 000 0000 - 999 999 9999, the range
the NHS reserves for test data, so synthetic records never collide with a
real patient's number.
"""

from __future__ import annotations

import random

_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
TEST_RANGE_PREFIX = "999"


def check_digit(first_nine: str) -> int | None:
    """The Modulus 11 check digit for nine digits, or None when it would be 10 (no valid number)."""
    if len(first_nine) != 9 or not (first_nine.isascii() and first_nine.isdigit()):
        raise ValueError(f"expected nine digits, got {first_nine!r}")
    total = sum(int(d) * w for d, w in zip(first_nine, _WEIGHTS))
    check = 11 - (total % 11)
    if check == 11:
        return 0
    if check == 10:
        return None
    return check


def is_valid(nhs: str) -> bool:
    """True when `nhs` is exactly ten ASCII digits whose last digit is the Modulus 11 check digit."""
    if not isinstance(nhs, str) or len(nhs) != 10 or not (nhs.isascii() and nhs.isdigit()):
        return False
    expected = check_digit(nhs[:9])
    return expected is not None and expected == int(nhs[9])


def generate(rng: random.Random) -> str:
    """A valid NHS number in the test-data range 999 000 0000 - 999 999 9999.

    Candidates whose check digit would be 10 are rejected and redrawn.
    """
    while True:
        first_nine = f"{TEST_RANGE_PREFIX}{rng.randrange(1_000_000):06d}"
        check = check_digit(first_nine)
        if check is not None:
            return f"{first_nine}{check}"
