"""Fuzzing the decoder and the plausibility rules: any input either decodes or raises SerdeError, and
event_problems never raises, whatever it is given (pure, no services; a few seconds)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from producers.nhs_number import generate
from producers.synthetic import build_scenario
from schemas.serde import Catalogue, SerdeError, _named_types, _resolve, load_schema
from schemas.validation import Limits, Problem, event_problems

CATALOGUE = Catalogue.default()
EVENT_TYPES = ("custody", "referral", "natal_care")
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
SMALL = Limits(max_event_bytes=2048, max_string_bytes=64)
ENCODED = [CATALOGUE.encode(e.event_type, e.record) for e in build_scenario(n_events=60, seed=23).events]
HEADERS = [b"\xc3\x01" + CATALOGUE.fingerprint_of(name) for name in CATALOGUE.names()]
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_refuses(data: bytes) -> None:
    """The property: a SerdeError, or a record that re-encodes to the same bytes and can be judged."""
    try:
        name, record = CATALOGUE.decode(data)
    except SerdeError as exc:
        assert str(exc)  # every refusal says something
        return
    assert CATALOGUE.encode(name, record) == data  # one record, one byte string
    found = event_problems(name, record, NOW, SMALL)
    assert all(isinstance(p, Problem) and p.field and p.problem for p in found)


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(st.sampled_from(HEADERS), st.binary(max_size=400))
def test_random_bodies_behind_a_known_header(header: bytes, body: bytes) -> None:
    decodes_or_refuses(header + body)


MUTATION = st.tuples(st.sampled_from(("flip", "insert", "delete", "set")), st.integers(0, 10_000), st.integers(0, 255))


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, byte in mutations:
        if not out:
            break
        i = where % len(out)
        if kind == "flip":
            out[i] ^= 1 << (byte % 8)
        elif kind == "insert":
            out.insert(i, byte)
        elif kind == "delete":
            del out[i]
        else:
            out[i] = byte
    return bytes(out)


@FUZZ
@given(st.sampled_from(ENCODED), st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_real_events(data: bytes, mutations: list[tuple[str, int, int]]) -> None:
    decodes_or_refuses(mutate(data, mutations))


@FUZZ
@given(st.sampled_from(ENCODED), st.data())
def test_truncated_and_padded_real_events(data: bytes, draw: st.DataObject) -> None:
    cut = draw.draw(st.integers(0, len(data) - 1))
    decodes_or_refuses(data[:cut])
    decodes_or_refuses(data + draw.draw(st.binary(min_size=1, max_size=8)))


# --------------------------------------------------------------------------- event_problems on schema-shaped records

ODD_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(st.characters(codec=None), max_size=80),  # surrogates and all
    st.sampled_from(["", " ", "0" * 10, "9434765919", "9434765918", "６" * 10, "\x00", "a" * 65]),
    st.text(min_size=60, max_size=70),
)
NHS = st.one_of(st.none(), st.builds(lambda seed: generate(__import__("random").Random(seed)), st.integers()), ODD_TEXT)
WHEN = st.datetimes(timezones=st.one_of(st.just(UTC), st.timezones()))


def record_strategy(schema: Any, names: dict[str, Any], field: str = "") -> st.SearchStrategy[Any]:
    """Values the schema allows, leaning to the edges the rules care about."""
    s = _resolve(schema, names)
    if isinstance(s, list):
        return st.one_of(*[record_strategy(b, names, field) for b in s])
    kind = s if isinstance(s, str) else s["type"]
    logical = None if isinstance(s, str) else s.get("logicalType")
    if field == "nhs_number" and kind == "string":
        return NHS.filter(lambda v: v is not None)
    if logical == "date":
        return st.dates()
    if logical in ("timestamp-millis", "timestamp-micros"):
        return WHEN
    if kind == "null":
        return st.none()
    if kind == "string":
        return ODD_TEXT
    if kind == "int":
        return st.integers(-(2**31), 2**31 - 1)
    if kind == "long":
        return st.integers(-(2**63), 2**63 - 1)
    if kind == "boolean":
        return st.booleans()
    if kind == "enum":
        return st.sampled_from(s["symbols"])
    if kind == "array":
        return st.lists(record_strategy(s["items"], names), max_size=3)
    if kind in ("record", "error"):
        return st.fixed_dictionaries({f["name"]: record_strategy(f["type"], names, f["name"]) for f in s["fields"]})
    return st.nothing()


RECORDS = st.one_of(*[
    st.tuples(st.just(name), record_strategy(load_schema(name), dict(_named_types(load_schema(name)))))
    for name in EVENT_TYPES
])


@FUZZ
@given(RECORDS, WHEN, st.integers(1, 200))
def test_event_problems_never_raises_on_schema_shaped_records(
    typed: tuple[str, dict[str, Any]], now: datetime, max_string: int
) -> None:
    event_type, record = typed
    found = event_problems(event_type, record, now, Limits(max_string_bytes=max_string))
    assert all(isinstance(p, Problem) for p in found)
    fields = [p.field for p in found]
    # Field order, and the value itself never in the message when it is an NHS number.
    for p in found:
        if p.field.endswith("nhs_number"):
            value = _at(record, p.field)
            assert not (isinstance(value, str) and len(value) >= 4 and value in p.problem)
    assert len(fields) == len(found)


def _at(record: Any, path: str) -> Any:
    for part in path.split("."):
        record = record.get(part) if isinstance(record, dict) else None
    return record


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10), WHEN, st.dates()),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)
KEYS = st.sampled_from(["envelope", "subject", "mother", "baby", "nhs_number", "date_of_birth", "event_id",
                        "occurred_at", "recorded_at", "offence_codes", "narrative"])


@FUZZ
@given(st.sampled_from(EVENT_TYPES + ("nope", "")), st.dictionaries(KEYS, JSONISH, max_size=6), WHEN)
def test_event_problems_never_raises_on_anything(event_type: str, record: dict[str, Any], now: datetime) -> None:
    found = event_problems(event_type, record, now)
    assert all(isinstance(p, Problem) for p in found)
