"""Database-side guards making ledger_entries append-only.

Triggers alone are not enough (a table owner can disable them): in production the
application's role must not own the ledger tables and must lack UPDATE, DELETE and
TRUNCATE on them. The triggers are ``ENABLE ALWAYS`` so that
``session_replication_role = replica`` does not silence them.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

TABLE = "ledger_entries"
PG_FUNCTION = "ledger_entries_refuse_change"
PG_ROW_TRIGGER = "ledger_entries_no_update_delete"
PG_TRUNCATE_TRIGGER = "ledger_entries_no_truncate"
SQLITE_UPDATE_TRIGGER = "ledger_entries_no_update"
SQLITE_DELETE_TRIGGER = "ledger_entries_no_delete"

# Unqualified names: the function and triggers land in the first schema of search_path,
# next to the table.
_PG_STATEMENTS = (
    f"""
    CREATE OR REPLACE FUNCTION {PG_FUNCTION}() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'ledger_entries is append-only: % refused', TG_OP;
    END
    $$
    """,
    f"DROP TRIGGER IF EXISTS {PG_ROW_TRIGGER} ON {TABLE}",
    f"""
    CREATE TRIGGER {PG_ROW_TRIGGER}
    BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {PG_FUNCTION}()
    """,
    f"DROP TRIGGER IF EXISTS {PG_TRUNCATE_TRIGGER} ON {TABLE}",
    f"""
    CREATE TRIGGER {PG_TRUNCATE_TRIGGER}
    BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {PG_FUNCTION}()
    """,
    f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {PG_ROW_TRIGGER}",
    f"ALTER TABLE {TABLE} ENABLE ALWAYS TRIGGER {PG_TRUNCATE_TRIGGER}",
)

# SQLite has no TRUNCATE; a bare DELETE fires the row trigger (triggers disable the
# truncate optimisation).
_SQLITE_STATEMENTS = tuple(
    f"""
    CREATE TRIGGER IF NOT EXISTS {name} BEFORE {op} ON {TABLE}
    BEGIN
        SELECT RAISE(ABORT, 'ledger_entries is append-only: {op} refused');
    END
    """
    for name, op in ((SQLITE_UPDATE_TRIGGER, "UPDATE"), (SQLITE_DELETE_TRIGGER, "DELETE"))
)


def install_guards(conn: Connection) -> None:
    """Install (or reinstall) the append-only triggers on ledger_entries. Idempotent.

    Runs inside the caller's transaction; the table must already exist.
    """
    dialect = conn.dialect.name
    statements: tuple[str, ...]
    if dialect == "postgresql":
        statements = _PG_STATEMENTS
    elif dialect == "sqlite":
        statements = _SQLITE_STATEMENTS
    else:
        raise NotImplementedError(f"no ledger guards for dialect {dialect!r}")
    for statement in statements:
        conn.execute(text(statement))  # text(): psycopg would read the '%' as a placeholder
