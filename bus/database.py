"""The database engine: one way to connect, one way to describe a failure.

Every part of Accord that talks to the ledger and consent database makes its engine
here: a connect timeout and TCP keepalives (``bus.connection_guard``), and
``hide_parameters`` so that a database error never prints a record's values (I6).
Creating the tables and checking the roles is ``accord.provision``'s work.

TLS (``ACCORD_DATABASE_SSL*``, docs/security.md) goes into a PostgreSQL engine's URL as
libpq keywords, a setting replacing the URL's own: whatever connects from that URL (the
pool, and the processor's control-plane lease, which opens its own session from
``engine.url``) uses the same TLS.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import URL, Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from bus.connection_guard import database_tls, psycopg_connect_args
from bus.settings import Settings

__all__ = [
    "app_role_of",
    "describe_database_error",
    "engine_for",
    "owner_engine_for",
    "shown_url",
    "sqlite_path",
    "where",
    "with_tls",
]


def with_tls(url: str, settings: Settings) -> str | URL:
    """``url`` with the database TLS settings as libpq keywords, for a PostgreSQL URL; any other unchanged."""
    tls = database_tls(settings)
    if not tls or not url.startswith("postgresql"):
        return url
    return make_url(url).update_query_dict(tls)


def _engine(url: str, settings: Settings) -> Engine:
    # Connect timeout and TCP keepalives notice a dead server within seconds
    # (bus/connection_guard.py); the processor adds a statement timeout and a watchdog.
    connect_args = psycopg_connect_args(settings.database_timeout_s) if "+psycopg" in url.split("://", 1)[0] else {}
    # hide_parameters: a database error must never print a record's values (I6).
    return create_engine(with_tls(url, settings), pool_pre_ping=True, hide_parameters=True, connect_args=connect_args)


def engine_for(settings: Settings) -> Engine:
    url = settings.resolved_ledger_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    return _engine(url, settings)


def owner_engine_for(settings: Settings) -> Engine:
    """The owner's engine for `accord ledger init`; the app URL when no owner URL is set."""
    if not settings.ledger_owner_url:
        return engine_for(settings)
    return _engine(settings.ledger_owner_url, settings)


def app_role_of(settings: Settings) -> str | None:
    """The application role: the setting, else the user of ledger_url (None on SQLite)."""
    if settings.ledger_app_role:
        return settings.ledger_app_role
    url = settings.resolved_ledger_url
    if url.startswith("sqlite"):
        return None
    return make_url(url).username


# Query parameters of a database URL that are safe to print; any other (password=,
# sslpassword=, a key a driver adds later) is shown as *** so no secret reaches a log line.
_SHOWN_QUERY = frozenset(
    {"sslmode", "sslrootcert", "sslcert", "sslkey", "options", "application_name", "connect_timeout", "host", "port"}
)


def shown_url(url: str | URL) -> str:
    """A database URL as a person may see it: no password, in the userinfo or the query."""
    parsed = make_url(url) if isinstance(url, str) else url
    query = {k: (v if k in _SHOWN_QUERY else "***") for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def where(engine: Engine) -> str:
    """The database, as a person can find it: the URL without its password."""
    return shown_url(engine.url)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def describe_database_error(exc: DBAPIError, url: str) -> str:
    """One line for a database error: which database, what went wrong, what to do.

    Only the first line of the driver's message is used, and for data and
    integrity errors not even that (PostgreSQL may quote the offending value
    there); the statement and its parameters never appear (I6).
    """
    path = sqlite_path(url)
    where = str(path) if path is not None else shown_url(url)
    orig = exc.orig
    text = str(orig) if orig is not None else ""
    first = " ".join(text.splitlines()[0].split()) if text.strip() else type(orig or exc).__name__
    first = first.removeprefix("connection failed: ")
    if isinstance(exc, DataError | IntegrityError):
        sqlstate = getattr(getattr(orig, "diag", None), "sqlstate", None) or getattr(orig, "sqlstate", None)
        code = f", SQLSTATE {sqlstate}" if sqlstate else ""
        return f"the database {where} refused a value ({type(orig or exc).__name__}{code})"
    if path is not None:
        return f"the SQLite ledger {where} failed: {first}; check ACCORD_STATE_DIR and its permissions"
    if isinstance(exc, OperationalError) and "FATAL:" in first:  # the server answered, and refused
        reason = first.split("FATAL:", 1)[1].strip()
        return f"cannot open the database {where}: {reason}; check ACCORD_LEDGER_URL"
    if isinstance(exc, OperationalError):
        return (
            f"could not reach the database {where} ({first}); check that PostgreSQL is running "
            "and that ACCORD_LEDGER_URL points at it"
        )
    return f"the database {where} refused: {first}"
