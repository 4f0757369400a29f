"""A scratch PostgreSQL ledger set up as production sets it up: an OWNER role and an APP role.

The processor refuses to run as the tables' owner or a superuser (accord/database.py,
require_app_role), so a benchmark on PostgreSQL must do what `accord ledger init` does
and what tests/conftest.py's ``fresh_role_database`` does for the tests:

1. as the superuser, create an owner role, an app role and a schema the owner owns;
2. as the owner, create the tables and grant the app role SELECT and INSERT
   (``setup_database``);
3. hand out the app role's URL (search_path set to the schema) for the processor;
4. afterwards drop the schema and both roles.

Each benchmark run gets its own, so no run reads another's ledger.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from accord.provision import setup_database

ADMIN_URL = os.environ.get(
    "ACCORD_BENCH_DATABASE_URL",
    os.environ.get("ACCORD_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
)


@dataclass
class RoleDatabase:
    schema: str
    owner_role: str
    app_role: str
    app_url: str  # what the processor connects as (ACCORD_LEDGER_URL)
    owner_url: str  # the tables' owner, for a bench that makes tables of its own beside the ledger
    admin: Engine  # superuser, search_path at the schema: the bench reads results through it


def schema_url(schema: str, user: str | None = None, base: str = ADMIN_URL) -> str:
    url = make_url(base)
    if user is not None:
        url = url.set(username=user, password=None)
    return f"{url.render_as_string(hide_password=False)}?options={quote(f'-csearch_path={schema}')}"


@contextmanager
def role_database(tag: str | None = None, admin_url: str = ADMIN_URL) -> Iterator[RoleDatabase]:
    tag = tag or uuid.uuid4().hex[:12]
    schema, owner_role, app_role = f"bench_{tag}", f"accord_owner_bench_{tag}", f"accord_app_bench_{tag}"
    root = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    # 1.
    with root.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{owner_role}" LOGIN'))
        conn.execute(text(f'CREATE ROLE "{app_role}" LOGIN'))
        conn.execute(text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{owner_role}"'))
    owner = create_engine(schema_url(schema, owner_role, admin_url))
    admin = create_engine(schema_url(schema, base=admin_url))
    try:
        # 2.
        setup_database(owner, app_role)
        owner.dispose()
        # 3.
        yield RoleDatabase(
            schema,
            owner_role,
            app_role,
            schema_url(schema, app_role, admin_url),
            schema_url(schema, owner_role, admin_url),
            admin,
        )
    finally:
        # 4.
        owner.dispose()
        admin.dispose()
        with root.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            for role in (owner_role, app_role):
                conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
                conn.execute(text(f'DROP ROLE "{role}"'))
        root.dispose()


@contextmanager
def scratch_schema() -> Iterator[Engine]:
    """A plain schema for the I/O floor's COPY (no roles needed: nothing there is guarded)."""
    schema = f"bench_floor_{uuid.uuid4().hex[:10]}"
    root = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with root.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = create_engine(schema_url(schema))
    try:
        yield engine
    finally:
        engine.dispose()
        with root.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        root.dispose()
