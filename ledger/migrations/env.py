"""Alembic's environment for the ledger database: the owner's connection, the version table beside the tables.

Accord runs it programmatically (``accord ledger init``, ledger.migrations.upgrade), handing
over a connection already in a transaction in ``config.attributes["connection"]``; run by
the ``alembic`` command instead, it connects as ACCORD_LEDGER_OWNER_URL (else
ACCORD_LEDGER_URL), as init does. alembic_version lives in the connection's current
schema, so each schema (a test's, a tenant's) has its own.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ledger.migrations import configure_context


def _run(conn: Connection) -> None:
    configure_context(context, conn)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from bus.database import owner_engine_for
    from bus.settings import Settings

    engine = owner_engine_for(Settings())
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()
