"""The transactional-outbox relay: a source system's outbox table, published to the bus in order.

A source system writes an event as a row of its outbox table in the same transaction as
its own change (docs/relay.md has the table, a trigger example and the privileges). The
relay reads the rows in order, checks each with the publishing SDK's own validation (the
catalogue's Avro schema, the plausibility rules, the sizes: ``Publisher.publish``),
publishes the good ones, refuses the bad ones to the relay's dead-letter table with a
one-line reason, and remembers where it got to in the source database.

Why the read never loses a row: ids from a sequence can commit out of order (a
transaction holding id 5 commits after id 6 is visible), so "id > last" skips rows. Each
row instead carries the id of the transaction that wrote it (``txid xid8 DEFAULT
pg_current_xact_id()``), and the relay reads only rows whose transaction is older than
the oldest one still running (``pg_snapshot_xmin(pg_current_snapshot())``): every such
transaction has finished, so no row can ever appear behind the position. The position
is (txid, id), in that order.

Why a crash neither loses nor invents an event: the position moves only after the
broker confirmed every record of the batch (idempotent producer, ``acks=all``, flush),
in the same transaction that records the batch's refusals, on the connection that holds
the relay's advisory lock. A kill -9 between the flush and that commit re-publishes the
batch on restart: the same rows, checked against the same clock (the row's
``created_at``), give the same event ids and the same bytes, which the processor treats
as a replay.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from confluent_kafka import KafkaException
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from bus import kafka
from bus.connection_guard import psycopg_connect_args
from bus.settings import Settings
from producers.publisher import Publisher, RefusedEvent
from schemas.serde import InvalidRecord, from_json
from schemas.validation import Problem

__all__ = [
    "DOCS",
    "OutboxTables",
    "Refusal",
    "Relay",
    "RelayError",
    "RelayReport",
    "lock_key",
    "relay_row",
    "source_engine",
]

log = structlog.get_logger("accord.relay")

DOCS = "docs/relay.md"
LOCK_NAMESPACE = 0x41524C59  # "ARLY": the high 32 bits of the advisory lock key; the low 32 are the table's oid
MESSAGE_TIMEOUT_MS = 15_000  # librdkafka gives up on a record after this long; the batch is then sent again
FLUSH_TIMEOUT_S = 20.0  # longer than MESSAGE_TIMEOUT_MS: after it, every record is delivered or failed
MAX_JSON_FACTOR = 16  # a payload's JSON over 16 x ACCORD_MAX_EVENT_BYTES is refused before it is parsed
LOCK_WAIT_ONCE_S = 10.0  # `--once` waits this long for another relay's lock, then refuses
HELD_BACK_WARN_S = 30.0  # rows waiting behind an open transaction this long are logged
MAX_REASON = 500  # characters of a dead-letter reason
BACKOFF_MOST_S = 10.0
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class RelayError(ValueError):
    """Something a person must fix before the relay can run; the message is the one line they see."""


def _quote(part: str) -> str:
    return '"' + part + '"'


@dataclass(frozen=True)
class OutboxTables:
    """The outbox and the relay's two tables beside it: ``<outbox>_position`` and ``<outbox>_dead_letters``."""

    outbox: str  # as given, e.g. "accord_outbox" or "sales.accord_outbox"
    schema: str | None
    name: str

    @classmethod
    def of(cls, table: str) -> OutboxTables:
        """``[schema.]name`` of plain identifiers; anything else is refused (it is put into SQL)."""
        parts = table.split(".")
        longest = 63 - len("_dead_letters")
        if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.fullmatch(p) for p in parts) or len(parts[-1]) > longest:
            raise RelayError(
                f"ACCORD_RELAY_TABLE: {table[:80]!r} is not a table name ([schema.]name, letters, digits and _, "
                f"at most {longest} characters)"
            )
        return cls(table, parts[0] if len(parts) == 2 else None, parts[-1])

    def _sql(self, name: str) -> str:
        return f"{_quote(self.schema)}.{_quote(name)}" if self.schema else _quote(name)

    @property
    def outbox_sql(self) -> str:
        return self._sql(self.name)

    @property
    def position(self) -> str:
        return f"{self.schema + '.' if self.schema else ''}{self.name}_position"

    @property
    def position_sql(self) -> str:
        return self._sql(self.name + "_position")

    @property
    def dead_letters(self) -> str:
        return f"{self.schema + '.' if self.schema else ''}{self.name}_dead_letters"

    @property
    def dead_letters_sql(self) -> str:
        return self._sql(self.name + "_dead_letters")


def lock_key(table_oid: int) -> int:
    """The advisory lock of one outbox: Accord's namespace and the table's oid, so each outbox has its own."""
    return (LOCK_NAMESPACE << 32) | (table_oid & 0xFFFFFFFF)


@dataclass(frozen=True)
class Refusal:
    outbox_id: int
    event_type: str
    reason: str  # one line, never a value from the payload


@dataclass
class RelayReport:
    batches: int = 0
    published: int = 0
    refused: int = 0
    waits: int = 0  # times the relay waited for the database or the broker
    last: tuple[int, int] = (0, 0)  # the position reached: (txid, id)


def _one_line(problems: list[Problem]) -> str:
    reason = " ".join("; ".join(str(p) for p in problems).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def relay_row(
    publisher: Publisher, event_type: str, payload_json: str, agency: str | None, max_event_bytes: int
) -> list[Problem]:
    """Check one outbox row and hand it to ``publisher``; the problems that refused it, or [] when sent.

    The same steps as a JSON-lines file's line (``producers.ingest``): the JSON, then
    timestamps and dates from their ISO strings, then ``Publisher.publish``, which checks
    the schema, the plausibility rules and the size and sends nothing it refuses. A
    Problem never repeats a value.
    """
    if len(payload_json) > MAX_JSON_FACTOR * max_event_bytes:
        return [
            Problem("(payload)", f"is {len(payload_json)} characters of JSON, far over the limit of {max_event_bytes}")
        ]
    try:
        data = json.loads(payload_json)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f": {exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ": nested too deeply"
        return [Problem("(payload)", f"not valid JSON{where}")]
    if not isinstance(data, Mapping):
        return [Problem("(payload)", "must be a JSON object (the event)")]
    try:
        schema = publisher.catalogue.schema(event_type)
    except Exception:  # noqa: BLE001 - any name the catalogue does not hold is the row's problem, said by the SDK below
        problems, _ = publisher.problems(event_type, data, agency)
        return problems or [Problem("(event type)", "unknown event type")]
    try:
        record = from_json(schema, data)
    except InvalidRecord as exc:
        problems, _ = publisher.problems(event_type, data, agency, check_schema=False)
        return [Problem(exc.field, exc.problem)] + [p for p in problems if p.field != exc.field]
    except RecursionError:
        return [Problem("(payload)", "nested too deeply")]
    try:
        publisher.publish(event_type, record, agency=agency)
    except RefusedEvent as exc:
        return list(exc.problems)
    except InvalidRecord as exc:
        return [Problem(exc.field, exc.problem)]
    return []


def source_engine(settings: Settings) -> Engine:
    """The source database's engine: a connect timeout and keepalives, and never a value in an error (I6)."""
    url = settings.relay_source_url
    if not url:
        raise RelayError(
            "ACCORD_RELAY_SOURCE_URL is not set: give the SQLAlchemy URL of the source system's PostgreSQL "
            "database that holds the outbox, e.g. postgresql+psycopg://accord_relay@db.example:5432/cases"
        )
    scheme = url.split("://", 1)[0]
    if not scheme.startswith("postgresql"):
        raise RelayError(  # the value is not repeated: a URL may carry a password
            "ACCORD_RELAY_SOURCE_URL: the relay reads PostgreSQL only; give a URL such as "
            "postgresql+psycopg://accord_relay@db.example:5432/cases"
        )
    connect_args = psycopg_connect_args(settings.database_timeout_s) if "+psycopg" in scheme else {}
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)


class _Outage(Exception):
    """The database or the broker did not answer: wait and do the same work again."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service, self.detail = service, detail


@dataclass
class _Row:
    txid: int
    id: int
    event_type: str
    payload: str
    created_at: datetime


@dataclass
class _Checked:
    rows: list[_Row]
    refused: list[Refusal] = field(default_factory=list)
    sent: int = 0


def _now() -> datetime:
    return datetime.now(UTC)


class Relay:
    """One relay over one outbox. :meth:`run` until ``stop`` is set (or, ``once``, until drained).

    The protocol, per batch (mirrored in :meth:`_batch`):

    1. read up to ``relay_batch_size`` rows after the position whose transactions have
       all finished (txid below the snapshot's xmin), in (txid, id) order;
    2. check each row with the publishing SDK; send the good ones, keyed by subject key,
       and keep the refusals;
    3. flush: every record must be confirmed by the broker; if not, wait and send the
       whole batch again (duplicates carry the same id and bytes), never moving on;
    4. in one transaction on the lock's own connection: record the refusals in the
       dead-letter table and move the position to the batch's last row.

    Around it: the advisory lock (one relay per outbox; another waits), and waits with
    backoff for the database or the broker, after which the batch is read again from the
    position the database holds.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        engine: Engine | None = None,
        agency: str | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.tables = OutboxTables.of(settings.relay_table)
        self.engine = engine or source_engine(settings)
        self.agency = agency
        self.clock = clock
        self._row_now = clock()
        self._publisher: Publisher | None = None
        self._conn: Connection | None = None
        self._started = False  # the lock was held once: from then on the database going away is an outage
        self.report = RelayReport()

    # -- connections ----------------------------------------------------------

    def _new_publisher(self) -> Publisher:
        producer = kafka.producer(self.settings, **{"message.timeout.ms": MESSAGE_TIMEOUT_MS})
        # The row's own time is the publisher's "now": checking a row again after a crash gives the same answer.
        return Publisher(self.settings, producer=producer, clock=lambda: self._row_now)

    def check_tables(self, conn: Connection) -> int:
        """The outbox's oid; RelayError naming the DDL when a table is missing or the position is impossible."""
        t = self.tables
        found = conn.execute(
            text("SELECT to_regclass(:o)::oid, to_regclass(:p)::oid, to_regclass(:d)::oid"),
            {"o": t.outbox_sql, "p": t.position_sql, "d": t.dead_letters_sql},
        ).one()
        where = conn.engine.url.render_as_string(hide_password=True)
        for name, oid in zip((t.outbox, t.position, t.dead_letters), found, strict=True):
            if oid is None:
                raise RelayError(
                    f"the table {name} is missing in {where} (or this role cannot see it); create it with the "
                    f'DDL in {DOCS} ("The outbox table") and grant the privileges listed there'
                )
        try:
            conn.execute(text(f"SELECT txid, id, event_type, payload, created_at FROM {t.outbox_sql} WHERE false"))
            conn.execute(text(f"SELECT last_txid, last_id, relayed_at FROM {t.position_sql} WHERE false"))
            conn.execute(
                text(f"SELECT outbox_id, event_type, reason, refused_at FROM {t.dead_letters_sql} WHERE false")
            )
        except DBAPIError as exc:
            conn.rollback()
            raise RelayError(
                f"{_describe_db(exc)} (in {where}); the tables must be as the DDL in {DOCS} creates them, "
                "with the privileges listed there"
            ) from None
        needed = [(t.outbox, t.outbox_sql, "SELECT")]
        needed += [(t.position, t.position_sql, p) for p in ("SELECT", "INSERT", "UPDATE")]
        needed += [(t.dead_letters, t.dead_letters_sql, p) for p in ("SELECT", "INSERT")]
        for name, sql_name, privilege in needed:
            if not conn.execute(text("SELECT has_table_privilege(:t, :p)"), {"t": sql_name, "p": privilege}).scalar():
                role = conn.execute(text("SELECT current_user")).scalar()
                raise RelayError(
                    f"the role {role} lacks {privilege} on {name} in {where}; grant the privileges listed in {DOCS}"
                )
        conn.execute(text(f"INSERT INTO {t.position_sql} (last_txid, last_id) VALUES ('0', 0) ON CONFLICT DO NOTHING"))
        txid, ahead = conn.execute(
            text(f"SELECT last_txid::text, last_txid >= pg_snapshot_xmax(pg_current_snapshot()) FROM {t.position_sql}")
        ).one()
        conn.commit()
        if ahead:
            raise RelayError(
                f"the position in {t.position} (transaction {txid}) is ahead of this database's transaction counter "
                f'in {where}: was it restored from a dump? see {DOCS} ("Restoring the source database")'
            )
        return int(found[0])

    def _connect(self, stop: threading.Event, *, once: bool) -> Connection | None:
        """A connection holding the outbox's advisory lock, waiting while another relay holds it; None if stopped."""
        conn = self.engine.connect()
        try:
            t = max(1, int(self.settings.database_timeout_s))
            conn.execute(text(f"SET statement_timeout = {t * 3 * 1000}"))
            # The server's side of the same keepalives: after a network cut the server ends this session,
            # and with it the lock, within about T, so a new relay is not kept waiting for hours.
            conn.execute(text(f"SET tcp_keepalives_idle = {max(1, t // 2)}"))
            conn.execute(text(f"SET tcp_keepalives_interval = {max(1, t // 6)}"))
            conn.execute(text("SET tcp_keepalives_count = 3"))
            conn.execute(text(f"SET tcp_user_timeout = {t * 1000}"))
            oid = self.check_tables(conn)
            started, said = time.monotonic(), False
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _signed(lock_key(oid))}).scalar():
                conn.commit()
                if once and time.monotonic() - started > LOCK_WAIT_ONCE_S:
                    raise RelayError(
                        f"another accord relay holds the lock of {self.tables.outbox} (waited "
                        f"{LOCK_WAIT_ONCE_S:.0f}s); only one relay runs per outbox"
                    )
                if not said and not once:
                    log.info("relay_standby", outbox=self.tables.outbox, reason="another relay holds the lock")
                    said = True
                if stop.wait(1.0):
                    conn.close()
                    return None
            conn.commit()
            return conn
        except BaseException:
            conn.close()
            raise

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.invalidate()
                self._conn.close()
            except Exception:  # noqa: BLE001 - the connection is already dead; its lock with it
                pass
            self._conn = None

    def close(self) -> None:
        self._drop_connection()
        if self._publisher is not None:
            self._publisher.producer.flush(0)
            self._publisher = None
        self.engine.dispose()

    # -- the loop ---------------------------------------------------------------

    def run(self, stop: threading.Event | None = None, *, once: bool = False) -> RelayReport:
        """Relay until ``stop`` is set, or (``once``) until no row is ready; RelayError for what a person must fix."""
        stop = stop or threading.Event()
        attempt = 0
        held_since: float | None = None
        try:
            while not stop.is_set():
                try:
                    if self._conn is None:
                        self._conn = self._connect(stop, once=once)
                        if self._conn is None:
                            break
                        self._started = True
                        log.info("relay_started", outbox=self.tables.outbox, batch_size=self.settings.relay_batch_size)
                    if self._publisher is None:
                        self._publisher = self._new_publisher()
                    n, held_back = self._batch(self._conn, self._publisher)
                except RelayError:
                    raise
                except (_Outage, DBAPIError) as exc:
                    if not self._started and isinstance(exc, DBAPIError):
                        raise  # at start-up a database that refuses or is not there is a person's to fix: one line
                    outage = exc if isinstance(exc, _Outage) else _Outage("database", _describe_db(exc))
                    if outage.service == "database":
                        self._drop_connection()
                    else:
                        self._drop_publisher()
                    wait = min(0.5 * 2.0**attempt, BACKOFF_MOST_S)
                    self.report.waits += 1
                    log.warning("relay_waiting", waiting_for=outage.service, reason=outage.detail, retry_in_s=wait)
                    attempt += 1
                    stop.wait(wait)
                    continue
                if attempt:
                    log.info("relay_resumed", outbox=self.tables.outbox, after_waits=attempt)
                    attempt = 0
                if n >= self.settings.relay_batch_size:
                    continue
                if held_back:
                    held_since = held_since or time.monotonic()
                    if time.monotonic() - held_since > HELD_BACK_WARN_S:
                        log.warning(
                            "relay_held_back",
                            outbox=self.tables.outbox,
                            reason="rows wait behind a transaction still open on the database server",
                            for_s=round(time.monotonic() - held_since),
                        )
                        held_since = time.monotonic()
                else:
                    held_since = None
                if once:
                    break
                stop.wait(self.settings.relay_poll_interval_s)
        finally:
            self.close()
        return self.report

    def _drop_publisher(self) -> None:
        if self._publisher is not None:
            try:
                self._publisher.producer.purge()
                self._publisher.producer.flush(0)
            except Exception:  # noqa: BLE001 - a producer being discarded: nothing of it is relied on
                pass
            self._publisher = None

    def _read(self, conn: Connection) -> tuple[list[_Row], bool]:
        """Step 1: the next rows whose transactions have finished; and whether later rows wait behind an open one."""
        t = self.tables
        txid, last_id = conn.execute(text(f"SELECT last_txid::text, last_id FROM {t.position_sql}")).one()
        rows = conn.execute(
            text(
                f"SELECT txid::text, id, event_type, payload::text, created_at FROM {t.outbox_sql} "
                "WHERE (txid, id) > (CAST(:txid AS xid8), :id) "
                "AND txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY txid, id LIMIT :n"
            ),
            {"txid": txid, "id": last_id, "n": self.settings.relay_batch_size},
        ).all()
        held_back = False
        if len(rows) < self.settings.relay_batch_size:
            after = (rows[-1][0], rows[-1][1]) if rows else (txid, last_id)
            held_back = bool(
                conn.execute(
                    text(f"SELECT EXISTS (SELECT 1 FROM {t.outbox_sql} WHERE (txid, id) > (CAST(:txid AS xid8), :id))"),
                    {"txid": after[0], "id": after[1]},
                ).scalar()
            )
        conn.commit()
        return [_Row(int(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4]) for r in rows], held_back

    def _batch(self, conn: Connection, publisher: Publisher) -> tuple[int, bool]:
        """One batch, steps 1-4 of the class docstring; the number of rows it moved past."""
        # 1. read
        rows, held_back = self._read(conn)
        if not rows:
            return 0, held_back
        # 2. check and send
        try:
            checked = self._send(publisher, rows)
        except KafkaException as exc:
            raise _Outage("broker", " ".join(str(exc).split())[:200]) from None
        # 3. flush: all confirmed, or an outage (the batch is read and sent again)
        report = publisher.flush(FLUSH_TIMEOUT_S)
        if report.failed or report.delivered != checked.sent:
            errors = sorted({e for _, e in report.failed})[:3]
            raise _Outage(
                "broker", f"{len(report.failed)} of {checked.sent} records not delivered: {'; '.join(errors)}"
            )
        # 4. refusals and position, in one transaction on the lock's connection
        t, last = self.tables, rows[-1]
        if checked.refused:
            conn.execute(
                text(
                    f"INSERT INTO {t.dead_letters_sql} (outbox_id, event_type, reason) VALUES (:i, :t, :r) "
                    "ON CONFLICT (outbox_id) DO NOTHING"
                ),
                [{"i": r.outbox_id, "t": r.event_type, "r": r.reason} for r in checked.refused],
            )
        conn.execute(
            text(f"UPDATE {t.position_sql} SET last_txid = CAST(:txid AS xid8), last_id = :id, relayed_at = now()"),
            {"txid": str(last.txid), "id": last.id},
        )
        conn.commit()
        for r in checked.refused:
            log.warning("relay_refused", outbox_id=r.outbox_id, event_type=r.event_type[:40], reason=r.reason)
        self.report.batches += 1
        self.report.published += checked.sent
        self.report.refused += len(checked.refused)
        self.report.last = (last.txid, last.id)
        return len(rows), held_back

    def _send(self, publisher: Publisher, rows: list[_Row]) -> _Checked:
        publisher.report.delivered, publisher.report.failed[:] = 0, []
        checked = _Checked(rows)
        now = self.clock()
        for row in rows:
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            self._row_now = min(created, now)
            problems = relay_row(publisher, row.event_type, row.payload, self.agency, self.settings.max_event_bytes)
            if problems:
                checked.refused.append(Refusal(row.id, row.event_type[:100], _one_line(problems)))
            else:
                checked.sent += 1
        return checked


def _signed(key: int) -> int:
    """PostgreSQL's bigint is signed: the same 64 bits, as the database reads them."""
    return key - (1 << 64) if key >= 1 << 63 else key


def _describe_db(exc: DBAPIError) -> str:
    """The first line of the driver's message, never a statement or its parameters (I6).

    A data or integrity error may quote a value in its message: only its kind and SQLSTATE then.
    """
    orig = exc.orig
    if isinstance(exc, DataError | IntegrityError):
        return f"{type(orig or exc).__name__} (SQLSTATE {getattr(orig, 'sqlstate', None) or '?'})"
    first = str(orig).strip().splitlines()[0] if orig is not None and str(orig).strip() else type(exc).__name__
    return " ".join(first.split())[:200]
