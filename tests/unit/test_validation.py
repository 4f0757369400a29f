"""Plausibility rules: each rule passes on its boundary and fails one step past it (pure, no services)."""

from __future__ import annotations

import copy
from datetime import UTC, date, datetime, timedelta
from typing import Any

import fastavro
import pytest

from producers.synthetic import build_scenario
from schemas.serde import _named_types
from schemas.validation import Limits, Problem, _compile_record, _Context, event_problems, size_problem
from tests.unit.test_serde import NHS_A, NHS_B, RECORDS

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BAD_CHECK_DIGIT = NHS_A[:9] + str((int(NHS_A[9]) + 1) % 10)


def problems(event_type: str, record: dict[str, Any], limits: Limits = Limits()) -> list[tuple[str, str]]:
    return [(p.field, p.problem) for p in event_problems(event_type, record, NOW, limits)]


def with_value(event_type: str, path: str, value: Any) -> dict[str, Any]:
    record = copy.deepcopy(RECORDS[event_type]())
    *parents, last = path.split(".")
    target = record
    for part in parents:
        target = target[part]
    target[last] = value
    return record


@pytest.mark.parametrize("event_type", sorted(RECORDS))
def test_the_test_records_are_plausible(event_type: str) -> None:
    assert problems(event_type, RECORDS[event_type]()) == []


def test_every_synthetic_event_is_plausible() -> None:
    later = datetime(2026, 12, 1, tzinfo=UTC)
    for event in build_scenario(n_events=400, seed=11).events:
        assert event_problems(event.event_type, event.record, later) == [], event.record["envelope"]["event_id"]


# --------------------------------------------------------------------------- NHS numbers

NHS_FIELDS = [
    ("custody", "subject.nhs_number", True),
    ("referral", "subject.nhs_number", True),
    ("natal_care", "mother.nhs_number", False),
    ("natal_care", "baby.nhs_number", True),
]


@pytest.mark.parametrize(("event_type", "path", "optional"), NHS_FIELDS)
@pytest.mark.parametrize(
    ("value", "why"),
    [
        (BAD_CHECK_DIGIT, "fails the Modulus 11 check (mistyped?)"),
        ("", "is empty (expected 10 digits)"),
        (NHS_A[:9], "must be exactly 10 digits, got 9"),
        (NHS_A + "0", "must be exactly 10 digits, got 11"),
        (f"{NHS_A[:3]} {NHS_A[3:6]} {NHS_A[6:]}", "must be 10 digits 0-9, with no spaces or other characters"),
        ("".join(chr(0x660 + int(d)) for d in NHS_A), "must be 10 digits 0-9, with no spaces or other characters"),
        ("0000000060", "fails the Modulus 11 check (mistyped?)"),  # check digit would be 10: no valid number
    ],
)
def test_bad_nhs_numbers_are_named_without_the_number(
    event_type: str, path: str, optional: bool, value: str, why: str
) -> None:
    found = event_problems(event_type, with_value(event_type, path, value), NOW)
    assert [(p.field, p.problem) for p in found] == [(path, why)]
    assert value == "" or value not in str(found[0])


@pytest.mark.parametrize(("event_type", "path", "optional"), NHS_FIELDS)
def test_valid_null_and_absent_nhs_numbers(event_type: str, path: str, optional: bool) -> None:
    assert problems(event_type, with_value(event_type, path, NHS_B)) == []
    if optional:
        assert problems(event_type, with_value(event_type, path, None)) == []
        absent = with_value(event_type, path, None)
        del absent[path.split(".")[0]]["nhs_number"]
        assert problems(event_type, absent) == []
    else:
        assert problems(event_type, with_value(event_type, path, None)) == [(path, "is missing")]


def test_nhs_number_of_the_wrong_type_is_named() -> None:
    assert problems("natal_care", with_value("natal_care", "mother.nhs_number", 9434765919)) == [
        ("mother.nhs_number", "expected a string of 10 digits, got int")
    ]


@pytest.mark.parametrize("weeks", [-1, 46, 2**31 - 1])
def test_gestation_weeks_that_cannot_be_true_are_named(weeks: int) -> None:
    assert problems("natal_care", with_value("natal_care", "gestation_weeks", weeks)) == [
        ("gestation_weeks", "is outside 0 to 45 weeks")
    ]


@pytest.mark.parametrize("weeks", [0, 40, 45, None])
def test_gestation_weeks_in_range_or_absent_are_plausible(weeks: int | None) -> None:
    assert problems("natal_care", with_value("natal_care", "gestation_weeks", weeks)) == []


def test_an_integer_too_big_for_its_avro_type_says_so() -> None:
    from schemas.errors import InvalidRecord
    from schemas.serde import Catalogue

    record = with_value("natal_care", "gestation_weeks", 2**40)
    with pytest.raises(InvalidRecord) as refused:
        Catalogue.default().encode("natal_care", record)
    assert "gestation_weeks: out of range for an Avro int (-2,147,483,648 to 2,147,483,647)" in str(refused.value)
    assert str(2**40) not in str(refused.value)


def test_nhs_number_fields_are_found_from_the_schema_however_deep() -> None:
    """A new event type is covered by its schema alone: here one with people in an array."""
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "Household",
            "namespace": "test",
            "fields": [
                {
                    "name": "people",
                    "type": {
                        "type": "array",
                        "items": {
                            "type": "record",
                            "name": "Member",
                            "fields": [
                                {"name": "nhs_number", "type": ["null", "string"], "default": None},
                                {"name": "date_of_birth", "type": {"type": "int", "logicalType": "date"}},
                            ],
                        },
                    },
                },
                {"name": "tags", "type": {"type": "map", "values": "string"}},
            ],
        }
    )
    assert isinstance(schema, dict)
    check = _compile_record(schema, _named_types(schema), "")
    out: list[Problem] = []
    ctx = _Context(NOW, date(2026, 6, 2), NOW.date(), NOW + timedelta(days=1), 10)
    record = {
        "people": [
            {"nhs_number": NHS_A, "date_of_birth": date(2000, 1, 1)},
            {"nhs_number": BAD_CHECK_DIGIT, "date_of_birth": date(2999, 1, 1)},
        ],
        "tags": {"k": "12345678901"},
    }
    check(record, "", out, ctx)
    assert [str(p) for p in out] == [
        "people[1].nhs_number: fails the Modulus 11 check (mistyped?)",
        "people[1].date_of_birth: is in the future",
        "tags.k: is 11 bytes (UTF-8), over the limit of 10 bytes",
    ]


# --------------------------------------------------------------------------- event ids


@pytest.mark.parametrize(
    "event_id",
    [
        "6F1C2B9E-3D4A-4C5B-8E7F-0A1B2C3D4E5F",  # upper case
        "{6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f}",
        "6f1c2b9e3d4a4c5b8e7f0a1b2c3d4e5f",  # no hyphens
        "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5",  # one digit short
        "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f ",
        "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5g",
        "",
        "MP-2026-000123",
    ],
)
def test_event_id_must_be_a_canonical_lower_case_uuid(event_id: str) -> None:
    assert problems("custody", with_value("custody", "envelope.event_id", event_id)) == [
        ("envelope.event_id", "is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits)")
    ]


@pytest.mark.parametrize("event_id", ["00000000-0000-0000-0000-000000000000", "6f1c2b9e-3d4a-1c5b-8e7f-0a1b2c3d4e5f"])
def test_any_uuid_version_in_canonical_form_is_fine(event_id: str) -> None:
    assert problems("referral", with_value("referral", "envelope.event_id", event_id)) == []


# --------------------------------------------------------------------------- dates of birth

DOB_FIELDS = [
    ("custody", "subject.date_of_birth"),
    ("referral", "subject.date_of_birth"),
    ("natal_care", "mother.date_of_birth"),
    ("natal_care", "baby.date_of_birth"),
]


@pytest.mark.parametrize(("event_type", "path"), DOB_FIELDS)
def test_date_of_birth_may_be_today_anywhere_on_earth_but_not_later(event_type: str, path: str) -> None:
    # NOW is 12:00 UTC on 1 June, already 2 June at UTC+14.
    assert problems(event_type, with_value(event_type, path, date(2026, 6, 2))) == []
    assert problems(event_type, with_value(event_type, path, date(2026, 6, 3))) == [(path, "is in the future")]
    assert problems(event_type, with_value(event_type, path, date(2999, 1, 1))) == [(path, "is in the future")]


@pytest.mark.parametrize(("event_type", "path"), DOB_FIELDS)
def test_date_of_birth_implies_an_age_of_at_most_125(event_type: str, path: str) -> None:
    assert problems(event_type, with_value(event_type, path, date(1900, 6, 2))) == []  # 125 today
    assert problems(event_type, with_value(event_type, path, date(1900, 6, 1))) == [  # 126 today
        (path, "implies an age over 125 years")
    ]
    assert problems(event_type, with_value(event_type, path, date(1, 1, 1))) == [
        (path, "implies an age over 125 years")
    ]


def test_a_null_baby_date_of_birth_is_fine() -> None:
    assert problems("natal_care", with_value("natal_care", "baby.date_of_birth", None)) == []


# --------------------------------------------------------------------------- envelope timestamps

EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)


@pytest.mark.parametrize("event_type", sorted(RECORDS))
@pytest.mark.parametrize("name", ["occurred_at", "recorded_at"])
def test_envelope_timestamps_lie_between_1900_and_a_day_from_now(event_type: str, name: str) -> None:
    path = f"envelope.{name}"
    assert problems(event_type, with_value(event_type, path, EARLIEST)) == []
    assert problems(event_type, with_value(event_type, path, NOW + timedelta(days=1))) == []
    assert problems(event_type, with_value(event_type, path, EARLIEST - ONE_MS)) == [
        (path, "is before 1900-01-01 (implausibly early)")
    ]
    assert problems(event_type, with_value(event_type, path, NOW + timedelta(days=1) + ONE_MS)) == [
        (path, "is more than a day in the future")
    ]


def test_recorded_before_occurred_is_allowed() -> None:
    record = with_value("custody", "envelope.recorded_at", datetime(2026, 1, 1, tzinfo=UTC))
    record["envelope"]["occurred_at"] = datetime(2026, 5, 1, tzinfo=UTC)
    assert problems("custody", record) == []


def test_a_naive_timestamp_is_named() -> None:
    assert problems("custody", with_value("custody", "envelope.occurred_at", datetime(2026, 5, 1))) == [
        ("envelope.occurred_at", "has no timezone")
    ]


def test_the_bound_is_the_same_instant_in_any_zone() -> None:
    from datetime import timezone

    plus_two = timezone(timedelta(hours=2))
    edge = (NOW + timedelta(days=1)).astimezone(plus_two)
    assert problems("custody", with_value("custody", "envelope.occurred_at", edge)) == []
    assert problems("custody", with_value("custody", "envelope.occurred_at", edge + ONE_MS)) != []


# --------------------------------------------------------------------------- string sizes

SMALL = Limits(max_string_bytes=64)


@pytest.mark.parametrize(
    ("event_type", "path"),
    [
        ("referral", "narrative"),
        ("custody", "subject.family_name"),
        ("custody", "subject.address.line1"),
        ("natal_care", "health_visitor_handover.notes"),
        ("custody", "envelope.source_agency"),
    ],
)
def test_every_string_is_bounded_in_utf8_bytes(event_type: str, path: str) -> None:
    assert problems(event_type, with_value(event_type, path, "x" * 64), SMALL) == []
    assert problems(event_type, with_value(event_type, path, "é" * 32), SMALL) == []  # 64 bytes
    over = problems(event_type, with_value(event_type, path, "é" * 32 + "x"), SMALL)
    assert over == [(path, "is 65 bytes (UTF-8), over the limit of 64 bytes")]


def test_strings_inside_arrays_are_bounded_by_index() -> None:
    record = copy.deepcopy(RECORDS["custody"]())
    record["offence_codes"][1] = "€" * 22  # 66 bytes
    assert problems("custody", record, SMALL) == [
        ("offence_codes[1]", "is 66 bytes (UTF-8), over the limit of 64 bytes")
    ]


def test_a_2_mb_narrative_at_the_default_limit() -> None:
    narrative = "Synthetic. " * 190_651  # 2,097,161 bytes
    found = event_problems("referral", with_value("referral", "narrative", narrative), NOW)
    assert [str(p) for p in found] == ["narrative: is 2097161 bytes (UTF-8), over the limit of 65536 bytes"]
    assert "Synthetic" not in str(found[0])


def test_a_lone_surrogate_is_measured_not_raised() -> None:
    assert problems("referral", with_value("referral", "narrative", "\ud800" * 30), SMALL) == [
        ("narrative", "is 90 bytes (UTF-8), over the limit of 64 bytes")
    ]


# --------------------------------------------------------------------------- all problems, in field order


def test_every_problem_is_returned_in_field_order() -> None:
    record = copy.deepcopy(RECORDS["natal_care"]())
    record["envelope"]["event_id"] = "not-a-uuid"
    record["envelope"]["occurred_at"] = datetime(1850, 1, 1, tzinfo=UTC)
    record["envelope"]["recorded_at"] = datetime(2999, 1, 1, tzinfo=UTC)
    record["mother"]["nhs_number"] = BAD_CHECK_DIGIT
    record["mother"]["family_name"] = "y" * 65
    record["mother"]["date_of_birth"] = date(2999, 1, 1)
    record["baby"]["nhs_number"] = ""
    record["health_visitor_handover"]["notes"] = "z" * 65
    assert problems("natal_care", record, SMALL) == [
        ("envelope.event_id", "is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits)"),
        ("envelope.occurred_at", "is before 1900-01-01 (implausibly early)"),
        ("envelope.recorded_at", "is more than a day in the future"),
        ("mother.nhs_number", "fails the Modulus 11 check (mistyped?)"),
        ("mother.family_name", "is 65 bytes (UTF-8), over the limit of 64 bytes"),
        ("mother.date_of_birth", "is in the future"),
        ("baby.nhs_number", "is empty (expected 10 digits)"),
        ("health_visitor_handover.notes", "is 65 bytes (UTF-8), over the limit of 64 bytes"),
    ]


def test_problem_prints_field_then_problem() -> None:
    assert (
        str(Problem("mother.nhs_number", "fails the Modulus 11 check"))
        == "mother.nhs_number: fails the Modulus 11 check"
    )


# --------------------------------------------------------------------------- odd input never raises


def test_unknown_event_type_and_non_records() -> None:
    assert problems("parking_fine", {}) == [("(event type)", "unknown event type 'parking_fine'")]
    assert problems("../custody", {}) == [("(event type)", "unknown event type '../custody'")]
    assert problems("custody", None) == [("(record)", "expected a record, got NoneType")]  # type: ignore[arg-type]


def test_values_of_the_wrong_type_are_left_to_the_schema_check() -> None:
    record = copy.deepcopy(RECORDS["custody"]())
    record["envelope"] = {"event_id": 7, "occurred_at": "yesterday", "recorded_at": None}
    record["subject"]["date_of_birth"] = "1990-02-14"
    record["offence_codes"] = "TH68001"
    record["subject"]["address"] = ["not", "a", "record"]
    assert problems("custody", record) == []
    assert problems("custody", {}) == []


def test_a_naive_now_is_read_as_utc() -> None:
    record = with_value("custody", "envelope.occurred_at", NOW + timedelta(days=1) + ONE_MS)
    naive = NOW.replace(tzinfo=None)
    assert [p.field for p in event_problems("custody", record, naive)] == ["envelope.occurred_at"]


# --------------------------------------------------------------------------- encoded size


def test_size_problem_at_the_limit() -> None:
    limits = Limits(max_event_bytes=1024)
    assert size_problem(b"x" * 1024, limits) is None
    assert size_problem(b"x" * 1025, limits) == Problem(
        "(record)", "encoded event is 1025 bytes, over the limit of 1024 bytes"
    )
    assert size_problem(b"x" * 524_288) is None and size_problem(b"x" * 524_289) is not None


# --------------------------------------------------------------------------- against the old event_problems
#
# event_problems now reuses the context of the last (now, limits) and judges plain string
# fields without a call. The oracle is the record walk and the context as they were,
# kept here (the leaf rules, _check_*, are unchanged and shared): the same problems in
# the same order, whatever the record, the clock or the limits, and however calls alternate.

from collections.abc import Mapping  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from schemas import validation as v  # noqa: E402
from schemas.serde import _join, _resolve, load_schema  # noqa: E402
from tests.unit.test_serde_fuzz import JSONISH, KEYS, WHEN, record_strategy  # noqa: E402


def oracle_compile(schema: Any, names: Any, path: str) -> Any:
    s = _resolve(schema, names)
    if isinstance(s, list):
        branches = [c for c in (oracle_compile(b, names, path) for b in s) if c is not None]
        if not branches:
            return None
        if len(branches) == 1:
            return branches[0]
        return lambda value, p, out, ctx: [check(value, p, out, ctx) for check in branches] and None
    kind = s if isinstance(s, str) else s["type"]
    if kind == "string":
        return v._check_string
    if kind in ("record", "error"):
        return oracle_compile_record(s, names, path)
    if kind in ("array", "map"):
        inner = oracle_compile(s["items"] if kind == "array" else s["values"], names, path)
        if kind == "array":

            def array(value: Any, p: str, out: list, ctx: Any) -> None:
                if inner is not None and isinstance(value, (list, tuple)):
                    for i, item in enumerate(value):
                        inner(item, f"{p}[{i}]", out, ctx)

            return array

        def mapping(value: Any, p: str, out: list, ctx: Any) -> None:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    where = _join(p, str(key))
                    v._check_string(key, where, out, ctx)
                    if inner is not None:
                        inner(item, where, out, ctx)

        return mapping
    return None


def oracle_compile_record(s: Any, names: Any, path: str) -> Any:
    fields = []
    for f in s["fields"]:
        name, where = f["name"], _join(path, f["name"])
        nullable = v._nullable(f["type"], names) or "default" in f
        if name == "nhs_number":
            check = v._required(v._check_nhs_number, nullable)
        elif where == "envelope.event_id":
            check = v._required(v._check_event_id, nullable)
        elif name == "date_of_birth":
            check = v._check_date_of_birth
        elif name in v._NAMED_FIELDS:
            check = v._NAMED_FIELDS[name]
        elif where in v.ENVELOPE_TIMESTAMPS:
            check = v._check_timestamp
        else:
            check = oracle_compile(f["type"], names, where)
        if check is not None:
            fields.append((name, where, check))

    def record(value: Any, p: str, out: list, ctx: Any) -> None:
        if not isinstance(value, Mapping):
            return
        for name, where, check in fields:
            check(value.get(name), where if p == path else _join(p, name), out, ctx)

    return record


def oracle_event_problems(event_type: Any, record: Any, now: datetime, limits: Limits = Limits()) -> list[Problem]:
    try:
        schema = load_schema(event_type) if isinstance(event_type, str) else None
    except (FileNotFoundError, ValueError):
        schema = None
    if schema is None:
        return [Problem("(event type)", f"unknown event type {str(event_type)[:40]!r}")]
    if not isinstance(record, Mapping):
        return [Problem("(record)", f"expected a record, got {type(record).__name__}")]
    plan = oracle_compile_record(_resolve(schema, _named_types(schema)), _named_types(schema), "")
    if now.tzinfo is None or now.utcoffset() is None:
        now = now.replace(tzinfo=UTC)
    try:
        utc = now.astimezone(UTC)
    except OverflowError:
        utc = datetime.min.replace(tzinfo=UTC) if now.year < 2 else datetime.max.replace(tzinfo=UTC)
    top = datetime.max.replace(tzinfo=UTC)
    ctx = v._Context(
        now=utc,
        latest_birth=(utc + v.LATEST_ZONE).date() if utc < top - v.LATEST_ZONE else date.max,
        today=utc.date(),
        latest_timestamp=utc + v.FUTURE_TOLERANCE if utc < top - v.FUTURE_TOLERANCE else top,
        max_string_bytes=limits.max_string_bytes,
    )
    out: list[Problem] = []
    plan(record, "", out, ctx)
    return out


VALIDATION_TYPES = ("custody", "referral", "natal_care")
SHAPED = st.one_of(
    *[
        st.tuples(st.just(t), record_strategy(load_schema(t), dict(_named_types(load_schema(t)))))
        for t in VALIDATION_TYPES
    ]
)
ANYTHING = st.tuples(st.sampled_from((*VALIDATION_TYPES, "nope")), st.dictionaries(KEYS, JSONISH, max_size=6))
NOWS = st.one_of(
    st.just(NOW), WHEN, st.datetimes(), st.datetimes(timezones=st.timezones()).map(lambda d: d.replace(fold=1))
)
ORACLE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ORACLE
@given(st.lists(st.tuples(st.one_of(SHAPED, ANYTHING), NOWS, st.integers(1, 200)), min_size=1, max_size=4))
def test_event_problems_are_the_old_ones(calls: list) -> None:
    """Several calls in a row, so a cached context is reused and replaced as the clock and limits change."""
    for (event_type, record), now, max_string in calls:
        limits = Limits(max_string_bytes=max_string)
        assert event_problems(event_type, record, now, limits) == oracle_event_problems(event_type, record, now, limits)
        assert event_problems(event_type, record, NOW) == oracle_event_problems(event_type, record, NOW)


def test_the_synthetic_events_have_the_old_problems_at_every_clock() -> None:
    events = build_scenario(n_events=300, seed=4).events
    for now in (
        NOW,
        datetime(1999, 1, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 12),
        datetime(9999, 12, 31, 23, tzinfo=UTC),
    ):
        for e in events:
            assert event_problems(e.event_type, e.record, now, Limits(max_string_bytes=40)) == oracle_event_problems(
                e.event_type, e.record, now, Limits(max_string_bytes=40)
            )


def test_the_plans_event_problems_runs_are_the_generated_ones() -> None:
    """Otherwise the comparison above would only compare the closures with themselves."""
    for event_type in VALIDATION_TYPES:
        plan = v._plan(event_type)
        assert plan is not None
        assert plan.__code__.co_filename == "<validation plan>"


@pytest.mark.parametrize(
    ("event_type", "path", "value", "ok"),
    [
        ("custody", "subject.pnc_id", "26/123456A", True),
        ("custody", "subject.pnc_id", "26/123456a", False),  # a lower-case check letter
        ("custody", "subject.pnc_id", "Z" * 3000, False),  # under the string limit, over an index row's
        ("custody", "subject.pnc_id", None, True),
        ("referral", "subject.local_id", "LCS123456", True),
        ("referral", "subject.local_id", "L" * 64, True),
        ("referral", "subject.local_id", "L" * 65, False),
        ("referral", "subject.local_id", "LCS 123", False),
    ],
)
def test_a_subject_keys_identifier_has_the_keys_form(event_type: str, path: str, value: Any, ok: bool) -> None:
    """The key is made of it: a malformed one could never match consent, and a long one stops the ledger."""
    found = problems(event_type, with_value(event_type, path, value))
    if ok:
        assert found == []
    else:
        [(field, problem)] = found
        assert field == path and (value or "") not in problem
        assert problem.startswith(("a PNC id is two digits", "a local id is printable ASCII"))
