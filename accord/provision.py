"""The bus's tables: the owner creates and migrates them, the app role only appends.

On PostgreSQL ``accord ledger init`` runs :func:`setup_database` as the OWNER
role (``ACCORD_LEDGER_OWNER_URL``): it upgrades the schema to the newest
revision (ledger.migrations, Alembic) and grants the application role only
SELECT and INSERT on the append-only tables (SELECT on alembic_version). The
bus calls :func:`require_app_role` at start and refuses a database that is not
at that revision, and to run as the owner, a superuser or any role that could
UPDATE, DELETE or TRUNCATE them (docs/architecture.md: triggers alone do not
make a table append-only); it never runs DDL there. SQLite is the demo's
development-only store: it has no roles, so the commands that write (``demo``,
``run``, ``consent``, ``ledger init``) upgrade it on first use and no role
check is made. Commands that only read (:func:`open_ledger`,
:func:`open_database`) never create or migrate anything: pointed at a ledger
that does not exist, or is behind, they refuse.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy import Connection, Engine, inspect, text

from bus.cursors import CursorBase
from bus.database import engine_for, sqlite_path, where
from bus.settings import Settings
from consent.store import ConsentBase
from ledger import LedgerBase, install_guards
from ledger.append import ADVISORY_LOCK_KEY
from ledger.migrations import VERSION_TABLE, LedgerSchemaNotCurrent, require_head, schema_transaction, upgrade
from ledger.roles import (
    LedgerRoleError,
    LedgerSchemaMissing,
    RoleCheck,
    TableGrant,
    check_app_role,
    grant_app_role,
    missing_tables,
    quote_ident,
)

__all__ = [
    "LedgerHistoryAtRisk",
    "LedgerRoleError",
    "LedgerSchemaMissing",
    "LedgerSchemaNotCurrent",
    "app_grants",
    "init_database",
    "open_database",
    "open_ledger",
    "require_app_role",
    "setup_database",
]

log = structlog.get_logger("accord.database")


class LedgerHistoryAtRisk(LedgerSchemaMissing):
    """A table was dropped from a migrated database and an empty one would lose or contradict history: restore it."""


def app_grants() -> list[TableGrant]:
    """Every table of the bus and what the application role may do on it.

    Ledger tables (entries, and any the ledger adds to its metadata) and the
    consent history are append-only: SELECT and INSERT. Cursors are positions
    that move, so they are updatable, but never deleted. alembic_version is read
    at start (require_head) and written by the owner alone.
    """
    grants = [TableGrant(t.name) for t in LedgerBase.metadata.sorted_tables]
    grants.append(TableGrant("consent_records", sequences=("consent_records_id_seq",)))
    grants += [
        TableGrant(t.name, ("SELECT", "INSERT", "UPDATE"), append_only=False) for t in CursorBase.metadata.sorted_tables
    ]
    grants.append(TableGrant(VERSION_TABLE, ("SELECT",)))
    return grants


def _all_tables() -> list[str]:
    return [t.name for base in (LedgerBase, ConsentBase, CursorBase) for t in base.metadata.sorted_tables]


def init_database(engine: Engine) -> None:
    """Upgrade the database to the newest revision as the connected role (every table and the ledger's guards). Idempotent.

    A table dropped since is made again only when that loses nothing (_repair_dropped); else LedgerHistoryAtRisk.
    """
    if upgrade(engine).current is not None:  # a new database has every table
        _repair_dropped(engine)


# Positions the sweeper keeps (bus.cursors): made again empty, it starts over, and each of its
# steps is idempotent (retractions are appended by their deterministic disclosure ids; a
# retraction notice or consent change is sent again with the same id).
_POSITIONS = "processor_cursors"
# The consent history: nothing else in the database says what it held, and an empty one
# would forget every opt-out (a disclosure where there was a refusal), so it is never made again.
_CONSENT = "consent_records"


def _repair_dropped(engine: Engine) -> None:
    """Make again a table dropped by hand from a database already at a revision, or refuse (LedgerHistoryAtRisk).

    The revisions ran once, so a table dropped since (an outage drill, a mistake) stays
    missing and the bus waits. An empty table in its place is safe only if its loss lost
    no history, which the database can tell only by what is left:

    1. Under the writer lock, in one transaction (a refusal creates nothing), find the
       bus's tables that are missing.
    2. processor_cursors alone: made again (the sweeper redoes its steps, idempotently).
    3. consent_records: refused, always (an empty history forgets every opt-out).
    4. A ledger table (entries, checkpoints, tiles, subject refs, cosignatures): refused
       if any table of the bus still there holds a row. Checkpoints, tiles, subject refs
       and cosignatures are signed or derived from entries: an empty chain beside them
       contradicts checkpoints already signed and published, and the processor would
       append from genesis under them; a cursor is a seq position in the lost chain
       (notices for the new entries at or below it would never be sent); consent records
       mean the bus was in use. With every table empty the database held no history
       that anything can show: at most the entries written since it was last swept (the
       sweeper records positions within seconds of the first entry) and before any
       checkpoint, which nothing in the database can bring back.
    5. Otherwise make the missing tables from the models (the same schema as the
       revisions: tests/integration/test_migrations.py compares them) and the guards.

    What to do when refused is to restore the database from its backup
    (docs/production.md, "Backing up the ledger"), then `accord ledger init` and
    `accord ledger verify`.
    """
    with schema_transaction(engine) as conn:  # 1.
        missing = _missing(conn, _all_tables())
        if not missing:
            return
        lost = [t for t in missing if t != _POSITIONS]
        if lost:  # 2.
            reasons = []
            if _CONSENT in lost:  # 3.
                reasons.append(f"{_CONSENT} held the consent history and an empty one would forget every opt-out")
            ledger = [t for t in lost if t != _CONSENT]
            holding = [t for t in _all_tables() if t not in missing and _has_rows(conn, t)]
            if holding and ledger:  # 4.
                reasons.append(
                    f"{', '.join(holding)} still hold rows, and an empty {', '.join(ledger)} beside them would "
                    "lose or contradict that history"
                )
            if reasons:
                raise LedgerHistoryAtRisk(_refusal(engine, missing, reasons))
        log.warning("recreating_dropped_tables", tables=missing)  # 5.
        for base in (LedgerBase, ConsentBase, CursorBase):
            base.metadata.create_all(conn, tables=[t for t in base.metadata.sorted_tables if t.name in missing])
        if "ledger_entries" in missing:
            install_guards(conn)


def _missing(conn: Connection, tables: list[str]) -> list[str]:
    """The tables that do not exist, as the connection resolves them (search_path on PostgreSQL)."""
    if conn.dialect.name == "postgresql":
        return [
            t for t in tables if conn.execute(text("SELECT to_regclass(:t)"), {"t": quote_ident(t)}).scalar() is None
        ]
    present = set(inspect(conn).get_table_names())
    return [t for t in tables if t not in present]


def _has_rows(conn: Connection, table: str) -> bool:
    return conn.execute(text(f"SELECT 1 FROM {quote_ident(table)} LIMIT 1")).first() is not None


def _refusal(engine: Engine, missing: list[str], reasons: list[str]) -> str:
    """The one line a refused repair says: what is missing, why it is not made again, how to restore."""
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    if path is not None:
        restore = f"restore {path} from its backup, then run `accord ledger init` and `accord ledger verify`"
    else:
        restore = (
            "restore the database from its backup as the owner (pg_restore, docs/production.md "
            '"Backing up the ledger"), then run `accord ledger init` and `accord ledger verify`'
        )
    return (
        f"the ledger database {where(engine)} has no {', '.join(missing)} (dropped since it was migrated), and "
        f"init will not make it again empty: {'; '.join(reasons)}; {restore}"
    )


def setup_database(owner: Engine, app_role: str | None) -> list[str]:
    """`accord ledger init`: upgrade the schema as the owner and grant the app role; returns the grants run.

    1. ``alembic upgrade head`` as the owner (a database made before migrations is
       recognised and stamped first: ledger.migrations.upgrade); a table dropped by hand
       since is made again only if that loses no history, else LedgerHistoryAtRisk names
       it and the restore (_repair_dropped).
    2. REVOKE, then GRANT the app role exactly app_grants(), every time: a revision may add a table.
    """
    if owner.dialect.name == "postgresql" and app_role is not None:
        with owner.connect() as conn:  # before any DDL: the app role must never own a table
            if conn.execute(text("SELECT current_user")).scalar_one() == app_role:
                raise LedgerRoleError(
                    f"the application role {app_role!r} is the role running `accord ledger init`, so it would own "
                    "the ledger tables; run init as a separate owner role (ACCORD_LEDGER_OWNER_URL)"
                )
    if upgrade(owner).current is not None:  # 1. (a new database has every table)
        _repair_dropped(owner)
    if owner.dialect.name != "postgresql" or app_role is None:
        return []
    with owner.begin() as conn:  # 2.
        # Under the writer lock, as the upgrade was: two inits granting at once fail ("tuple concurrently updated").
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        return grant_app_role(conn, app_role, app_grants())


def _refuse_missing_file(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise LedgerSchemaMissing(
            f"no ledger at {path}; check ACCORD_STATE_DIR (or ACCORD_LEDGER_URL), "
            "or run `accord ledger init` to make a new one"
        )


def open_ledger(settings: Settings) -> Engine:
    """The engine of a ledger that must already exist: for commands that read it.

    Never creates anything: a mistyped ACCORD_STATE_DIR must not give an empty
    ledger that then verifies "OK" and reports that nothing was shared. The
    SQLite file is checked before the engine is made (engine_for makes the
    state folder; connecting would make the file).
    """
    _refuse_missing_file(sqlite_path(settings.resolved_ledger_url))
    engine = engine_for(settings)
    open_database(engine)
    return engine


def open_database(engine: Engine) -> None:
    """Refuse a database without the bus's tables (LedgerSchemaMissing) or not at this code's revision
    (LedgerSchemaNotCurrent, naming what to run); creates and migrates nothing.

    For every command but those that write (``ledger init``, ``demo``, ``run``,
    ``consent``), which upgrade SQLite; on PostgreSQL only ``accord ledger init``
    does, as the owner.
    """
    path = sqlite_path(engine.url.render_as_string(hide_password=False))
    _refuse_missing_file(path)  # connecting would create it
    missing = missing_tables(engine, _all_tables())
    if not missing or not missing_tables(engine, [VERSION_TABLE]):
        # A database at an older revision lacks the tables later ones add: "run init", not "no ledger".
        require_head(engine)
    if not missing:
        return
    if engine.dialect.name == "sqlite":
        raise LedgerSchemaMissing(
            f"no ledger in {path} (tables missing: {', '.join(missing)}); run `accord ledger init` first"
        )
    raise LedgerSchemaMissing(
        f"no ledger in database {where(engine)} (tables missing: {', '.join(missing)}); run "
        "`accord ledger init` as the owner role (ACCORD_LEDGER_OWNER_URL) first"
    )


def require_app_role(engine: Engine) -> RoleCheck | None:
    """Refuse (LedgerRoleError) to run the bus as a role that could change the ledger.

    SQLite: upgrades it (creating it on first use) and warns that it is a development-only store.
    PostgreSQL: the tables must exist at this code's revision, and the role must be a plain app role.
    """
    if engine.dialect.name == "sqlite":
        upgrade(engine)
        log.warning(
            "sqlite_ledger_development_only", detail="no database roles: the ledger is not protected from its owner"
        )
        return None
    open_database(engine)
    check = check_app_role(engine, app_grants())
    if not check.ok:
        raise LedgerRoleError(
            f"refusing to run as database role {check.role!r}: " + "; ".join(check.problems) + ". "
            "The bus must connect (ACCORD_LEDGER_URL) as an application role that `accord ledger init` "
            "granted only SELECT and INSERT; keep the owner's URL in ACCORD_LEDGER_OWNER_URL for "
            "`accord ledger init` alone."
        )
    return check
