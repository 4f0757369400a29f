"""The compiled leaf writer (ledger/leaf_codec.py) writes fastavro's bytes, for any entry.

fastavro.schemaless_writer on schemas/disclosure.avsc is the reference: random entries
(unicode, long strings, empty and long lists, None and set unions, ints at every varint
boundary and across the whole 64-bit range) must encode to the very same bytes, decode
back with fastavro to the record given, and what fastavro refuses this refuses too.
Pure unit tests: no database.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ledger import GENESIS_HASH, EntryDraft, canonical_bytes, entry_hashes
from ledger.leaf_codec import FIELD_NAMES, SCHEMA_PATH, compile_record, encode_entry, encode_long

with SCHEMA_PATH.open(encoding="utf-8") as f:
    SCHEMA_JSON = json.load(f)
SCHEMA = fastavro.parse_schema(SCHEMA_JSON)
# To read decided_at back as the integer milliseconds written (any long, not only a datetime's).
PLAIN = fastavro.parse_schema(
    json.loads(json.dumps(SCHEMA_JSON).replace('"logicalType": "timestamp-millis"', '"x": 0'))
)
SYMBOLS = next(f["type"]["symbols"] for f in SCHEMA_JSON["fields"] if f["name"] == "outcome")
LONG_MIN, LONG_MAX = -(1 << 63), (1 << 63) - 1
# Where a varint grows a byte (zig-zag: 2**k / 2 either side), and the writer's table edges.
EDGES = sorted(
    {s * (v + d) for k in range(0, 64, 7) for v in (1 << k >> 1,) for d in (-1, 0, 1) for s in (1, -1)}
    | {8191, 8192, 16383, 16384, (1 << 27) - 1, 1 << 27, (1 << 41) - 1, 1 << 41, LONG_MAX, LONG_MIN}
)
EDGES = [e for e in EDGES if LONG_MIN <= e <= LONG_MAX]


def reference(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, SCHEMA, record, strict=True)
    return buf.getvalue()


def decoded(leaf: bytes) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(leaf), PLAIN, return_record_name=False)
    assert isinstance(record, dict)
    return record


def ours(record: dict[str, Any]) -> bytes:
    return encode_entry(*(record[name] for name in FIELD_NAMES))


longs = st.one_of(st.integers(LONG_MIN, LONG_MAX), st.sampled_from(EDGES), st.integers(-300, 300))
texts = st.one_of(
    st.text(max_size=40),  # any code point but lone surrogates (not UTF-8)
    st.sampled_from(["", "DISCLOSED", "partner-1", "\u00e9", "\U0001f600" * 3, "a\x00b"]),
)
# Byte lengths either side of the writer's 8,192 table and of a 3-byte varint, in UTF-8 widths 1 to 4.
long_texts = st.builds(
    lambda c, n: c * n,
    st.sampled_from(["a", "\u00e9", "\u20ac", "\U0001f600"]),
    st.sampled_from([2047, 2048, 2730, 2731, 4095, 4096, 8191, 8192, 8193, 16384]),
)
string_lists = st.one_of(st.lists(texts, max_size=5), st.lists(st.text(max_size=3), min_size=60, max_size=150))
records = st.fixed_dictionaries(
    {
        "seq": longs,
        "disclosure_id": texts,
        "event_id": texts | long_texts,
        "event_type": texts,
        "provider": texts,
        "recipient": texts,
        "agreement_id": texts,
        "agreement_version": longs,
        "purpose": texts,
        "legal_basis": texts,
        "outcome": st.sampled_from(SYMBOLS),
        "reason": st.none() | texts,
        "fields": string_lists,
        "consent_mode": texts,
        "consent_version": longs,
        "subject_key": texts,
        "decided_at": longs,
        "refers_to": st.none() | texts | long_texts,
        "event_digest": texts,
        "subjects": string_lists,
        "prev_hash": st.binary(min_size=32, max_size=32),
    }
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records, st.booleans())
def test_same_bytes_as_fastavro_for_any_record(record: dict[str, Any], as_tuples: bool) -> None:
    if as_tuples:  # EntryDraft holds tuples; fastavro is given lists
        record = {**record, "fields": tuple(record["fields"]), "subjects": tuple(record["subjects"])}
    expected = reference({**record, "fields": list(record["fields"]), "subjects": list(record["subjects"])})
    assert ours(record) == expected
    assert ours(record) == expected  # and again, from the memoised encodings
    back = decoded(expected)
    assert back == {**record, "fields": list(record["fields"]), "subjects": list(record["subjects"])}


aware = st.datetimes(
    min_value=datetime(1, 1, 2),
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]),
)
drafts = st.builds(
    EntryDraft,
    disclosure_id=st.text(min_size=1, max_size=64),
    event_id=texts,
    event_type=texts,
    provider=texts,
    recipient=texts,
    agreement_id=texts,
    agreement_version=st.integers(-(1 << 31), (1 << 31) - 1),
    purpose=texts,
    legal_basis=texts,
    outcome=st.sampled_from(SYMBOLS),
    reason=st.none() | texts,
    fields=st.lists(texts, max_size=8).map(tuple),
    consent_mode=texts,
    consent_version=longs,
    subject_key=texts,
    decided_at=aware,
    refers_to=st.none() | st.text(max_size=64),
    event_digest=st.sampled_from(["", "ab" * 32]),
    subjects=st.lists(texts, max_size=4).map(tuple),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(1, LONG_MAX), drafts, st.binary(min_size=32, max_size=32))
@example(
    1,
    EntryDraft(
        "d1",
        "e1",
        "custody",
        "gmp",
        "cps",
        "a",
        1,
        "p",
        "l",
        "DISCLOSED",
        None,
        ("x",),
        "not-required",
        0,
        "s",
        datetime(2026, 1, 1, tzinfo=UTC),
        event_digest="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        subjects=("t",),
    ),
    GENESIS_HASH,
)
def test_canonical_bytes_are_fastavros_for_any_draft(seq: int, draft: EntryDraft, prev: bytes) -> None:
    """canonical_bytes as the ledger hashes it (decided_at to UTC milliseconds) against fastavro."""
    utc = draft.decided_at.astimezone(UTC)
    millis = (utc.replace(microsecond=utc.microsecond // 1000 * 1000) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
        milliseconds=1
    )
    record = {name: getattr(draft, name) for name in FIELD_NAMES if hasattr(draft, name)}
    record.update(seq=seq, decided_at=millis, prev_hash=prev, fields=list(draft.fields), subjects=list(draft.subjects))
    leaf = canonical_bytes(seq, draft, prev)
    assert leaf == reference(record)
    assert decoded(leaf) == record
    h, leaf_hash = entry_hashes(seq, draft, prev)
    import hashlib

    assert (h, leaf_hash) == (hashlib.sha256(leaf).digest(), hashlib.sha256(b"\x00" + leaf).digest())


DOCUMENTED_LEAF = bytes.fromhex("""
02 04 64 31 04 65 31 0e 63 75 73 74 6f 64 79 06 67 6d 70 06 63 70 73 02 61 02
02 70 02 6c 00 00 02 02 78 00 18 6e 6f 74 2d 72 65 71 75 69 72 65 64 00 02 73
80 a0 d5 ed ee 66 00 80 01 62 61 37 38 31 36 62 66 38 66 30 31 63 66 65 61 34
31 34 31 34 30 64 65 35 64 61 65 32 32 32 33 62 30 30 33 36 31 61 33 39 36 31
37 37 61 39 63 62 34 31 30 66 66 36 31 66 32 30 30 31 35 61 64 02 02 74 00 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 00
""")


def test_documented_leaf() -> None:
    """docs/ledger.md's example entry, its 161 bytes as printed there."""
    draft = EntryDraft(
        "d1",
        "e1",
        "custody",
        "gmp",
        "cps",
        "a",
        1,
        "p",
        "l",
        "DISCLOSED",
        None,
        ("x",),
        "not-required",
        0,
        "s",
        datetime(2026, 1, 1, tzinfo=UTC),
        event_digest="ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        subjects=("t",),
    )
    assert len(DOCUMENTED_LEAF) == 161
    assert canonical_bytes(1, draft, GENESIS_HASH) == DOCUMENTED_LEAF


@pytest.mark.parametrize("n", EDGES)
def test_varints_at_every_edge(n: int) -> None:
    record = {"seq": n, "agreement_version": n, "consent_version": n, "decided_at": n}
    base: dict[str, Any] = {name: "" for name in FIELD_NAMES} | {
        "outcome": "WITHHELD",
        "reason": None,
        "refers_to": None,
        "fields": [],
        "subjects": [],
        "prev_hash": bytes(32),
    }
    full = base | record
    assert ours(full) == reference(full)
    assert encode_long(n) == reference(full)[: len(encode_long(n))]


def test_memoised_fields_stay_right_past_their_bound() -> None:
    """Thousands of distinct values in a memoised field (the memo starts over) and repeats of them."""
    base: dict[str, Any] = {name: "x" for name in FIELD_NAMES} | {
        "seq": 1,
        "agreement_version": 2,
        "consent_version": 3,
        "decided_at": 4,
        "outcome": "RECEIVED",
        "reason": None,
        "refers_to": None,
        "fields": ("a",),
        "subjects": (),
        "prev_hash": bytes(32),
    }
    for i in list(range(9000)) + list(range(0, 9000, 7)):
        record = base | {
            "recipient": f"partner-{i}",
            "reason": None if i % 3 else f"why {i}",
            "fields": (f"f{i % 5000}",),
        }
        expected = reference(record | {"fields": list(record["fields"]), "subjects": []})
        assert ours(record) == expected, i


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"seq": LONG_MAX + 1}, OverflowError),
        ({"consent_version": LONG_MIN - 1}, OverflowError),
        ({"outcome": "LOST"}, ValueError),
        ({"recipient": b"bytes"}, (TypeError, AttributeError)),
        ({"recipient": None}, (TypeError, AttributeError)),
        ({"reason": 3}, (TypeError, AttributeError, ValueError)),
        ({"event_id": "\ud800"}, UnicodeEncodeError),
        ({"fields": ["ok", 7]}, (TypeError, AttributeError)),
        ({"seq": "1"}, TypeError),
    ],
)
def test_refuses_what_fastavro_refuses(change: dict[str, Any], error: Any) -> None:
    record: dict[str, Any] = {name: "v" for name in FIELD_NAMES} | {
        "seq": 1,
        "agreement_version": 1,
        "consent_version": 1,
        "decided_at": 1,
        "outcome": "DISCLOSED",
        "reason": None,
        "refers_to": None,
        "fields": [],
        "subjects": [],
        "prev_hash": bytes(32),
    }
    bad = record | change
    with pytest.raises(Exception):  # noqa: B017  # fastavro's own exception types vary
        reference(bad)
    with pytest.raises(error):
        ours(bad)


def test_where_it_is_stricter_than_fastavro() -> None:
    """A float for an int: fastavro truncates it (1.5 is written as 1); this writer refuses it."""
    record: dict[str, Any] = {name: "v" for name in FIELD_NAMES} | {
        "seq": 1,
        "agreement_version": 1.5,
        "consent_version": 1,
        "decided_at": 1,
        "outcome": "DISCLOSED",
        "reason": None,
        "refers_to": None,
        "fields": [],
        "subjects": [],
        "prev_hash": bytes(32),
    }
    assert reference(record) == reference(record | {"agreement_version": 1})
    with pytest.raises(TypeError):
        ours(record)
    with pytest.raises(ValueError, match="32 bytes"):
        ours(record | {"agreement_version": 1, "prev_hash": bytes(31)})
    # bool is an int to both
    assert ours(record | {"agreement_version": True}) == reference(record | {"agreement_version": 1})


def test_a_schema_it_cannot_compile_fails_at_compile_time() -> None:
    for kind in ("double", "boolean", {"type": "map", "values": "string"}, ["null", "string", "long"]):
        schema = {"type": "record", "name": "R", "fields": [{"name": "x", "type": kind}]}
        with pytest.raises(NotImplementedError):
            compile_record(schema)
    two = {
        "type": "record",
        "name": "R",
        "fields": [{"name": "x", "type": "long"}, {"name": "y", "type": "string"}, {"name": "z", "type": "string"}],
    }
    with pytest.raises(ValueError, match="consecutive"):
        compile_record(two, memo=[("x", "z")])
    with pytest.raises(ValueError, match="no such fields"):
        compile_record(two, memo=[("w",)])


def test_a_memoised_run_never_lends_its_bytes_to_other_values() -> None:
    """The decision's context is memoised as one run: a float equal to a remembered int is
    still refused, a bool is written as fastavro writes it, a list is encoded every time."""
    record: dict[str, Any] = {name: "v" for name in FIELD_NAMES} | {
        "seq": 1,
        "agreement_version": 1,
        "consent_version": 1,
        "decided_at": 1,
        "outcome": "DISCLOSED",
        "reason": None,
        "refers_to": None,
        "fields": ("a", "b"),
        "subjects": (),
        "prev_hash": bytes(32),
    }
    as_lists = record | {"fields": ["a", "b"], "subjects": []}
    assert ours(record) == ours(record) == reference(as_lists)  # the second from the memo
    with pytest.raises(TypeError):
        ours(record | {"agreement_version": 1.0})
    assert ours(record | {"agreement_version": True}) == reference(as_lists | {"agreement_version": True})
    assert ours(as_lists) == reference(as_lists)
    assert ours(record | {"fields": ("a", "c")}) == reference(as_lists | {"fields": ["a", "c"]})
    with pytest.raises((TypeError, AttributeError)):
        ours(record | {"fields": ("a", 7)})
    assert ours(record) == reference(as_lists)


def test_compiled_from_the_schema_file() -> None:
    assert tuple(f["name"] for f in SCHEMA_JSON["fields"]) == FIELD_NAMES
    d = EntryDraft(
        "d",
        "e",
        "t",
        "p",
        "r",
        "a",
        1,
        "pu",
        "lb",
        "DISCLOSED",
        None,
        (),
        "m",
        0,
        "s",
        datetime(2026, 1, 1, tzinfo=UTC),
    )
    # every field reaches the bytes
    changes: tuple[tuple[str, Any], ...] = (
        ("recipient", "r2"),
        ("reason", "why"),
        ("fields", ("f",)),
        ("subjects", ("s2",)),
        ("refers_to", "x"),
        ("event_digest", "ab" * 32),
        ("consent_version", 9),
    )
    for name, other in changes:
        assert canonical_bytes(1, replace(d, **{name: other}), GENESIS_HASH) != canonical_bytes(1, d, GENESIS_HASH)
