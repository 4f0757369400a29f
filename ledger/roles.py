"""Role separation on PostgreSQL: the owner sets the tables up, the bus only appends.

Triggers alone do not make a table append-only: its owner (or a superuser) can
disable them, and a role with UPDATE, DELETE or TRUNCATE could rewrite history if
the triggers were ever off. So ``accord ledger init`` runs as an OWNER role that
creates the tables and grants the APPLICATION role only what appending needs, and
the bus checks at start that it runs as such a role and refuses otherwise.

SQLite (the demo store) has no roles: it is for development only, and none of
this applies there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, inspect, text

__all__ = [
    "LedgerRoleError",
    "LedgerSchemaMissing",
    "RoleCheck",
    "TableGrant",
    "check_app_role",
    "grant_app_role",
    "missing_tables",
    "quote_ident",
]


class LedgerRoleError(RuntimeError):
    """The bus is connected as a role that could change the ledger."""


class LedgerSchemaMissing(RuntimeError):
    """The tables the bus needs do not exist (``accord ledger init`` has not run)."""


@dataclass(frozen=True)
class TableGrant:
    """What the application role may do on one table.

    ``append_only`` tables are checked at start: the bus refuses to run with
    UPDATE, DELETE or TRUNCATE on them, or as their owner.
    """

    table: str
    privileges: tuple[str, ...] = ("SELECT", "INSERT")
    append_only: bool = True
    sequences: tuple[str, ...] = ()  # sequences INSERT needs (serial ids): USAGE only


@dataclass(frozen=True)
class RoleCheck:
    """What :func:`check_app_role` found (PostgreSQL), for messages and tests."""

    role: str
    superuser: bool
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, double-quoted (role names come from settings)."""
    return '"' + name.replace('"', '""') + '"'


def missing_tables(engine: Engine, tables: Iterable[str]) -> list[str]:
    """The tables (resolved through the connection's search_path) that do not exist."""
    names = list(tables)
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            return [t for t in names if conn.execute(text("SELECT to_regclass(:t)"), {"t": t}).scalar() is None]
        present = set(inspect(conn).get_table_names())
        return [t for t in names if t not in present]


def _current_user(conn: Connection) -> str:
    return conn.execute(text("SELECT current_user")).scalar_one()


def grant_app_role(conn: Connection, app_role: str, grants: Sequence[TableGrant]) -> list[str]:
    """REVOKE ALL, then GRANT exactly ``grants`` to ``app_role``; returns the statements run.

    Runs as the tables' owner inside the caller's transaction. PUBLIC loses its
    privileges on these tables too, so no other role inherits more than asked.
    The schema is made usable by the app role when the owner owns it (otherwise
    whoever owns the schema must grant USAGE).
    """
    if conn.dialect.name != "postgresql":
        raise NotImplementedError("roles exist on PostgreSQL only; SQLite is a development store")
    role = quote_ident(app_role)
    owner = _current_user(conn)
    if owner == app_role:
        raise LedgerRoleError(
            f"the application role {app_role!r} is the role running `accord ledger init`, so it would own "
            "the ledger tables; run init as a separate owner role (ACCORD_LEDGER_OWNER_URL)"
        )
    if conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": app_role}).first() is None:
        raise LedgerRoleError(
            f"the application role {app_role!r} does not exist; create it (LOGIN, no other rights) first"
        )
    done: list[str] = []

    def run(sql: str) -> None:
        conn.execute(text(sql))
        done.append(sql)

    schema_owner = conn.execute(
        text("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = current_schema()")
    ).scalar()
    if schema_owner == owner:
        run(f"GRANT USAGE ON SCHEMA {quote_ident(_current_schema(conn))} TO {role}")
    for g in grants:
        table = quote_ident(g.table)
        run(f"REVOKE ALL ON TABLE {table} FROM PUBLIC")
        run(f"REVOKE ALL ON TABLE {table} FROM {role}")
        run(f"GRANT {', '.join(g.privileges)} ON TABLE {table} TO {role}")
        for seq in g.sequences:
            run(f"REVOKE ALL ON SEQUENCE {quote_ident(seq)} FROM {role}")
            run(f"GRANT USAGE ON SEQUENCE {quote_ident(seq)} TO {role}")
    return done


def _current_schema(conn: Connection) -> str:
    return conn.execute(text("SELECT current_schema()")).scalar_one()


_TABLE_CHECK = text(
    """
    SELECT pg_get_userbyid(c.relowner) AS owner,
           pg_has_role(current_user, c.relowner, 'MEMBER') AS owns,
           has_any_column_privilege(c.oid, 'UPDATE') AS can_update,
           has_table_privilege(c.oid, 'DELETE') AS can_delete,
           has_table_privilege(c.oid, 'TRUNCATE') AS can_truncate
    FROM pg_class c WHERE c.oid = to_regclass(:t)
    """
)


def check_app_role(engine: Engine, grants: Sequence[TableGrant]) -> RoleCheck:
    """What makes the connected role unfit to run the bus (empty when fit).

    Unfit: a superuser; a role with CREATEROLE; the owner of (or a member of
    the owner of) an append-only table; any role holding UPDATE, DELETE or
    TRUNCATE on one.
    Raises LedgerSchemaMissing when a table does not exist.
    """
    with engine.connect() as conn:
        if conn.dialect.name != "postgresql":
            raise NotImplementedError("roles exist on PostgreSQL only")
        role = _current_user(conn)
        flags = conn.execute(text("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")).one()
        superuser = bool(flags.rolsuper)
        problems: list[str] = []
        if superuser:
            problems.append("it is a superuser (it can disable the append-only triggers and bypass every grant)")
        elif flags.rolcreaterole:
            problems.append("it has CREATEROLE (it could grant itself the owner's role)")
        missing: list[str] = []
        for g in grants:
            row = conn.execute(_TABLE_CHECK, {"t": g.table}).first()
            if row is None:
                missing.append(g.table)
                continue
            if not g.append_only:
                continue
            if row.owns and not superuser:
                problems.append(f"it owns {g.table} (owner {row.owner!r}), so it could disable its triggers")
            rights = [
                p
                for p, held in (("UPDATE", row.can_update), ("DELETE", row.can_delete), ("TRUNCATE", row.can_truncate))
                if held
            ]
            if rights and not superuser:
                problems.append(f"it holds {', '.join(rights)} on {g.table}")
        if missing:
            raise LedgerSchemaMissing(
                f"tables missing: {', '.join(missing)}; run `accord ledger init` as the owner role "
                "(ACCORD_LEDGER_OWNER_URL) first"
            )
    return RoleCheck(role, superuser, tuple(problems))
