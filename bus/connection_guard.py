"""Noticing dead database connections within seconds, whatever killed them.

A connection can die without a word: after a failover or a NAT drop no RST ever
arrives, and a client blocked on a reply waits for ever (the issue's probe saw the
processor stall 30 s+ while the database answered new connections). Four layers,
each with a bound from ``ACCORD_DATABASE_TIMEOUT_S`` (T, default 10 s):

1. ``connect_timeout`` T: a new connection that does not answer fails;
2. TCP keepalives (idle T/2, then 3 probes T/6 apart) and ``tcp_user_timeout`` T: an idle
   connection, or one whose sent data is never acknowledged, is dropped by the kernel;
3. ``statement_timeout`` 3T on the server: a statement that runs too long is cancelled
   (and ``jit`` off: see ``_on_connect``);
4. this module's watchdog: a connection checked out of the pool for longer than 3T + 5 s
   (a reply that never comes, though the peer acknowledged the query) has its socket shut
   down, so the blocked call fails at once with an OperationalError.

Each failure reaches the processor as an outage: it waits, retries with a fresh
connection (``pool_pre_ping``) and delivers nothing meanwhile (I10, docs/architecture.md).

TLS to the database (``ACCORD_DATABASE_SSLMODE``, ``..._SSLROOTCERT``, ``..._SSLCERT``,
``..._SSLKEY``; docs/security.md) is libpq's too: :func:`database_tls` gives its keywords,
for the engine's URL (bus/database.py) and for any connection made with psycopg directly.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import structlog
from sqlalchemy import Engine, event

if TYPE_CHECKING:
    from bus.settings import Settings

log = structlog.get_logger("accord.database")


def database_tls(settings: Settings) -> dict[str, str]:
    """libpq's TLS keywords from the ``database_ssl*`` settings; an empty setting is left to libpq's default."""
    given = {
        "sslmode": settings.database_sslmode,
        "sslrootcert": settings.database_sslrootcert,
        "sslcert": settings.database_sslcert,
        "sslkey": settings.database_sslkey,
    }
    return {key: value.strip() for key, value in given.items() if value.strip()}


def psycopg_connect_args(timeout_s: float, settings: Settings | None = None) -> dict[str, Any]:
    """libpq keywords for a psycopg connection: the timeouts above, and with ``settings`` its TLS (database_tls)."""
    t = max(1, int(timeout_s))
    return {
        "connect_timeout": t,
        "keepalives": 1,
        "keepalives_idle": max(1, t // 2),
        "keepalives_interval": max(1, t // 6),
        "keepalives_count": 3,
        "tcp_user_timeout": t * 1000,
        **(database_tls(settings) if settings is not None else {}),
    }


def guard(engine: Engine, timeout_s: float) -> None:
    """Set the statement timeout on each new connection and start the watchdog for ``engine``."""
    statement_ms = int(timeout_s * 3 * 1000)
    limit = timeout_s * 3 + 5
    checked_out: dict[int, tuple[float, Any]] = {}
    lock = threading.Lock()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {statement_ms}")
            # The processor's queries are small index look-ups: compiling them (JIT, which
            # large row estimates trigger when statistics are missing) costs 10-80 ms each.
            cur.execute("SET jit = off")
        dbapi_conn.commit()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        with lock:
            checked_out[id(dbapi_conn)] = (time.monotonic(), dbapi_conn)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_conn: Any, _record: Any) -> None:
        with lock:
            checked_out.pop(id(dbapi_conn), None)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            now = time.monotonic()
            with lock:
                stale = [(k, c) for k, (since, c) in checked_out.items() if now - since > limit]
                for k, _ in stale:
                    checked_out.pop(k, None)
            for _, conn in stale:
                _shut_down(conn, limit)

    threading.Thread(target=watch, name="db-watchdog", daemon=True).start()


def _shut_down(dbapi_conn: Any, limit: float) -> None:
    try:
        fd = dbapi_conn.pgconn.socket
        sock = socket.socket(fileno=socket.dup(fd))
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
        log.warning("database_connection_dropped", reason=f"no reply within {limit:.0f}s")
    except Exception as exc:  # noqa: BLE001 - the connection may have closed meanwhile
        log.debug("database_connection_drop_failed", error=type(exc).__name__)
