"""The transactional-outbox relay: a source system's outbox table, published to the bus in order.

A source system writes an event as a row of its outbox table in the same transaction as
its own change (docs/relay.md has the table, a trigger example and the privileges). The
relay reads the rows in order, checks each with the publishing SDK's own validation (the
catalogue's Avro schema, the plausibility rules, the sizes: ``Publisher.publish``, by the
path a line of ``accord publish`` takes, ``producers.json_event``),
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

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NoReturn

import structlog
from confluent_kafka import KafkaException
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError

from bus import kafka
from bus.connection_guard import psycopg_connect_args
from bus.database import shown_url
from bus.settings import UNENCODED_AT, Settings
from producers.json_event import publish_json
from producers.publisher import Publisher
from schemas.validation import Problem

__all__ = [
    "DOCS",
    "OutboxTables",
    "Refusal",
    "Relay",
    "RelayError",
    "RelayReport",
    "lock_key",
    "source_engine",
]

log = structlog.get_logger("accord.relay")

DOCS = "docs/relay.md"
LOCK_NAMESPACE = 0x41524C59  # "ARLY": the high 32 bits of the advisory lock key; the low 32 are the table's oid
MESSAGE_TIMEOUT_MS = 15_000  # librdkafka gives up on a record after this long; the batch is then sent again
FLUSH_TIMEOUT_S = 20.0  # longer than MESSAGE_TIMEOUT_MS: after it, every record is delivered or failed
LOCK_WAIT_ONCE_S = 10.0  # `--once` waits this long for another relay's lock, then refuses
HELD_BACK_WARN_S = 30.0  # rows waiting behind an open transaction this long are logged
MAX_REASON = 500  # characters of a dead-letter reason
BACKOFF_MOST_S = 10.0
TRANSIENT_TRIES = 5  # a refusal that may pass (a statement timeout, a deadlock, disk full) is tried again this often
# The database going away, waited for as long as it lasts (besides class 08, connection exception):
# the server shutting down (admin, crash), not yet accepting connections, too many connections.
_GONE = frozenset({"57P01", "57P02", "57P03", "53300"})
# Refusals that may pass by themselves: tried again TRANSIENT_TRIES times in a row, then a person's to fix.
_TRANSIENT = frozenset({"57014", "40001", "40P01", "55P03", "53100", "53200"})
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
    held_back: bool = False  # ``once``: it exited while rows still waited behind an open transaction


def _one_line(problems: list[Problem]) -> str:
    reason = " ".join("; ".join(str(p) for p in problems).split())
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def source_engine(settings: Settings) -> Engine:
    """The source database's engine: psycopg 3 only, a connect timeout and keepalives, never a value in an error (I6).

    Only ``postgresql+psycopg://`` is taken: the bounds on a dead connection in the
    failure table of docs/relay.md are libpq keywords given through psycopg, and telling
    a lost connection from a refusal reads psycopg's SQLSTATE. A plain ``postgresql://``
    means psycopg2 to SQLAlchemy (not installed), so it is refused too, with the fix.
    A line naming the database shows its URL without any password (bus.database.shown_url).
    """
    url = settings.relay_source_url
    example = "postgresql+psycopg://accord_relay@db.example:5432/cases"
    if not url:
        raise RelayError(
            "ACCORD_RELAY_SOURCE_URL is not set: give the SQLAlchemy URL of the source system's PostgreSQL "
            f"database that holds the outbox, e.g. {example}"
        )
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # a malformed URL or a port that is not a number; the text may quote it
        raise RelayError(
            "ACCORD_RELAY_SOURCE_URL is not a URL SQLAlchemy can read (check the scheme, the host and that the "
            f"port is a number); give one such as {example}"
        ) from None
    if "@" in (parsed.host or ""):  # the rest of the password became the host, which errors would print
        raise RelayError(f"ACCORD_RELAY_SOURCE_URL: {UNENCODED_AT}")
    if parsed.get_backend_name() != "postgresql":
        raise RelayError(f"ACCORD_RELAY_SOURCE_URL: the relay reads PostgreSQL only; give a URL such as {example}")
    if parsed.drivername != "postgresql+psycopg":
        given = parsed.drivername.partition("+")[2][:40] or "psycopg2, SQLAlchemy's default for postgresql://"
        raise RelayError(
            f"ACCORD_RELAY_SOURCE_URL: the relay connects with psycopg 3 only, not {given}; "
            f"begin the URL with postgresql+psycopg://, e.g. {example}"
        )
    connect_args = psycopg_connect_args(settings.database_timeout_s)
    return create_engine(parsed, pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)


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
    position the database holds. A database that answers and refuses (a constraint, a
    trigger, a privilege: anything but a lost connection) is a RelayError instead, at once
    or, for a refusal that may pass (a statement timeout, a deadlock, disk full), after
    TRANSIENT_TRIES tries in a row: each try would publish the batch again.
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
        self._doing = ("its session set-up", self.tables.outbox)  # what it asked the database last, and of which table
        self._refused_in_a_row = 0  # transient refusals since the last batch that went through
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
        where = shown_url(conn.engine.url)
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
        self._doing = ("its session set-up", self.tables.outbox)
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
        """Relay until ``stop`` is set, or (``once``) until no row is ready; RelayError for what a person must fix.

        ``once`` and rows held back behind a transaction still open on the server (any
        database of it: the snapshot-xmin rule of the module docstring): it waits up to
        ``relay_once_wait_s`` for them, as a batch job's commit usually comes soon, then
        exits with ``report.held_back`` set, so a run from cron does not report "0 rows"
        as if nothing were waiting.
        """
        stop = stop or threading.Event()
        attempt = 0
        held_since: float | None = None
        away_since: float | None = None  # when the database or the broker stopped answering
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
                    if isinstance(exc, DBAPIError) and not _database_gone(exc):
                        self._refused(exc)  # RelayError, unless it may pass and has not failed too often yet
                        exc = _Outage("database", _kind(exc))  # a refusal's text may quote a value: never logged
                    outage = exc if isinstance(exc, _Outage) else _Outage("database", _describe_db(exc))
                    if outage.service == "database":
                        self._drop_connection()
                    else:
                        self._drop_publisher()
                    away_since = away_since or time.monotonic()
                    if once and time.monotonic() - away_since >= self.settings.relay_once_wait_s:
                        self._gave_up(outage)
                    wait = min(0.5 * 2.0**attempt, BACKOFF_MOST_S)
                    self.report.waits += 1
                    log.warning("relay_waiting", waiting_for=outage.service, reason=outage.detail, retry_in_s=wait)
                    attempt += 1
                    stop.wait(wait)
                    continue
                if attempt:
                    log.info("relay_resumed", outbox=self.tables.outbox, after_waits=attempt)
                    attempt = 0
                away_since = None
                self._refused_in_a_row = 0
                if n >= self.settings.relay_batch_size:
                    continue
                if held_back:
                    held_since = held_since or time.monotonic()
                    if once and time.monotonic() - held_since >= self.settings.relay_once_wait_s:
                        self.report.held_back = True
                        log.warning(
                            "relay_held_back",
                            outbox=self.tables.outbox,
                            reason="rows wait behind a transaction still open on the database server; "
                            "the next run relays them once it ends",
                            for_s=round(time.monotonic() - held_since, 1),
                        )
                        break
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

    def _gave_up(self, outage: _Outage) -> NoReturn:
        """``once``: the broker or the database has been away for ``relay_once_wait_s``; a run from cron
        must end, and say that it did not relay, rather than wait for ever."""
        where = (
            f"no Kafka broker at {self.settings.bootstrap_servers} confirmed the batch"
            if outage.service == "broker"
            else f"the source database ({shown_url(self.engine.url)}) stopped answering"
        )
        raise RelayError(
            f"{where} for {self.settings.relay_once_wait_s:g} s (ACCORD_RELAY_ONCE_WAIT_S) after "
            f"{self.report.published} row(s) were published; nothing is lost: the position stays before the rows "
            "not confirmed, and the next run sends them"
        )

    def _refused(self, exc: DBAPIError) -> None:
        """The database answered and refused: RelayError at once, or (a refusal that may pass) after a few tries.

        Waiting and trying again does not fix a constraint, a trigger, a missing key or a
        privilege, and each try would publish the batch again: the relay stops with one
        line instead (kind and SQLSTATE, never the database's text, which may quote a
        value), the position where it was.
        """
        code = _sqlstate(exc)
        if code in _TRANSIENT:
            self._refused_in_a_row += 1
            if self._refused_in_a_row <= TRANSIENT_TRIES:
                return
        tries = f" {self._refused_in_a_row} times in a row" if code in _TRANSIENT else ""
        doing, table = self._doing
        where = shown_url(self.engine.url)
        raise RelayError(
            f"the source database {where} refused {doing}: {_kind(exc)}{tries}; waiting will not fix it, so the "
            f"relay stopped with its position unmoved (what follows it is relayed when it runs again): check {table} "
            f"against the DDL and privileges in {DOCS} and any trigger or constraint added to it"
        ) from None

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
        self._doing = ("reading the position and the outbox", t.outbox)
        txid, last_id = conn.execute(text(f"SELECT last_txid::text, last_id FROM {t.position_sql}")).one()
        rows = conn.execute(
            text(
                # o.txid, not txid: a bare ORDER BY name is the output column first, here txid::text,
                # and '10000' < '9999' (rows past the position would be skipped, others sent out of order).
                f"SELECT o.txid::text, o.id, o.event_type, o.payload::text, o.created_at FROM {t.outbox_sql} AS o "
                "WHERE (o.txid, o.id) > (CAST(:txid AS xid8), :id) "
                "AND o.txid < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY o.txid, o.id LIMIT :n"
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
            self._doing = (f"the batch's refusals (INSERT INTO {t.dead_letters})", t.dead_letters)
            conn.execute(
                text(
                    f"INSERT INTO {t.dead_letters_sql} (outbox_id, event_type, reason) VALUES (:i, :t, :r) "
                    "ON CONFLICT (outbox_id) DO NOTHING"
                ),
                [{"i": r.outbox_id, "t": r.event_type, "r": r.reason} for r in checked.refused],
            )
        self._doing = (f"the batch's new position (UPDATE {t.position})", t.position)
        conn.execute(
            text(f"UPDATE {t.position_sql} SET last_txid = CAST(:txid AS xid8), last_id = :id, relayed_at = now()"),
            {"txid": str(last.txid), "id": last.id},
        )
        self._doing = (f"the batch's commit ({t.position}, {t.dead_letters})", t.position)
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
            problems = publish_json(publisher, row.event_type, row.payload, self.agency, what="(payload)")
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


def _sqlstate(exc: DBAPIError) -> str | None:
    orig = exc.orig
    code = getattr(getattr(orig, "diag", None), "sqlstate", None) or getattr(orig, "sqlstate", None)
    return str(code) if code else None


def _kind(exc: DBAPIError) -> str:
    """What a person reads of a refusal: the error's kind and SQLSTATE, never its text (a trigger's may quote values)."""
    return f"{type(exc.orig or exc).__name__}, SQLSTATE {_sqlstate(exc) or '?'}"


def _database_gone(exc: DBAPIError) -> bool:
    """Whether the database went away (wait for it) rather than refused the relay's statement.

    Gone: SQLSTATE class 08 (connection exception), a server shutting down or starting
    (57P01-57P03), too many connections (53300); or no SQLSTATE at all on a driver's
    OperationalError or InterfaceError, which is how psycopg reports a connection that
    was cut, timed out or could not be opened.
    """
    code = _sqlstate(exc)
    if code is None:
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return code.startswith("08") or code in _GONE
