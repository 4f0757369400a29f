"""consent_records append-only: the guards the ledger has, on the consent history.

The application role could never change a consent record (it lacks UPDATE and DELETE),
but the owner could, by mistake as easily as on purpose: a consent record deleted
silently undid a citizen's opt-out, and every ledger entry names the consent version it
was decided with. The same triggers as ledger_entries' (revision 0001), always enabled.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

# Written out, not taken from ledger/guard.py: a revision runs as it was written.
_PG_GUARDS = (
    """
    CREATE OR REPLACE FUNCTION consent_records_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'consent_records is append-only: % refused', TG_OP;
    END
    $$
    """,
    """
    CREATE TRIGGER consent_records_no_update_delete
    BEFORE UPDATE OR DELETE ON consent_records
    FOR EACH ROW EXECUTE FUNCTION consent_records_refuse_change()
    """,
    """
    CREATE TRIGGER consent_records_no_truncate
    BEFORE TRUNCATE ON consent_records
    FOR EACH STATEMENT EXECUTE FUNCTION consent_records_refuse_change()
    """,
    "ALTER TABLE consent_records ENABLE ALWAYS TRIGGER consent_records_no_update_delete",
    "ALTER TABLE consent_records ENABLE ALWAYS TRIGGER consent_records_no_truncate",
)
_SQLITE_GUARDS = tuple(
    f"""
    CREATE TRIGGER consent_records_no_{op_.lower()} BEFORE {op_} ON consent_records
    BEGIN
        SELECT RAISE(ABORT, 'consent_records is append-only: {op_} refused');
    END
    """
    for op_ in ("UPDATE", "DELETE")
)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    for statement in _PG_GUARDS if dialect == "postgresql" else _SQLITE_GUARDS:
        op.execute(sa.text(statement))  # text(): psycopg would read the '%' as a placeholder


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS consent_records_no_update_delete ON consent_records")
        op.execute("DROP TRIGGER IF EXISTS consent_records_no_truncate ON consent_records")
        op.execute("DROP FUNCTION IF EXISTS consent_records_refuse_change()")
    else:
        op.execute("DROP TRIGGER IF EXISTS consent_records_no_update")
        op.execute("DROP TRIGGER IF EXISTS consent_records_no_delete")
