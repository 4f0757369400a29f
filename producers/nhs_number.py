"""Synthetic NHS numbers for test data; the Modulus 11 check itself is in ``schemas.nhs_number``.

`generate` only produces numbers in 999 000 0000 - 999 999 9999, the range
the NHS reserves for test data, so synthetic records never collide with a
real patient's number. ``check_digit`` and ``is_valid`` are re-exported so
older imports keep working; new code imports them from ``schemas.nhs_number``.
"""

from __future__ import annotations

import random

from schemas.nhs_number import check_digit, is_valid

__all__ = ["TEST_RANGE_PREFIX", "check_digit", "generate", "is_valid"]

TEST_RANGE_PREFIX = "999"


def generate(rng: random.Random) -> str:
    """A valid NHS number in the test-data range 999 000 0000 - 999 999 9999.

    Candidates whose check digit would be 10 are rejected and redrawn.
    """
    while True:
        first_nine = f"{TEST_RANGE_PREFIX}{rng.randrange(1_000_000):06d}"
        check = check_digit(first_nine)
        if check is not None:
            return f"{first_nine}{check}"
