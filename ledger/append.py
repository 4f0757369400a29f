"""Appending sharing decisions to the hash-chained ledger.

Each entry's canonical bytes are the Avro binary encoding of schemas/disclosure.avsc
(seq, the decision, decided_at in milliseconds, prev_hash); entry_hash is their SHA-256
and the next entry's prev_hash. The genesis prev_hash is 32 zero bytes. The same bytes
are the entry's leaf in the RFC 9162 Merkle tree (index seq - 1); leaf_hash,
SHA-256(0x00 || canonical bytes), is stored beside entry_hash so signed checkpoints and
proofs never re-encode old entries (ledger/merkle.py, ledger/checkpoint.py). The bytes
are written by the encoder ledger/leaf_codec.py compiles from the schema (fastavro's
bytes, several times faster); the entry, its leaf and its row are ledger/entry.py's,
the reads (event_entries, lookup, entries) ledger/read.py's.

append() is idempotent on disclosure_id (invariant I7) and serialises writers (a
transaction-scoped advisory lock on PostgreSQL, BEGIN IMMEDIATE on SQLite), so concurrent
appenders never leave duplicate seqs, gaps or a broken chain. writer() opens that locked
transaction for a caller that must read (event_entries) and append in it atomically.

Appending a batch on PostgreSQL (psycopg), under the lock:

1. read the head (highest seq, its entry_hash); on an Engine in the same round trip as
   BEGIN and the lock (_append_own_transaction), in a writer() transaction with a
   savepoint (_append_in_writer);
2. number, chain and check the drafts in memory, building each row as binary COPY
   bytes (ledger/entry.py write_binary_rows, one compiled loop), and send them in one
   binary COPY: no look-up of the batch's ids first, because almost always none is in
   the ledger (the processor has already judged its events against it), and no check
   for an id repeated within the batch, which UNIQUE(disclosure_id) refuses alike;
3. only if the COPY breaks UNIQUE(disclosure_id) (a replay, two workers deciding the
   same event, or a repeat within the batch): roll back (the transaction, or to the
   savepoint), look the batch's ids up, and COPY the others, each id once;
4. COMMIT (or release the savepoint, committing with the caller's transaction).

append_decisions() is append for the processor's decisions: under the same lock, at step
1, it also looks the batch's event ids up and leaves out the drafts of any event the
ledger already holds entries for. An event is decided once (I7, I8), whoever decided it
first: the same processor's batch before (its look-up ran before that batch was
recorded), or another worker that was given the partitions while this one was paused.

Elsewhere (SQLite, for the demo) the ids are looked up first and the rows inserted with
executemany. bench/ledger_append.py measures append against a raw COPY of the same rows;
bench/ledger_indexes.py the indexes (ledger/tables.py).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, NamedTuple

import psycopg
from psycopg import postgres, pq, sql
from psycopg.dbapi20 import BinaryBinaryDumper
from psycopg.types.string import BytesBinaryDumper
from sqlalchemy import (
    Connection,
    Engine,
    insert,
    inspect,
    select,
    text,
)

from bus import advisory_locks
from ledger.entry import (
    COLUMNS,
    COPY_BINARY_HEADER,
    COPY_BINARY_TRAILER,
    DIGEST,
    GENESIS_HASH,
    NOT_COVERED,
    OUTCOMES,
    PG_COPY_TYPES,
    SCHEMA_PATH,
    EntryDraft,
    StoredEntry,
    binary_rows,
    binary_timestamp,
    canonical_bytes,
    check_draft,
    entry_hash,
    entry_hashes,
    stored_entry,
    to_millis,
    write_binary_row,
    write_row,
)
from ledger.read import count, entries, event_entries, lookup, seqs
from ledger.roles import LedgerSchemaMissing
from ledger.tables import DISCLOSURE_ID_UNIQUE, LedgerEntry
from schemas.validation import CANONICAL_UUID

__all__ = [
    "ADVISORY_LOCK_KEY",
    "Appended",
    "Decisions",
    "append",
    "append_decisions",
    "require_current_columns",
    "sqlite_immediate",
    "use_c_bytea_dumper",
    "writer",
    # the entry's, and the reads, under the names other modules import from here
    "GENESIS_HASH",
    "NOT_COVERED",
    "OUTCOMES",
    "SCHEMA_PATH",
    "EntryDraft",
    "StoredEntry",
    "canonical_bytes",
    "count",
    "entries",
    "entry_hash",
    "entry_hashes",
    "event_entries",
    "lookup",
    "stored_entry",
    "to_millis",
]

# Columns added after the first ledgers were written; create_all never adds a column.
_REQUIRED_COLUMNS = ("leaf_hash", "event_digest", "subjects")
# pg_advisory_xact_lock key serialising ledger writers (first 8 bytes of sha256("accord.ledger")).
ADVISORY_LOCK_KEY = advisory_locks.key("accord.ledger")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_new_tuple = tuple.__new__  # Appended(seq, id, new) without NamedTuple's keyword handling


class Appended(NamedTuple):
    """What append() did with one draft: its seq, and whether this call recorded it.

    A NamedTuple (immutable, compared by value) rather than a dataclass: append makes one
    per entry, and a tuple is made in a fifth of the time.
    """

    seq: int
    disclosure_id: str
    new: bool


class Decisions(NamedTuple):
    """What append_decisions() did: the drafts it kept, what append did with each, and the
    events it found already recorded (none of their drafts is written)."""

    kept: list[EntryDraft]
    appended: list[Appended]  # one per draft of ``kept``, in order
    recorded: frozenset[str]  # event ids the ledger held entries for, under the lock


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
            "recreate a development database (delete the SQLite file); migrations start at 0.1.0's schema, "
            "so a ledger older than that cannot be upgraded: keep it as an archive and start a new one"
        )


@contextmanager
def sqlite_immediate(engine: Engine) -> Iterator[Connection]:
    """A SQLite transaction begun IMMEDIATE: it holds the database's write lock from its first statement.

    pysqlite would open a deferred transaction only at the first DML statement (after a
    writer's SELECT of the chain head, or a migration's read of alembic_version), so two
    writers could both read and then both write. BEGIN and COMMIT are ours instead, on an
    AUTOCOMMIT connection (the driver-level setting is reset when the connection returns
    to the pool); another process waits for the lock, up to the driver's timeout. Commits
    when the block ends, rolls back if it raises. For writer() and ledger.migrations.
    """
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise
        conn.exec_driver_sql("COMMIT")


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
        with engine.connect().execution_options(isolation_level="READ COMMITTED") as conn, conn.begin():
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
            yield conn
    elif dialect == "sqlite":
        with sqlite_immediate(engine) as conn:  # the write lock from the start, before the head is read
            yield conn
    else:
        raise NotImplementedError(f"ledger does not support dialect {dialect!r}")


def append(target: Engine | Connection, drafts: Sequence[EntryDraft]) -> list[Appended]:
    """Append the drafts in one transaction; one result per draft, in the drafts' order.

    A draft whose disclosure_id is already in the ledger, or earlier in the batch, is not
    appended again: it comes back with the existing seq and new=False. A draft the ledger
    must not hold (_check) raises ValueError and nothing of the batch is written. Given an
    Engine it opens and commits its own transaction, under the writer lock as writer()
    takes it; given a Connection it must be one from writer(), and the append commits with
    that transaction.
    """
    if not drafts:
        return []
    if isinstance(target, Connection):
        if target.dialect.name == "postgresql":
            # Re-entrant for the session that holds it; takes it for one that does not.
            target.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        if _psycopg(target):
            return _append_in_writer(target, drafts)
        return _append_elsewhere(target, drafts)
    if _psycopg(target):
        return _append_own_transaction(target, drafts, fence=None).appended
    with writer(target) as conn:
        return _append_elsewhere(conn, drafts)


def append_decisions(engine: Engine, drafts: Sequence[EntryDraft], events: Iterable[str] | None = None) -> Decisions:
    """append(engine, drafts), leaving out every draft of an event the ledger already holds.

    ``events`` are the event ids to look for (default: the drafts'); the processor gives
    its whole batch's, so an event it could not decide is still found if it is recorded.
    The look-up runs under the writer lock, so no writer can record one of these events
    between it and the append: it is the processor's only look-up of its batch's events,
    and what it finds is replayed, never decided again (I8).
    """
    ids = list(dict.fromkeys(events if events is not None else (d.event_id for d in drafts)))
    if not ids:
        return Decisions([], [], frozenset())
    if _psycopg(engine):
        return _append_own_transaction(engine, drafts, fence=ids)
    with writer(engine) as conn:
        recorded = frozenset(event_entries(conn, ids))
        kept = [d for d in drafts if d.event_id not in recorded] if recorded else list(drafts)
        return Decisions(kept, _append_elsewhere(conn, kept) if kept else [], recorded)


def _psycopg(target: Engine | Connection) -> bool:
    return target.dialect.name == "postgresql" and target.dialect.driver == "psycopg"


class _AlreadyRecorded(Exception):
    """The COPY met UNIQUE(disclosure_id): some of the batch is in the ledger already."""


def _append_own_transaction(engine: Engine, drafts: Sequence[EntryDraft], fence: list[str] | None) -> Decisions:
    """append(engine, drafts) on PostgreSQL: writer()'s protocol on the driver connection, three round trips.

    1. BEGIN at READ COMMITTED, take the writer lock, read the head: one round trip (each
       statement of it has its own snapshot, so the head read sees the previous holder's
       commit); with ``fence`` (event ids), a fourth statement in it: which of those events
       the ledger holds, whose drafts are then left out;
    2. number, chain and COPY the rows (_copy_batch), assuming none is in the ledger;
    3. COMMIT. If step 2 met UNIQUE(disclosure_id), roll back and do it again, looking
       the batch's ids up first.
    """
    raw = engine.raw_connection()
    conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
    try:
        if conn.info.transaction_status != pq.TransactionStatus.IDLE:
            conn.rollback()
        autocommit = conn.autocommit
        conn.autocommit = True  # BEGIN and COMMIT are ours: BEGIN goes with the lock and the head read
        try:
            return _append_transaction(conn, drafts, look_up=False, fence=fence)
        except _AlreadyRecorded:
            return _append_transaction(conn, drafts, look_up=True, fence=fence)
        finally:
            if not conn.closed:
                conn.autocommit = autocommit
    except BaseException:
        if conn.closed or conn.broken:
            raw.invalidate()  # what SQLAlchemy does for a connection it sees fail: not back into the pool
        raise
    finally:
        raw.close()


def _append_transaction(
    conn: psycopg.Connection[Any], drafts: Sequence[EntryDraft], look_up: bool, fence: list[str] | None
) -> Decisions:
    cursor = conn.cursor()
    recorded: frozenset[str] = frozenset()
    try:
        # 1. BEGIN, lock, head; with the fence, the events already recorded, in the same round trip
        if fence is not None:
            cursor.execute(f"{_BEGIN_LOCK_HEAD}; {_recorded_events_sql(fence, conn)}")
        else:
            cursor.execute(_BEGIN_LOCK_HEAD)
        cursor.nextset()
        cursor.nextset()
        last_seq, prev = _head(cursor)
        if fence is not None:
            cursor.nextset()
            recorded = frozenset(row[0] for row in cursor.fetchall())
            if recorded:
                drafts = [d for d in drafts if d.event_id not in recorded]
            if not drafts:
                cursor.execute("COMMIT")
                return Decisions([], [], recorded)
        known: dict[str, int] | None = None
        if look_up:
            cursor.execute(_LOOKUP_SQL, ([d.disclosure_id for d in drafts],))
            known = dict(cursor.fetchall())
        # 2. COPY
        results = _copy_batch(cursor, drafts, last_seq, prev, known)
        if results is None:
            if look_up:
                raise RuntimeError("ledger_entries took a disclosure id from outside the writer lock")
            cursor.execute("ROLLBACK")
            raise _AlreadyRecorded  # the caller does it again, looking the ids up
        # 3. COMMIT
        cursor.execute("COMMIT")
    except _AlreadyRecorded:
        raise
    except BaseException:
        try:
            cursor.execute("ROLLBACK")
        except psycopg.Error:
            pass  # the connection is gone; the error being raised says why
        raise
    return Decisions(list(drafts), results, recorded)


def _append_in_writer(conn: Connection, drafts: Sequence[EntryDraft]) -> list[Appended]:
    """append(connection, drafts): in the caller's writer() transaction, under its lock.

    1. SAVEPOINT and read the head, in one round trip;
    2. number, chain and COPY the rows (_copy_batch), assuming none is in the ledger;
    3. if that met UNIQUE(disclosure_id): roll back to the savepoint, look the batch's ids
       up, and COPY the others; under the lock nothing was added since the head read, so
       this COPY meets no other one;
    4. RELEASE the savepoint; the rows commit with the caller's transaction.
    """
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        # 1.
        cursor.execute(_SAVEPOINT_HEAD)
        cursor.nextset()
        last_seq, prev = _head(cursor)
        # 2.
        results = _copy_batch(cursor, drafts, last_seq, prev, None)
        if results is None:
            # 3.
            cursor.execute("ROLLBACK TO SAVEPOINT ledger_append")
            results = _copy_batch(cursor, drafts, last_seq, prev, seqs(conn, (d.disclosure_id for d in drafts)))
            if results is None:
                raise RuntimeError("ledger_entries took a disclosure id from outside the writer lock")
    except BaseException:
        try:
            cursor.execute("ROLLBACK TO SAVEPOINT ledger_append")  # nothing of the batch is written
        except psycopg.Error:
            pass  # the connection is gone; the error being raised says why
        raise
    # 4.
    cursor.execute("RELEASE SAVEPOINT ledger_append")
    return results


def _head(cursor: psycopg.Cursor[Any]) -> tuple[int, bytes]:
    """(seq, entry_hash) of the last entry, (0, genesis) for an empty ledger; the lock's
    previous holder committed before releasing it, so this is the true head."""
    row = cursor.fetchone()
    return (int(row[0]), bytes(row[1])) if row else (0, GENESIS_HASH)


def _copy_batch(
    cursor: psycopg.Cursor[Any],
    drafts: Sequence[EntryDraft],
    last_seq: int,
    prev: bytes,
    known: dict[str, int] | None,
) -> list[Appended] | None:
    """COPY the drafts after (last_seq, prev); None if UNIQUE(disclosure_id) refused one (the
    transaction, or savepoint, must then be rolled back).

    ``known`` None: the first try, every draft assumed new. The rows go straight from the
    drafts to COPY (binary_rows: in C where ledger/_binary_rows.c was built, else
    write_binary_rows, one compiled Python loop), and a disclosure_id repeated
    within the batch is left to UNIQUE(disclosure_id) like one already in the ledger.
    ``known`` a dict (disclosure_id -> seq, looked up after a refusal): the drafts in it,
    or earlier in the batch, are not written again (_rows).

    The rows are binary COPY bytes built by ledger/entry.py (the bytes psycopg's
    copy.write_row sends for write_row's tuples: tests/unit/test_leaf_copy_rows.py), sent
    _CHUNK rows a write: copy.write_row costs about 2 us a row in psycopg's Python layers
    over its C dumpers. PostgreSQL inserts and indexes a binary COPY's rows 1,000 at a
    time (its copyfrom.c counts buffered bytes by the text line), but it reads and parses
    each part as it comes, on the other core, while the next is made: measured in one
    process at 1,000 a batch, 0.80-0.81 of a raw binary COPY in 3 runs of 4 with 64-row
    writes, 0.75-0.79 with the batch in one write. A connection whose client encoding
    is not UTF-8 (write_binary_rows writes UTF-8) gets psycopg's rows instead.
    """
    results: list[Appended] = []
    connection = cursor.connection
    try:
        if connection.info.encoding != "utf-8":
            use_c_bytea_dumper(connection)
            with cursor.copy(_COPY_SQL) as copy:
                copy.set_types(_COPY_TYPES)
                _rows(drafts, {} if known is None else known, last_seq, prev, results, copy.write_row)
            return results
        with cursor.copy(_COPY_SQL) as copy:
            if known is None:
                seq = last_seq
                copy.write(COPY_BINARY_HEADER)
                for start in range(0, len(drafts), _CHUNK):
                    part = drafts[start : start + _CHUNK]
                    data, prev = binary_rows(part, seq, prev)
                    seq += len(part)
                    copy.write(data)
                ids = [d.disclosure_id for d in drafts]
                results = [*map(_new_tuple, repeat(Appended), zip(range(last_seq + 1, seq + 1), ids, repeat(True)))]
            else:
                rows = [COPY_BINARY_HEADER]
                _rows(drafts, known, last_seq, prev, results, rows.append, binary=True)
                copy.write(memoryview(b"".join(rows)))  # psycopg sends it in slices: of a view, not copies
            copy.write(COPY_BINARY_TRAILER)
    except psycopg.errors.UniqueViolation as exc:
        if exc.diag.constraint_name != DISCLOSURE_ID_UNIQUE:
            raise
        return None
    except struct.error as exc:  # an int its column cannot hold (agreement_version is int4)
        raise ValueError(f"a draft holds a number its ledger column cannot: {exc}") from None
    return results


def _append_elsewhere(conn: Connection, drafts: Sequence[EntryDraft]) -> list[Appended]:
    """Other drivers (SQLite, for the demo): look the ids up, then executemany, in writer()'s transaction."""
    head = conn.execute(
        select(LedgerEntry.seq, LedgerEntry.entry_hash).order_by(LedgerEntry.seq.desc()).limit(1)
    ).first()
    last_seq, prev = (head[0], bytes(head[1])) if head else (0, GENESIS_HASH)
    results: list[Appended] = []
    rows: list[tuple[Any, ...]] = []
    _rows(drafts, seqs(conn, (d.disclosure_id for d in drafts)), last_seq, prev, results, rows.append)
    if rows:
        conn.execute(insert(LedgerEntry), [dict(zip(COLUMNS, row, strict=True)) for row in rows])
    return results


def use_c_bytea_dumper(connection: psycopg.Connection[Any]) -> None:
    """Make COPY's bytea columns use psycopg's C dumper on this connection (3 of them a row).

    set_types picks dumpers by type oid, and for bytea psycopg.dbapi20 registers a Python
    one (it unwraps its Binary objects) over the C one; bytes need no unwrapping.
    """
    if connection.adapters.get_dumper_by_oid(_BYTEA_OID, pq.Format.BINARY) is BinaryBinaryDumper:
        connection.adapters.register_dumper(bytes, BytesBinaryDumper)


def _rows(
    drafts: Sequence[EntryDraft],
    known: dict[str, int],
    last_seq: int,
    prev: bytes,
    results: list[Appended],
    write: Callable[[Any], Any],
    binary: bool = False,
) -> None:
    """Write the ledger rows of the drafts not in ``known`` (disclosure_id -> seq), numbered
    and chained from (last_seq, prev), checked as they go (check_draft); one Appended per
    draft goes to ``results``.

    ``known`` is extended with the new rows, so a repeat within the batch gets its first
    copy's seq. Each row is a tuple in COLUMNS order that ledger/entry.py's write_row,
    compiled from the schema, builds straight from the draft with its leaf and hashes: no
    normalised copy of each draft, no dict per row; with ``binary``, the same row as binary
    COPY bytes (write_binary_row). The decisions of one event sit together and share a
    decided_at and a digest, so each is converted or checked once per run.
    (write_binary_rows is this loop, compiled, for a batch with nothing to skip.)
    """
    cached_dt: Any = None
    stored: Any = _EPOCH  # decided_at as the row stores it: a UTC datetime, or binary COPY's bytes
    ms = 0
    checked_digest = ""
    outcomes, row = OUTCOMES, write_binary_row if binary else write_row
    for d in drafts:
        did = d.disclosure_id
        outcome = d.outcome
        digest = d.event_digest
        if outcome not in outcomes or not did or len(did) > 64 or outcome == NOT_COVERED:
            check_draft(d)  # raises, or passes a valid NOT_COVERED
        if digest != checked_digest:
            if digest and DIGEST.fullmatch(digest) is None:
                check_draft(d)
            checked_digest = digest
        seen = known.get(did)
        if seen is not None:
            results.append(_new_tuple(Appended, (seen, did, False)))
            continue
        dt = d.decided_at
        if dt is not cached_dt and (dt != cached_dt or dt.fold != cached_dt.fold):  # as write_binary_rows
            cached_dt = dt
            utc = dt if dt.tzinfo is UTC and not dt.microsecond % 1000 else to_millis(dt)  # refuses a naive one
            ms = (utc - _EPOCH) // _MS
            stored = binary_timestamp(ms) if binary else utc
        last_seq += 1
        prev = row(write, d, last_seq, prev, stored, ms)
        known[did] = last_seq
        results.append(_new_tuple(Appended, (last_seq, did, True)))


# Rows sent to COPY at a time: PostgreSQL reads and parses each part (the columns' receive
# functions, UTF-8 checks) while the next is made, and inserts them 1,000 at a time.
_CHUNK = 64
# write_row's tuples are in COLUMNS order, which ledger/entry.py checks is the table's.
_COPY_SQL = f"COPY ledger_entries ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# By oid: set_types looks a name up in the type registry on every COPY.
_COPY_TYPES = [postgres.types[t].oid for t in PG_COPY_TYPES]
_HEAD_SQL = "SELECT seq, entry_hash FROM ledger_entries ORDER BY seq DESC LIMIT 1"
# Several statements in one round trip (no parameters: the simple query protocol).
_BEGIN_LOCK_HEAD = (
    f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({ADVISORY_LOCK_KEY}); {_HEAD_SQL}"
)
_SAVEPOINT_HEAD = f"SAVEPOINT ledger_append; {_HEAD_SQL}"
_LOOKUP_SQL = "SELECT disclosure_id, seq FROM ledger_entries WHERE disclosure_id = ANY(%s)"
# One probe of the event_id index per id (LIMIT 1 keeps the lateral subquery a probe, not a
# join the planner may turn into a scan of the table: ledger/read.py's _BY_EVENT_PG).
# The ids go in as a literal so that the query joins step 1's round trip (the simple query
# protocol takes several statements, but no parameters).
_RECORDED_EVENTS_SQL = sql.SQL(
    "SELECT ids.event_id FROM unnest({}::text[]) AS ids(event_id) "
    "CROSS JOIN LATERAL (SELECT 1 FROM ledger_entries WHERE event_id = ids.event_id LIMIT 1) AS e"
)


def _recorded_events_sql(event_ids: Sequence[str], conn: psycopg.Connection[Any]) -> str:
    """_RECORDED_EVENTS_SQL for ``event_ids``, which psycopg quotes, unless each is a canonical
    UUID (hex digits and hyphens, nothing to quote), as the processor's always are: psycopg's
    list quoting cost 1.6 µs an event, a join 0.35."""
    if all(CANONICAL_UUID.fullmatch(i) for i in event_ids):
        return _RECORDED_EVENTS_SQL.format(sql.SQL("'{" + ",".join(event_ids) + "}'")).as_string(conn)
    return _RECORDED_EVENTS_SQL.format(sql.Literal(list(event_ids))).as_string(conn)


_BYTEA_OID = postgres.types["bytea"].oid
