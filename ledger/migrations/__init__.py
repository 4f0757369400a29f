"""The ledger database's schema, as Alembic revisions: the owner upgrades it, the bus only checks it.

Every table of the database (ledger, consent history, cursors) is made by the revisions
in ``versions/``: 0001 is Accord 0.1.0's schema, each later one a change. ``accord ledger
init`` runs :func:`upgrade` as the owner role; the bus calls :func:`require_head` at start
and refuses a database that is behind (or ahead of) the code, naming what to run. It never
migrates PostgreSQL itself. SQLite, the demo's store, is upgraded on first use.

A database made before migrations (0.1.0's tables, no alembic_version) is recognised by
its tables and columns, stamped at 0001 without running it, then upgraded.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, inspect, text
from sqlalchemy.exc import DBAPIError

from bus.database import where
from ledger.append import ADVISORY_LOCK_KEY, require_current_columns, sqlite_immediate
from ledger.roles import LedgerSchemaMissing

# Alembic's INFO lines (its plugins, each step) say again what `accord ledger init` prints; its warnings still show.
logging.getLogger("alembic").setLevel(logging.WARNING)

if TYPE_CHECKING:  # alembic is imported when used: every command imports this module, few migrate
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "FIRST_REVISION",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "LedgerSchemaNotCurrent",
    "SchemaState",
    "configure_context",
    "head",
    "require_head",
    "schema_state",
    "schema_transaction",
    "upgrade",
]

SCRIPT_LOCATION = Path(__file__).resolve().parent
FIRST_REVISION = "0001"
VERSION_TABLE = "alembic_version"
INSUFFICIENT_PRIVILEGE = "42501"  # PostgreSQL's SQLSTATE for "permission denied"

# What Accord 0.1.0 made (revision 0001): a database without alembic_version is stamped at
# 0001 only if it has every one of these tables with these columns.
FIRST_RELEASE_TABLES: dict[str, frozenset[str]] = {
    "ledger_entries": frozenset(
        [
            "seq",
            "disclosure_id",
            "event_id",
            "event_type",
            "provider",
            "recipient",
            "agreement_id",
            "agreement_version",
            "purpose",
            "legal_basis",
            "outcome",
            "reason",
            "fields",
            "consent_mode",
            "consent_version",
            "subject_key",
            "decided_at",
            "refers_to",
            "event_digest",
            "subjects",
            "prev_hash",
            "entry_hash",
            "leaf_hash",
        ]
    ),
    "ledger_checkpoints": frozenset(["tree_size", "root", "note", "frontier", "created_at"]),
    "ledger_subject_refs": frozenset(["subject_key", "seq"]),
    "ledger_tiles": frozenset(["level", "tile_index", "width", "hashes"]),
    "ledger_cosignatures": frozenset(["tree_size", "cosigner", "key_id", "vkey", "signature_line", "created_at"]),
    "consent_records": frozenset(
        [
            "id",
            "subject_key",
            "purpose",
            "recipient",
            "recipient_class",
            "decision",
            "recorded_at",
            "expires_at",
            "collected_by",
            "method",
            "evidence_ref",
        ]
    ),
    "processor_cursors": frozenset(["name", "position"]),
}


class LedgerSchemaNotCurrent(LedgerSchemaMissing):
    """The database's schema revision is not the one this code was written for."""


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision (None: no alembic_version) and the code's head."""

    current: str | None
    head: str
    known: bool  # the current revision is one of this code's (else a newer Accord made it)

    @property
    def at_head(self) -> bool:
        return self.current == self.head


def _config(conn: Connection | None = None) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    if conn is not None:
        config.attributes["connection"] = conn
    return config


@cache
def _script() -> ScriptDirectory:
    """The revisions, read once per process (the tests make a database per test)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config())


def head() -> str:
    """The newest revision this code knows."""
    heads = _script().get_heads()
    assert len(heads) == 1, f"the ledger's migrations have {len(heads)} heads: merge them"
    return heads[0]


def _version_schema(conn: Connection) -> str | None:
    """PostgreSQL: the schema the tables live in (the first of search_path), for alembic_version too."""
    if conn.dialect.name != "postgresql":
        return None
    schema = conn.execute(text("SELECT current_schema()")).scalar()
    if schema is None:
        raise LedgerSchemaMissing(
            "the database connection has no current schema: its search_path names none that exists and that "
            "this role may use (USAGE, which `accord ledger init` grants the application role); check the "
            "options of ACCORD_LEDGER_URL / ACCORD_LEDGER_OWNER_URL"
        )
    return str(schema)


def configure_context(context: Any, conn: Connection) -> None:
    """Configure an Alembic context (env.py's, or ours) on ``conn``: version table beside the tables."""
    context.configure(
        connection=conn,
        target_metadata=None,
        version_table=VERSION_TABLE,
        version_table_schema=_version_schema(conn),
        transactional_ddl=conn.dialect.name == "postgresql",
    )


def _current(conn: Connection) -> str | None:
    return _context(conn).get_current_revision()


def _context(conn: Connection) -> Any:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(
        conn, opts={"version_table": VERSION_TABLE, "version_table_schema": _version_schema(conn)}
    )


def _run_upgrade(conn: Connection) -> None:
    """What ``alembic upgrade head`` does through env.py, on the cached revisions (no re-reading per database)."""
    from alembic.runtime.environment import EnvironmentContext

    script = _script()
    with EnvironmentContext(
        _config(conn), script, fn=lambda rev, _ctx: script._upgrade_revs("head", rev), destination_rev="head"
    ) as env:
        configure_context(env, conn)
        with env.begin_transaction():
            env.run_migrations()


def _known(revision: str | None) -> bool:
    if revision is None:
        return True
    try:
        return _script().get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several kinds for a revision it has never seen
        return False


def schema_state(conn: Connection) -> SchemaState:
    """The database's revision against the code's (reads alembic_version; creates nothing)."""
    current = _current(conn)
    return SchemaState(current, head(), _known(current))


def _table_names(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names(schema=_version_schema(conn)))


def _pre_alembic(conn: Connection, tables: set[str]) -> bool:
    """True for 0.1.0's tables without alembic_version; refuses a database that is neither that nor empty.

    1. No table of ours: a new database (False: upgrade from nothing).
    2. ledger_entries from before entries carried every hashed column: refused
       (require_current_columns says why and what to do).
    3. Every 0.1.0 table with every column: True (stamp 0001). Anything else is refused,
       naming what is missing, rather than guessed at.
    """
    ours = tables & FIRST_RELEASE_TABLES.keys()
    if not ours:  # 1.
        return False
    if "ledger_entries" in ours:  # 2.
        require_current_columns(conn)
    missing_tables = sorted(FIRST_RELEASE_TABLES.keys() - ours)  # 3.
    inspector = inspect(conn)
    schema = _version_schema(conn)
    missing_columns = sorted(
        f"{t}.{c}"
        for t in ours
        for c in FIRST_RELEASE_TABLES[t] - {col["name"] for col in inspector.get_columns(t, schema=schema)}
    )
    if missing_tables or missing_columns:
        raise LedgerSchemaMissing(
            "the database has some of Accord's tables but no alembic_version, and is not Accord 0.1.0's schema "
            f"(missing: {', '.join(missing_tables + missing_columns)}); it cannot be upgraded: restore it from "
            "a backup made by a released Accord, or start a new database"
        )
    return True


def upgrade(engine: Engine) -> SchemaState:
    """``alembic upgrade head``, as the connected role (the owner); returns where the database was. Idempotent.

    1. One transaction (PostgreSQL's DDL is transactional: all of it or none), holding
       the ledger's writer lock, so two inits, or an init and a writer, do not interleave.
    2. A database made before migrations is checked against 0.1.0's schema and stamped
       at 0001.
    3. Upgrade to head.
    """
    with schema_transaction(engine) as conn:  # 1.
        before = schema_state(conn)
        if not before.known:
            raise _ahead(before, engine)
        if before.current is None and _pre_alembic(conn, _table_names(conn)):  # 2.
            _context(conn).stamp(_script(), FIRST_REVISION)
        if _current(conn) != before.head:  # 3.
            _run_upgrade(conn)
    return before


@contextmanager
def schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for changing the schema, holding the ledger's writer lock (PostgreSQL) or SQLite's.

    So two inits, or an init and a writer, take turns (SQLite: two processes upgrading one demo file).
    """
    if engine.dialect.name == "sqlite":
        with sqlite_immediate(engine) as conn:
            yield conn
        return
    with engine.connect() as conn, conn.begin():
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        yield conn


def _where(engine: Engine) -> str:
    return where(engine)


def _ahead(state: SchemaState, engine: Engine) -> LedgerSchemaNotCurrent:
    return LedgerSchemaNotCurrent(
        f"the ledger database {_where(engine)} is at schema revision {state.current}, which this Accord does not "
        f"know (its newest is {state.head}): a newer Accord upgraded it; run that version (migrations never go back)"
    )


def require_head(engine: Engine) -> SchemaState:
    """Refuse (LedgerSchemaNotCurrent) a database not at this code's head; for the bus and readers. Creates nothing.

    A database with none of the bus's tables is not behind, it has no ledger: LedgerSchemaMissing, saying so.
    """
    try:
        with engine.connect() as conn:
            state = schema_state(conn)
            empty = state.current is None and not _table_names(conn) & FIRST_RELEASE_TABLES.keys()
    except DBAPIError as exc:
        # By SQLSTATE, not the server's words: they change with its lc_messages.
        if getattr(exc.orig, "sqlstate", None) != INSUFFICIENT_PRIVILEGE:
            raise
        raise LedgerSchemaNotCurrent(
            f"the role {engine.url.username!r} may not read {VERSION_TABLE} in {_where(engine)}; run "
            "`accord ledger init` as the owner role (ACCORD_LEDGER_OWNER_URL): it grants the application role"
        ) from None
    if state.at_head:
        return state
    if not state.known:
        raise _ahead(state, engine)
    owner = "as the owner role (ACCORD_LEDGER_OWNER_URL)" if engine.dialect.name == "postgresql" else ""
    if empty:
        raise LedgerSchemaMissing(f"no ledger here ({_where(engine)}): run `accord ledger init` {owner}".rstrip())
    was = "predates migrations (no alembic_version)" if state.current is None else f"is at revision {state.current}"
    raise LedgerSchemaNotCurrent(
        f"the ledger database {_where(engine)} {was} and this Accord needs {state.head}: back it up, then run "
        f"`accord ledger init` {owner}".rstrip()
    )
