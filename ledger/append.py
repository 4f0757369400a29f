"""Appending sharing decisions to the hash-chained ledger.

Each entry's canonical bytes are the Avro binary encoding of schemas/disclosure.avsc
(seq, the decision, decided_at in milliseconds, prev_hash); entry_hash is their SHA-256
and the next entry's prev_hash. The genesis prev_hash is 32 zero bytes. The same bytes
are the entry's leaf in the RFC 9162 Merkle tree (index seq - 1); leaf_hash,
SHA-256(0x00 || canonical bytes), is stored beside entry_hash so signed checkpoints and
proofs never re-encode old entries (ledger/merkle.py, ledger/checkpoint.py).

append() is idempotent on disclosure_id (invariant I7) and serialises writers (a
transaction-scoped advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent
appenders never leave duplicate seqs, gaps or a broken chain. writer() opens that locked
transaction for a caller that must read (event_entries) and append in it atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from sqlalchemy import ARRAY, Connection, Engine, String, any_, bindparam, func, insert, inspect, select, text

from ledger import merkle
from ledger.guard import install_guards
from ledger.roles import LedgerSchemaMissing
from ledger.tables import LedgerBase, LedgerEntry

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "disclosure.avsc"
GENESIS_HASH = bytes(32)
# RECEIVED: a partner's receipt for a disclosure (ledger/receipts.py). NOT_COVERED: an
# event no agreement in force covers, recorded with no recipient so an auditor sees it (I2).
OUTCOMES = frozenset({"DISCLOSED", "WITHHELD", "RETRACTED", "RECEIVED", "NOT_COVERED"})
NOT_COVERED = "NOT_COVERED"
# Columns added after the first ledgers were written; create_all never adds a column.
_REQUIRED_COLUMNS = ("leaf_hash", "event_digest", "subjects")
_HEX = frozenset("0123456789abcdef")
# pg_advisory_xact_lock key serialising ledger writers (first 8 bytes of sha256("accord.ledger")).
ADVISORY_LOCK_KEY = int.from_bytes(hashlib.sha256(b"accord.ledger").digest()[:8], "big", signed=True)
# Bound on bind parameters per IN (...) query.
_IN_CHUNK = 1000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True)
class EntryDraft:
    """A decision to record; the ledger assigns seq and the hashes."""

    disclosure_id: str
    event_id: str
    event_type: str
    provider: str
    recipient: str
    agreement_id: str
    agreement_version: int
    purpose: str
    legal_basis: str
    outcome: str
    reason: str | None
    fields: tuple[str, ...]
    consent_mode: str
    consent_version: int
    subject_key: str
    decided_at: datetime  # tz-aware; stored and hashed at millisecond precision, in UTC
    refers_to: str | None = None  # the disclosure a retraction (or receipt) is about
    # Hex SHA-256 of the event's bytes as received (the Kafka record value), so a replay
    # tells the same event from a different one reusing its id; "" when not from an event.
    event_digest: str = ""
    subjects: tuple[str, ...] = ()  # the event's other subject keys besides subject_key


@dataclass(frozen=True)
class Appended:
    seq: int
    disclosure_id: str
    new: bool


@dataclass(frozen=True)
class StoredEntry:
    """A ledger row read back: the draft as stored, its seq and its hashes."""

    seq: int
    draft: EntryDraft
    prev_hash: bytes
    entry_hash: bytes
    leaf_hash: bytes = b""  # RFC 9162 leaf hash as stored (ledger/merkle.py)


def init_ledger(engine: Engine) -> None:
    """Create the ledger table and its append-only guards. Idempotent."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two processes initialising at once would otherwise race on the DDL.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        LedgerBase.metadata.create_all(conn)
        require_current_columns(conn)
        install_guards(conn)


def require_current_columns(conn: Connection) -> None:
    """Refuse a ledger_entries table made before entries carried every hashed column.

    create_all adds missing tables, never missing columns; filling a column in would take
    UPDATEs the guards refuse, and the old entries' hashes cover different bytes, so such
    a ledger cannot verify under the current schemas/disclosure.avsc (docs/ledger.md,
    "Format changes").
    """
    columns = {c["name"] for c in inspect(conn).get_columns("ledger_entries")}
    missing = [c for c in _REQUIRED_COLUMNS if c not in columns]
    if missing:
        why = "it predates signed checkpoints" if "leaf_hash" in missing else "it predates event digests"
        raise LedgerSchemaMissing(
            f"ledger_entries has no {', '.join(missing)} column{'s' if len(missing) > 1 else ''} ({why}): "
            "recreate a development database (delete the SQLite file); a production ledger needs a "
            "migration run by the owner"
        )


@lru_cache(maxsize=1)
def _parsed_schema() -> Any:
    with SCHEMA_PATH.open(encoding="utf-8") as f:
        return fastavro.parse_schema(json.load(f))


def to_millis(dt: datetime) -> datetime:
    """dt in UTC, truncated to whole milliseconds (what the ledger stores and hashes)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("decided_at must be timezone-aware")
    dt = dt.astimezone(UTC)
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


def _epoch_millis(dt: datetime) -> int:
    # Integer arithmetic; never hand fastavro a naive datetime (it would use local time).
    return (to_millis(dt) - _EPOCH) // _MS


def canonical_bytes(seq: int, draft: EntryDraft, prev_hash: bytes) -> bytes:
    """The Avro binary encoding of the entry (schemas/disclosure.avsc): what is hashed."""
    if len(prev_hash) != 32:
        raise ValueError("prev_hash must be 32 bytes")
    record = {
        "seq": seq,
        "disclosure_id": draft.disclosure_id,
        "event_id": draft.event_id,
        "event_type": draft.event_type,
        "provider": draft.provider,
        "recipient": draft.recipient,
        "agreement_id": draft.agreement_id,
        "agreement_version": draft.agreement_version,
        "purpose": draft.purpose,
        "legal_basis": draft.legal_basis,
        "outcome": draft.outcome,
        "reason": draft.reason,
        "fields": list(draft.fields),
        "consent_mode": draft.consent_mode,
        "consent_version": draft.consent_version,
        "subject_key": draft.subject_key,
        "decided_at": _epoch_millis(draft.decided_at),
        "refers_to": draft.refers_to,
        "event_digest": draft.event_digest,
        "subjects": list(draft.subjects),
        "prev_hash": bytes(prev_hash),
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _parsed_schema(), record, strict=True)
    return buf.getvalue()


def entry_hash(seq: int, draft: EntryDraft, prev_hash: bytes) -> bytes:
    return hashlib.sha256(canonical_bytes(seq, draft, prev_hash)).digest()


def entry_hashes(seq: int, draft: EntryDraft, prev_hash: bytes) -> tuple[bytes, bytes]:
    """(entry_hash, leaf_hash) from one encoding: the chain link and the Merkle leaf hash."""
    leaf = canonical_bytes(seq, draft, prev_hash)
    return hashlib.sha256(leaf).digest(), merkle.leaf_hash(leaf)


def _normalise(draft: EntryDraft) -> EntryDraft:
    """The draft exactly as it will be stored and read back."""
    if draft.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {draft.outcome!r}")
    if not draft.disclosure_id or len(draft.disclosure_id) > 64:
        raise ValueError("disclosure_id must be 1 to 64 characters")
    if draft.event_digest and (len(draft.event_digest) != 64 or not set(draft.event_digest) <= _HEX):
        raise ValueError("event_digest must be 64 lower-case hex digits (SHA-256) or empty")
    if draft.outcome == NOT_COVERED and (
        draft.recipient or draft.agreement_id or draft.agreement_version or draft.fields
    ):
        raise ValueError("a NOT_COVERED entry has no recipient, agreement or fields")
    # UTC, whole milliseconds: SQLite drops the offset, and the hash carries milliseconds.
    return replace(
        draft, decided_at=to_millis(draft.decided_at), fields=tuple(draft.fields), subjects=tuple(draft.subjects)
    )


@contextmanager
def writer(engine: Engine) -> Iterator[Connection]:
    """One write transaction that holds the ledger's writer lock from its start.

    For a caller that reads the ledger and appends what it read decides, with no other
    writer in between: ``with writer(engine) as conn: event_entries(conn, ids); append(conn, drafts)``.
    It commits when the block ends, rolls back if it raises.
    """
    dialect = engine.dialect.name
    if dialect == "postgresql":
        # READ COMMITTED: every statement after the lock sees the previous writer's commit.
        with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn:
            with conn.begin():
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
                yield conn
    elif dialect == "sqlite":
        # pysqlite would open a deferred transaction only at the first DML statement,
        # after our SELECT of the chain head. Take control of BEGIN/COMMIT ourselves so the
        # write lock is held from the start (the driver-level AUTOCOMMIT setting is reset
        # when the connection returns to the pool).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
    else:
        raise NotImplementedError(f"ledger does not support dialect {dialect!r}")


def _chunks(items: Sequence[str], size: int = _IN_CHUNK) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _lookup(conn: Connection, disclosure_ids: Iterable[str]) -> dict[str, int]:
    ids = sorted(set(disclosure_ids))
    found: dict[str, int] = {}
    for chunk in _chunks(ids):
        rows = conn.execute(
            select(LedgerEntry.disclosure_id, LedgerEntry.seq).where(LedgerEntry.disclosure_id.in_(chunk))
        )
        found.update({did: seq for did, seq in rows})
    return found


def append(target: Engine | Connection, drafts: Sequence[EntryDraft]) -> list[Appended]:
    """Append the drafts in one transaction; one result per draft, in the drafts' order.

    A draft whose disclosure_id is already in the ledger, or earlier in the batch, is not
    appended again: it comes back with the existing seq and new=False. Given an Engine it
    opens and commits its own writer() transaction; given a Connection it must be one
    from writer(), and the append commits with that transaction.
    """
    prepared = [_normalise(d) for d in drafts]
    if not prepared:
        return []
    if isinstance(target, Connection):
        if target.dialect.name == "postgresql":
            # Re-entrant for the session that holds it; takes it for one that does not.
            target.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        return _append(target, prepared)
    with writer(target) as conn:
        return _append(conn, prepared)


def _append(conn: Connection, prepared: list[EntryDraft]) -> list[Appended]:
    results: list[Appended] = []
    head = conn.execute(
        select(LedgerEntry.seq, LedgerEntry.entry_hash).order_by(LedgerEntry.seq.desc()).limit(1)
    ).first()
    last_seq, prev = (head[0], bytes(head[1])) if head else (0, GENESIS_HASH)
    known = _lookup(conn, (d.disclosure_id for d in prepared))
    rows: list[dict[str, Any]] = []
    for d in prepared:
        seq = known.get(d.disclosure_id)
        if seq is not None:
            results.append(Appended(seq, d.disclosure_id, False))
            continue
        last_seq += 1
        h, leaf = entry_hashes(last_seq, d, prev)
        rows.append(_row(last_seq, d, prev, h, leaf))
        known[d.disclosure_id] = last_seq
        results.append(Appended(last_seq, d.disclosure_id, True))
        prev = h
    if rows:
        _insert(conn, rows)
    return results


_COLUMNS = tuple(c.name for c in LedgerEntry.__table__.columns)


def _insert(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """COPY on PostgreSQL (about 2.5x executemany, DESIGN.md); executemany elsewhere.

    COPY runs on the same DBAPI connection, so it is inside the append's
    transaction and under its advisory lock.
    """
    if conn.dialect.name == "postgresql" and conn.dialect.driver == "psycopg":
        cursor = conn.connection.driver_connection.cursor()
        columns = ", ".join(_COLUMNS)
        with cursor.copy(f"COPY ledger_entries ({columns}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(tuple(row[c] for c in _COLUMNS))
        return
    conn.execute(insert(LedgerEntry), rows)


def _row(seq: int, d: EntryDraft, prev_hash: bytes, h: bytes, leaf: bytes) -> dict[str, Any]:
    return {
        "seq": seq,
        "disclosure_id": d.disclosure_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "provider": d.provider,
        "recipient": d.recipient,
        "agreement_id": d.agreement_id,
        "agreement_version": d.agreement_version,
        "purpose": d.purpose,
        "legal_basis": d.legal_basis,
        "outcome": d.outcome,
        "reason": d.reason,
        "fields": json.dumps(list(d.fields), separators=(",", ":")),
        "consent_mode": d.consent_mode,
        "consent_version": d.consent_version,
        "subject_key": d.subject_key,
        "decided_at": d.decided_at,
        "refers_to": d.refers_to,
        "event_digest": d.event_digest,
        # Not ASCII-escaped: a subject key is matched as written (SQL LIKE, JSON operators).
        "subjects": json.dumps(list(d.subjects), separators=(",", ":"), ensure_ascii=False),
        "prev_hash": prev_hash,
        "entry_hash": h,
        "leaf_hash": leaf,
    }


def stored_entry(row: Any) -> StoredEntry:
    """A ledger_entries row (any object with the column attributes) as a StoredEntry.

    Raises ValueError when the row cannot be decoded (e.g. fields is not a JSON list).
    """
    decided_at = row.decided_at
    if decided_at.tzinfo is None:  # SQLite keeps no offset; the ledger stores UTC
        decided_at = decided_at.replace(tzinfo=UTC)
    fields = _string_list(row.fields, "fields")
    subjects = _string_list(row.subjects, "subjects")
    draft = EntryDraft(
        disclosure_id=row.disclosure_id,
        event_id=row.event_id,
        event_type=row.event_type,
        provider=row.provider,
        recipient=row.recipient,
        agreement_id=row.agreement_id,
        agreement_version=row.agreement_version,
        purpose=row.purpose,
        legal_basis=row.legal_basis,
        outcome=row.outcome,
        reason=row.reason,
        fields=tuple(fields),
        consent_mode=row.consent_mode,
        consent_version=row.consent_version,
        subject_key=row.subject_key,
        decided_at=decided_at.astimezone(UTC),
        refers_to=row.refers_to,
        event_digest=row.event_digest,
        subjects=tuple(subjects),
    )
    leaf = getattr(row, "leaf_hash", None)
    return StoredEntry(row.seq, draft, bytes(row.prev_hash), bytes(row.entry_hash), bytes(leaf) if leaf else b"")


def _string_list(stored: str, column: str) -> list[str]:
    values = json.loads(stored)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{column} is not a JSON list of strings")
    return values


@contextmanager
def _reading(target: Engine | Connection) -> Iterator[Connection]:
    """The given Connection as it is (its transaction, its locks), or a new one from an Engine."""
    if isinstance(target, Connection):
        yield target
    else:
        with target.connect() as conn:
            yield conn


def event_entries(target: Engine | Connection, event_ids: Iterable[str]) -> dict[str, list[StoredEntry]]:
    """Every entry (any outcome) of each given event, in seq order: event id -> entries.

    Events with no entry are absent. For the processor's replay: inside writer() it sees
    exactly what the append that follows will be judged against. One query per 1,000 ids
    (``= ANY(:ids)``, one bind parameter, on PostgreSQL; IN elsewhere), on the event_id index.
    """
    ids = sorted(set(event_ids))
    found: dict[str, list[StoredEntry]] = {}
    with _reading(target) as conn:
        postgres = conn.dialect.name == "postgresql"
        for chunk in _chunks(ids):
            if postgres:
                match = LedgerEntry.event_id == any_(bindparam("ids", list(chunk), type_=ARRAY(String)))
            else:
                match = LedgerEntry.event_id.in_(chunk)
            stmt = select(LedgerEntry.__table__).where(match).order_by(LedgerEntry.seq)
            for row in conn.execute(stmt):
                found.setdefault(row.event_id, []).append(stored_entry(row))
    return found


def lookup(engine: Engine, disclosure_ids: Iterable[str]) -> dict[str, int]:
    """disclosure_id -> seq for those of the given ids that are in the ledger."""
    with engine.connect() as conn:
        return _lookup(conn, disclosure_ids)


def count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()


def entries(engine: Engine, subject_key: str | None = None) -> list[StoredEntry]:
    """Every entry (or a subject's), in seq order. Loads them all: for reports, not bulk."""
    stmt = select(LedgerEntry.__table__).order_by(LedgerEntry.seq)
    if subject_key is not None:
        stmt = stmt.where(LedgerEntry.subject_key == subject_key)
    with engine.connect() as conn:
        return [stored_entry(r) for r in conn.execute(stmt)]
