"""The ledger and consent database: one engine, schema created on first use."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine

from accord.settings import Settings
from accord.cursors import init_cursors
from consent.store import init_consent
from ledger import init_ledger


def engine_for(settings: Settings) -> Engine:
    url = settings.resolved_ledger_url
    if url.startswith("sqlite"):
        settings.state_dir.mkdir(parents=True, exist_ok=True)
    # hide_parameters: a database error must never print a record's values (I6).
    return create_engine(url, pool_pre_ping=True, hide_parameters=True)


def init_database(engine: Engine) -> None:
    init_ledger(engine)
    init_consent(engine)
    init_cursors(engine)
