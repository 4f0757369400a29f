"""Who runs the control plane: one worker at a time, chosen by the database, not by luck.

Several processor workers share one consumer group: Kafka gives each its event and
receipt partitions, so every record is handled once. The control plane — the retraction
sweep (consent relay, retractions, notices) and the signed checkpoints — is not
partitioned, so it runs in whichever worker holds this lease:

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of the
  lease's own, outside the engine's pool and its watchdog. The server releases it when
  that session ends, so a worker killed with SIGKILL, or cut off from the database,
  hands it on within the connection's keepalive bound (``ACCORD_DATABASE_TIMEOUT_S``).
- SQLite (development): an exclusive ``flock`` on ``<ledger file>.control.lock``; the
  kernel releases it when the process dies.

``held()`` is asked before every control-plane tick: it takes the lease if it is free,
and checks that a held PostgreSQL lease's session is still alive (a dead session means
another worker may hold it now). Everything the control plane writes is idempotent
(stable retraction ids, cursors that only move forward, one checkpoint per tree size), so
the short overlap when a cut-off holder has not noticed yet cannot corrupt anything; the
lease is what keeps the normal case to one runner.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Protocol

import psycopg
import structlog
from psycopg.rows import TupleRow
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from bus import advisory_locks

log = structlog.get_logger("accord.control_lease")


def lease_key(schema: str) -> int:
    """The advisory lock key of the control plane of the ledger in ``schema``.

    Advisory locks are per database; the schema is part of the key so that buses sharing
    one database in different schemas (as the tests do) do not take each other's lease.
    """
    return advisory_locks.key(f"accord.control-plane:{schema}")


class Lease(Protocol):
    """The control-plane lease as the loop asks for it before each tick."""

    def held(self) -> bool:
        """Take the lease if it is free; True while this worker holds it."""
        ...

    def release(self) -> None:
        """Give it up (at stop); another worker takes it at its next tick."""
        ...


class AdvisoryLease:
    """The PostgreSQL lease: a session advisory lock on a dedicated connection."""

    def __init__(self, conninfo: str, connect_args: Mapping[str, Any] | None = None) -> None:
        # connect_args: libpq keywords (bus.connection_guard.psycopg_connect_args), passed to psycopg.connect
        self.conninfo = conninfo
        self.connect_args = dict(connect_args or {})
        self.conn: psycopg.Connection[TupleRow] | None = None

    def held(self) -> bool:
        if self.conn is not None:
            try:
                self.conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                log.warning("control_lease_lost", reason="its database session ended")
                self._drop()
        try:
            # Named, so an operator (and the tests) can see which worker holds it in pg_stat_activity.
            conn = psycopg.connect(
                self.conninfo,
                autocommit=True,
                application_name=f"accord-control-lease:{os.getpid()}",
                **self.connect_args,
            )
        except psycopg.Error:
            return False  # the database is down: nobody's control plane can do anything
        try:
            schema = conn.execute("SELECT current_schema()").fetchone()
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (lease_key(schema[0] if schema else ""),)).fetchone()
        except psycopg.Error:
            conn.close()
            return False
        if got and got[0]:
            self.conn = conn
            log.info("control_lease_taken")
            return True
        conn.close()
        return False

    def release(self) -> None:
        self._drop()

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()  # closing the session releases the lock
            except psycopg.Error:
                pass
            self.conn = None


class FileLease:
    """The SQLite lease: an exclusive flock, released by the kernel when the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file: IO[bytes] | None = None

    def held(self) -> bool:
        if self.file is not None:
            return True
        f = open(self.path, "ab")  # noqa: SIM115 - kept open for as long as the lease is held
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self.file = f
        log.info("control_lease_taken")
        return True

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def lease_for(engine: Engine, connect_args: Mapping[str, Any] | None = None) -> Lease:
    """The lease that fits the ledger database behind ``engine``."""
    url = engine.url
    if url.get_backend_name() == "postgresql":
        libpq = make_url(url.render_as_string(hide_password=False)).set(drivername="postgresql")
        return AdvisoryLease(libpq.render_as_string(hide_password=False), connect_args)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return FileLease(Path(f"{url.database}.control.lock"))
    raise NotImplementedError(f"no control-plane lease for {url.get_backend_name()!r} (in-memory SQLite?)")


__all__ = ["AdvisoryLease", "FileLease", "Lease", "lease_key", "lease_for"]
