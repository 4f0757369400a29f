"""The Modulus 11 check's shortcut (all ten digits weighted, over the bytes) gives the verdicts the rule does.

The reference here is the rule as written (weights 10 down to 2, check = 11 - (sum
mod 11), 11 -> 0, 10 -> no valid number) and the reasons in their order, compared with
schemas.nhs_number and the validation rule over random and edge-case values.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas import nhs_number
from schemas.validation import Limits, Problem, _check_nhs_number, _context

FAILS = "fails the Modulus 11 check (mistyped?)"


def reference_check_digit(first_nine: str) -> int | None:
    if not isinstance(first_nine, str) or len(first_nine) != 9 or not all(c in "0123456789" for c in first_nine):
        raise ValueError("expected nine ASCII digits")
    total = sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    return 0 if check == 11 else None if check == 10 else check


def reference_problem(nhs: object) -> str | None:
    if not isinstance(nhs, str):
        return f"expected a string of 10 digits, got {type(nhs).__name__}"
    if not nhs:
        return "is empty (expected 10 digits)"
    if not all(c in "0123456789" for c in nhs):
        return "must be 10 digits 0-9, with no spaces or other characters"
    if len(nhs) != 10:
        return f"must be exactly 10 digits, got {len(nhs)}"
    expected = reference_check_digit(nhs[:9])
    return None if expected is not None and expected == int(nhs[9]) else FAILS


class Text(str):
    """A str subclass: judged as a str."""


RNG = random.Random(20261202)
RANDOM_TEN = [f"{RNG.randrange(10**10):010d}" for _ in range(100_000)]
EDGE: list[Any] = [
    "9434765919",  # valid
    "9434765910",
    "0000000000",  # check 11 -> 0: valid
    "0000000060",  # the first nine give check 10: no last digit is valid
    *(f"000000006{d}" for d in range(10)),
    *(f"943476591{d}" for d in range(10)),
    "943476591a",
    " 943476591",
    "9434765919 ",
    "943 476 5919",
    "９４３４７６５９１９",  # full-width digits: isdigit, not ASCII
    "٩٤٣٤٧٦٥٩١٩",  # Arabic-Indic digits
    "943476591²",  # a superscript: isdigit, not a decimal digit
    "①②③④⑤⑥⑦⑧⑨⓪",
    "",
    "9",
    "943476591",
    "94347659190",
    "9" * 100,
    "\x00" * 10,
    9434765919,
    None,
    b"9434765919",
    ["9434765919"],
    Text("9434765919"),
    Text("9434765910"),
]


def test_random_ten_digit_strings_get_the_reference_verdicts() -> None:
    got = [nhs_number.problem(n) for n in RANDOM_TEN]
    assert got == [reference_problem(n) for n in RANDOM_TEN]
    valid = sum(g is None for g in got)
    assert 8_000 < valid < 10_200  # about 1 in 11 are valid: both verdicts were exercised


def test_random_nine_digit_prefixes_get_the_reference_check_digit() -> None:
    firsts = [n[:9] for n in RANDOM_TEN]
    got = [nhs_number.check_digit(n) for n in firsts]
    assert got == [reference_check_digit(n) for n in firsts]
    assert {None, 0} <= set(got) and set(range(1, 10)) <= set(got)


@pytest.mark.parametrize("value", EDGE, ids=repr)
def test_edge_cases_get_the_reference_verdict(value: Any) -> None:
    assert nhs_number.problem(value) == reference_problem(value)
    assert nhs_number.is_valid(value) is (reference_problem(value) is None)


def test_check_digit_10_is_invalid_and_11_is_0() -> None:
    assert nhs_number.check_digit("000000006") is None
    assert [d for d in range(10) if nhs_number.problem(f"000000006{d}") is None] == []
    assert nhs_number.check_digit("000000000") == 0
    assert [d for d in range(10) if nhs_number.problem(f"000000000{d}") is None] == [0]
    assert [d for d in range(10) if nhs_number.problem(f"943476591{d}") is None] == [9]


@pytest.mark.parametrize("bad", ["94347659a", "94347659", "9434765919", "９４３４７６５９１", 943476591, None])
def test_check_digit_refuses_what_is_not_nine_ascii_digits(bad: Any) -> None:
    with pytest.raises(ValueError, match="expected nine ASCII digits"):
        nhs_number.check_digit(bad)
    with pytest.raises(ValueError):
        reference_check_digit(bad)


@pytest.mark.parametrize("limit", [65_536, 39, 8])
def test_the_validation_rule_reports_the_reference_problem_and_the_size(limit: int) -> None:
    ctx = _context(datetime(2026, 6, 1, tzinfo=UTC), Limits(max_string_bytes=limit))
    for value in [*EDGE, *RANDOM_TEN[:2_000]]:
        out: list[Problem] = []
        _check_nhs_number(value, "person.nhs_number", out, ctx)
        expected = [] if value is None else [Problem("person.nhs_number", p) for p in [reference_problem(value)] if p]
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > limit:
            expected.append(
                Problem("person.nhs_number", f"is {len(value.encode())} bytes (UTF-8), over the limit of {limit} bytes")
            )
        assert out == expected, value
