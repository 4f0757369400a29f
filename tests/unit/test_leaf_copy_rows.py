"""ledger/entry.py's binary COPY rows are the bytes psycopg sends for the ledger's row tuples.

append COPYs rows that write_binary_rows builds itself (ledger/append.py). The reference
is psycopg's own binary formatting (its Transformer with the columns' types, as
copy.set_types gives it, and its binary row formatter) of the tuple write_row builds for
the same draft: for any draft the two must be the same bytes, with the same leaf hashes,
and a batch must refuse what check_draft refuses. Pure unit tests: no database.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg import postgres, pq
from psycopg._copy_base import format_row_binary  # psycopg's formatter of copy.write_row's rows
from psycopg.adapt import Transformer

from ledger import GENESIS_HASH, EntryDraft, canonical_bytes
from ledger.entry import (
    COPY_BINARY_HEADER,
    NOT_COVERED,
    PG_COPY_TYPES,
    binary_timestamp,
    to_millis,
    write_binary_row,
    write_binary_rows,
    write_row,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def psycopg_row(seq: int, draft: EntryDraft, prev: bytes) -> tuple[bytes, bytes]:
    """(entry hash, bytes) of write_row's tuple as psycopg's binary COPY writes it."""
    tx = Transformer()
    tx.set_dumper_types([postgres.types[t].oid for t in PG_COPY_TYPES], pq.Format.BINARY)
    utc = to_millis(draft.decided_at)
    rows: list[tuple[object, ...]] = []
    h = write_row(rows.append, draft, seq, prev, utc, (utc - EPOCH) // timedelta(milliseconds=1))
    out = bytearray()
    format_row_binary(rows[0], tx, out)
    return h, bytes(out)


def ours(seq: int, draft: EntryDraft, prev: bytes) -> tuple[bytes, bytes]:
    ms = (to_millis(draft.decided_at) - EPOCH) // timedelta(milliseconds=1)
    out: list[bytes] = []
    h = write_binary_row(out.append, draft, seq, prev, binary_timestamp(ms), ms)
    return h, b"".join(out)


def batch(drafts: list[EntryDraft], seq: int = 0, prev: bytes = GENESIS_HASH) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    last = write_binary_rows(out.append, drafts, seq, prev)
    return last, b"".join(out)


def sample(i: int = 1, **changes: object) -> EntryDraft:
    d = EntryDraft(
        disclosure_id=f"d-{i}",
        event_id=f"e-{i // 2}",
        event_type="referral",
        provider="synthetic-provider",
        recipient=f"partner-{i % 3}",
        agreement_id="a-1",
        agreement_version=2,
        purpose="direct_care",
        legal_basis="synthetic basis",
        outcome="DISCLOSED",
        reason=None,
        fields=("subject.nhs_number", "referral.reason"),
        consent_mode="opt_out",
        consent_version=i % 5,
        subject_key=f"nhs:{i:010d}",
        decided_at=datetime(2026, 5, 6, 7, 8, 9, 123_000, tzinfo=UTC),
        event_digest=hashlib.sha256(f"event {i // 2}".encode()).hexdigest(),
    )
    return replace(d, **changes)  # type: ignore[arg-type]


# Text PostgreSQL could hold and UTF-8 can encode (no lone surrogates): ASCII, accents, CJK, emoji.
UNICODE = st.characters(exclude_categories=["Cs"])
texts = st.one_of(
    st.text(UNICODE, max_size=40),
    st.text(UNICODE, min_size=4090, max_size=4200),  # the length word's table edge
)
short = st.text(UNICODE, max_size=20)
drafts = st.builds(
    EntryDraft,
    disclosure_id=st.text(UNICODE, min_size=1, max_size=64),
    event_id=short,
    event_type=short,
    provider=short,
    recipient=short,
    agreement_id=short,
    agreement_version=st.integers(-(1 << 31), (1 << 31) - 1),
    purpose=short,
    legal_basis=texts,
    outcome=st.sampled_from(["DISCLOSED", "WITHHELD", "RETRACTED", "RECEIVED"]),
    reason=st.none() | texts,
    fields=st.lists(short, max_size=6).map(tuple),
    consent_mode=short,
    consent_version=st.integers(-(1 << 63), (1 << 63) - 1),
    subject_key=texts,
    decided_at=st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=11))]),
    ),
    refers_to=st.none() | st.text(UNICODE, max_size=64),
    event_digest=st.sampled_from(["", "ab" * 32]),
    subjects=st.lists(short, max_size=4).map(tuple),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(1, (1 << 63) - 1), drafts, st.binary(min_size=32, max_size=32))
@example(1, sample(1), GENESIS_HASH)
@example(7, sample(2, reason="consent denied", refers_to="d-1", subjects=("nhs:é", "x\ty")), bytes(range(32)))
def test_a_binary_row_is_psycopgs_for_any_draft(seq: int, draft: EntryDraft, prev: bytes) -> None:
    h, row = ours(seq, draft, prev)
    assert (h, row) == psycopg_row(seq, draft, prev)
    assert (h, row) == ours(seq, draft, prev)  # and again, from the memoised context
    leaf = canonical_bytes(seq, draft, prev)
    assert h == hashlib.sha256(leaf).digest()
    assert row.endswith(struct.pack(">i", 32) + hashlib.sha256(b"\x00" + leaf).digest())
    assert batch([draft], seq - 1, prev) == (h, row)


def test_a_batch_is_its_rows_numbered_and_chained() -> None:
    ds = [sample(i) for i in range(1, 40)]
    ds[5] = replace(ds[5], decided_at=datetime(2026, 5, 6, 9, 8, 9, 123_456, tzinfo=timezone(timedelta(hours=2))))
    ds[9] = replace(ds[9], outcome=NOT_COVERED, recipient="", agreement_id="", agreement_version=0, fields=())
    last, rows = batch(ds, 100, bytes(range(32)))
    expected, prev = [], bytes(range(32))
    for seq, d in enumerate(ds, 101):
        prev, row = psycopg_row(seq, d, prev)
        expected.append(row)
    assert (last, rows) == (prev, b"".join(expected))


def test_the_header_is_postgresqls_binary_copy_signature() -> None:
    assert b"PGCOPY\n\xff\r\n\x00" + bytes(4) + bytes(4) == COPY_BINARY_HEADER


def test_the_timestamp_is_microseconds_since_2000() -> None:
    assert binary_timestamp(946_684_800_000) == struct.pack(">iq", 8, 0)
    assert binary_timestamp(946_684_800_001) == struct.pack(">iq", 8, 1000)
    assert binary_timestamp(0) == struct.pack(">iq", 8, -946_684_800_000_000)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "LEAKED"}, "outcome must be one of"),
        ({"disclosure_id": ""}, "disclosure_id must be 1 to 64"),
        ({"disclosure_id": "x" * 65}, "disclosure_id must be 1 to 64"),
        ({"event_digest": "AB" * 32}, "event_digest must be 64 lower-case hex"),
        ({"decided_at": datetime(2026, 1, 1)}, "timezone-aware"),
        ({"outcome": NOT_COVERED}, "a NOT_COVERED entry has no recipient"),
    ],
)
def test_a_batch_refuses_what_check_draft_refuses(change: dict[str, object], message: str) -> None:
    ds = [sample(i) for i in range(1, 6)]
    ds[3] = replace(ds[3], **change)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        batch(ds)


def test_an_int_its_column_cannot_hold_is_refused() -> None:
    """agreement_version is an Avro int (written as a long) but an int4 column: the row refuses 2**31."""
    with pytest.raises(struct.error):
        ours(1, sample(1, agreement_version=1 << 31), GENESIS_HASH)
    with pytest.raises(struct.error):
        batch([sample(1), sample(2, agreement_version=-(1 << 31) - 1)])
