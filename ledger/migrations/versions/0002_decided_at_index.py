"""An index on ledger_entries.decided_at, for the dashboard's period queries.

Every count on /dashboard is over a period of decided_at (accord/web/flows.py); without
an index each one reads the whole table: on 200k entries the four counts of a 7-day
period took 141 to 235 ms, 9 to 15 ms with it (docs/ledger.md, "Migrations"). CREATE
INDEX blocks appends while it builds (0.1 s for 200k entries here), so upgrade with the
bus stopped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_ledger_entries_decided_at", "ledger_entries", ["decided_at"])


def downgrade() -> None:
    op.drop_index("ix_ledger_entries_decided_at", table_name="ledger_entries")
