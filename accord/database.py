"""The ledger and consent database: one engine; the owner creates, the bus appends.

On PostgreSQL ``accord ledger init`` runs :func:`setup_database` as the OWNER
role (``ACCORD_LEDGER_OWNER_URL``): it creates the tables and grants the
application role only SELECT and INSERT on the append-only ones. The bus calls
:func:`require_app_role` at start and refuses to run as the owner, a superuser
or any role that could UPDATE, DELETE or TRUNCATE them (DESIGN: triggers alone
do not make a table append-only). SQLite is the demo's development-only store:
it has no roles, so tables are created on first use and no check is made.
"""

from __future__ import annotations

import structlog
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

from accord.cursors import CursorBase, init_cursors
from accord.settings import Settings
from consent.store import ConsentBase, init_consent
from ledger import LedgerBase, init_ledger
from ledger.roles import (
    LedgerRoleError,
    LedgerSchemaMissing,
    RoleCheck,
    TableGrant,
    check_app_role,
    grant_app_role,
    missing_tables,
)

__all__ = [
    "LedgerRoleError",
    "LedgerSchemaMissing",
    "app_grants",
    "app_role_of",
    "engine_for",
    "init_database",
    "open_database",
    "owner_engine_for",
    "require_app_role",
    "setup_database",
]

log = structlog.get_logger("accord.database")


def engine_for(settings: Settings) -> Engine:
    url = settings.resolved_ledger_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    # hide_parameters: a database error must never print a record's values (I6).
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def owner_engine_for(settings: Settings) -> Engine:
    """The owner's engine for `accord ledger init`; the app URL when no owner URL is set."""
    if not settings.ledger_owner_url:
        return engine_for(settings)
    return create_engine(settings.ledger_owner_url, pool_pre_ping=True, hide_parameters=True)


def app_role_of(settings: Settings) -> str | None:
    """The application role: the setting, else the user of ledger_url (None on SQLite)."""
    if settings.ledger_app_role:
        return settings.ledger_app_role
    url = settings.resolved_ledger_url
    if url.startswith("sqlite"):
        return None
    return make_url(url).username


def app_grants() -> list[TableGrant]:
    """Every table of the bus and what the application role may do on it.

    Ledger tables (entries, and any the ledger adds to its metadata) and the
    consent history are append-only: SELECT and INSERT. Cursors are positions
    that move, so they are updatable, but never deleted.
    """
    grants = [TableGrant(t.name) for t in LedgerBase.metadata.sorted_tables]
    grants.append(TableGrant("consent_records", sequences=("consent_records_id_seq",)))
    grants += [
        TableGrant(t.name, ("SELECT", "INSERT", "UPDATE"), append_only=False)
        for t in CursorBase.metadata.sorted_tables
    ]
    return grants


def _all_tables() -> list[str]:
    return [t.name for base in (LedgerBase, ConsentBase, CursorBase) for t in base.metadata.sorted_tables]


def init_database(engine: Engine) -> None:
    """Create every table (and the ledger's guards) as the connected role. Idempotent."""
    init_ledger(engine)
    init_consent(engine)
    init_cursors(engine)


def setup_database(owner: Engine, app_role: str | None) -> list[str]:
    """`accord ledger init`: create the tables as the owner and grant the app role; returns the grants run."""
    init_database(owner)
    if owner.dialect.name != "postgresql" or app_role is None:
        return []
    with owner.begin() as conn:
        return grant_app_role(conn, app_role, app_grants())


def open_database(engine: Engine) -> None:
    """For commands other than init: SQLite creates on first use; PostgreSQL must be set up."""
    if engine.dialect.name == "sqlite":
        init_database(engine)
        return
    missing = missing_tables(engine, _all_tables())
    if missing:
        raise LedgerSchemaMissing(
            f"tables missing: {', '.join(missing)}; run `accord ledger init` as the owner role "
            "(ACCORD_LEDGER_OWNER_URL) first"
        )


def require_app_role(engine: Engine) -> RoleCheck | None:
    """Refuse (LedgerRoleError) to run the bus as a role that could change the ledger.

    SQLite: creates the tables and warns that it is a development-only store.
    PostgreSQL: the tables must exist, and the role must be a plain app role.
    """
    if engine.dialect.name == "sqlite":
        init_database(engine)
        log.warning("sqlite_ledger_development_only", detail="no database roles: the ledger is not protected from its owner")
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
