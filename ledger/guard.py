"""Database-side guards making a table append-only: the ledger, and the consent history.

Triggers alone are not enough (a table owner can disable them): in production the
application's role must not own these tables and must lack UPDATE, DELETE and TRUNCATE
on them. The triggers are ``ENABLE ALWAYS`` so that ``session_replication_role =
replica`` does not silence them. They stop a careless ``DELETE`` by the owner: a consent
record deleted would silently undo a citizen's opt-out, and each ledger entry names the
consent version it was decided with.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

TABLE = "ledger_entries"
APPEND_ONLY = (TABLE, "consent_records")  # every table these guards protect, each by revisions 0001 and 0004


def pg_statements(table: str) -> tuple[str, ...]:
    """PostgreSQL: a function refusing the change, row and TRUNCATE triggers, always enabled.

    Unqualified names: the function and triggers land in the first schema of search_path,
    next to the table.
    """
    function, row, truncate = f"{table}_refuse_change", f"{table}_no_update_delete", f"{table}_no_truncate"
    # The function's text as revisions 0001 and 0004 wrote it, to the space: the catalog keeps it.
    body = f"\n    BEGIN\n        RAISE EXCEPTION '{table} is append-only: % refused', TG_OP;\n    END\n    "
    return (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $${body}$$",
        f"DROP TRIGGER IF EXISTS {row} ON {table}",
        f"""
        CREATE TRIGGER {row}
        BEFORE UPDATE OR DELETE ON {table}
        FOR EACH ROW EXECUTE FUNCTION {function}()
        """,
        f"DROP TRIGGER IF EXISTS {truncate} ON {table}",
        f"""
        CREATE TRIGGER {truncate}
        BEFORE TRUNCATE ON {table}
        FOR EACH STATEMENT EXECUTE FUNCTION {function}()
        """,
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {row}",
        f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {truncate}",
    )


def sqlite_statements(table: str) -> tuple[str, ...]:
    """SQLite has no TRUNCATE; a bare DELETE fires the row trigger (triggers disable the truncate optimisation)."""
    return tuple(
        f"""
        CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table}
        BEGIN
            SELECT RAISE(ABORT, '{table} is append-only: {op} refused');
        END
        """
        for op in ("UPDATE", "DELETE")
    )


def install_guards(conn: Connection, table: str = TABLE) -> None:
    """Install (or reinstall) the append-only triggers on ``table``. Idempotent.

    Runs inside the caller's transaction; the table must already exist.
    """
    dialect = conn.dialect.name
    if dialect == "postgresql":
        statements = pg_statements(table)
    elif dialect == "sqlite":
        statements = sqlite_statements(table)
    else:
        raise NotImplementedError(f"no append-only guards for dialect {dialect!r}")
    for statement in statements:
        conn.execute(text(statement))  # text(): psycopg would read the '%' as a placeholder
