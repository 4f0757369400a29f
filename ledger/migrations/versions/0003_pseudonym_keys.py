"""pseudonym_keys: which pseudonym key the processors' pseudonyms are made with.

A processor started with another ACCORD_PSEUDONYM_KEY than the one in force would give
partners other pseudonyms for the same people, also when it delivers again what the
ledger recorded (I8). The table holds a check value per key taken into use, never a key
(ledger/pseudonym_keys.py). Created empty: the first processor start records its key.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "pseudonym_keys",
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("check_value", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("recorded_at", "check_value"),
    )


def downgrade() -> None:
    op.drop_table("pseudonym_keys")
