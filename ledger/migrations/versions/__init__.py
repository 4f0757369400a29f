"""Alembic revisions of the ledger database, in order (0001 is Accord 0.1.0's schema)."""
