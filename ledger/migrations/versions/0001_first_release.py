"""The schema of Accord 0.1.0, the first release: every table, index and guard it made.

Written out as it stood then (``git show d09d2d2:ledger/tables.py`` and its neighbours);
later changes are later revisions, never edits here, because databases made by 0.1.0 are
stamped at this revision without running it.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The append-only guards as 0.1.0 installed them (ledger/guard.py then). Unqualified
# names: they land in the first schema of search_path, next to the table.
_PG_GUARDS = (
    """
    CREATE OR REPLACE FUNCTION ledger_entries_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP;
    END
    $$
    """,
    """
    CREATE TRIGGER ledger_entries_no_update_delete
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_refuse_change()
    """,
    """
    CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_refuse_change()
    """,
    "ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_no_update_delete",
    "ALTER TABLE ledger_entries ENABLE ALWAYS TRIGGER ledger_entries_no_truncate",
)
_SQLITE_GUARDS = tuple(
    f"""
    CREATE TRIGGER {name} BEFORE {op_} ON ledger_entries
    BEGIN
        SELECT RAISE(ABORT, 'ledger_entries is append-only: {op_} refused');
    END
    """
    for name, op_ in (("ledger_entries_no_update", "UPDATE"), ("ledger_entries_no_delete", "DELETE"))
)


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("disclosure_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("event_type", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("recipient", sa.String(), nullable=False),
        sa.Column("agreement_id", sa.String(), nullable=False),
        sa.Column("agreement_version", sa.Integer(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("legal_basis", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("fields", sa.Text(), nullable=False),
        sa.Column("consent_mode", sa.String(), nullable=False),
        sa.Column("consent_version", sa.BigInteger(), nullable=False),
        sa.Column("subject_key", sa.String(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("refers_to", sa.String(64), nullable=True),
        sa.Column("event_digest", sa.String(64), nullable=False),
        sa.Column("subjects", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("entry_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("seq", name="ledger_entries_pkey"),
        sa.UniqueConstraint("disclosure_id", name="ledger_entries_disclosure_id_key"),
    )
    op.create_index("ix_ledger_entries_event_id", "ledger_entries", ["event_id"])
    op.create_index("ix_ledger_entries_subject_key", "ledger_entries", ["subject_key"])
    op.create_index("ix_ledger_entries_refers_to", "ledger_entries", ["refers_to"], postgresql_using="hash")
    op.create_table(
        "ledger_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("frontier", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name="ledger_checkpoints_pkey"),
    )
    op.create_table(
        "ledger_subject_refs",
        sa.Column("subject_key", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("subject_key", "seq", name="ledger_subject_refs_pkey"),
    )
    op.create_table(
        "ledger_tiles",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("tile_index", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("width", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("hashes", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("level", "tile_index", "width", name="ledger_tiles_pkey"),
    )
    op.create_table(
        "ledger_cosignatures",
        sa.Column("tree_size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("cosigner", sa.String(255), nullable=False),
        sa.Column("key_id", sa.String(8), nullable=False),
        sa.Column("vkey", sa.Text(), nullable=False),
        sa.Column("signature_line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tree_size"], ["ledger_checkpoints.tree_size"], name="ledger_cosignatures_tree_size_fkey"
        ),
        sa.PrimaryKeyConstraint("tree_size", "cosigner", "key_id", name="ledger_cosignatures_pkey"),
    )
    op.create_table(
        "consent_records",
        # BIGSERIAL on PostgreSQL (consent_records_id_seq, granted to the app role); SQLite's rowid.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subject_key", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=True),
        sa.Column("recipient", sa.String(64), nullable=True),
        sa.Column("recipient_class", sa.String(64), nullable=True),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("collected_by", sa.String(128), nullable=False),
        sa.Column("method", sa.String(64), nullable=True),
        sa.Column("evidence_ref", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("id", name="consent_records_pkey"),
    )
    op.create_index("ix_consent_records_subject_key", "consent_records", ["subject_key"])
    op.create_table(
        "processor_cursors",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="processor_cursors_pkey"),
    )
    dialect = op.get_bind().dialect.name
    for statement in _PG_GUARDS if dialect == "postgresql" else _SQLITE_GUARDS:
        op.execute(sa.text(statement))  # text(): psycopg would read the '%' as a placeholder


def downgrade() -> None:
    raise NotImplementedError("the first schema holds the ledger: no migration drops it")
