"""Shared fixtures: a fresh PostgreSQL schema per test, one embedded broker per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from tests.ports import free_port

TEST_DATABASE_URL = os.environ.get("ACCORD_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def fresh_schema() -> Iterator[tuple[Engine, str]]:
    """An engine whose search_path is a new schema, and a URL reaching the same schema.

    Tests share one PostgreSQL server and are isolated by schema; the URL form
    lets a subprocess (the processor) write to the same schema.
    """
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = f"{TEST_DATABASE_URL}?options={quote(f'-csearch_path={schema}')}"
    engine = create_engine(url)
    try:
        yield engine, url
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class RoleDatabase:
    """A fresh schema owned by a fresh OWNER role, and a fresh APP role, as in production.

    ``owner`` runs `accord ledger init` (setup_database); ``app`` is what the bus
    connects as (SELECT and INSERT only); ``admin`` is the superuser, for tests
    that play an attacker or clean up.
    """

    schema: str
    owner_role: str
    app_role: str
    owner_url: str
    app_url: str
    owner: Engine
    app: Engine
    admin: Engine


def _schema_url(schema: str, user: str | None = None) -> str:
    url = make_url(TEST_DATABASE_URL)
    if user is not None:
        url = url.set(username=user, password=None)
    return f"{url.render_as_string(hide_password=False)}?options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_role_database(setup: bool = True) -> Iterator[RoleDatabase]:
    """A schema plus owner and app roles with unique names, all dropped afterwards.

    With ``setup`` the tables are created as the owner and granted to the app
    role, as `accord ledger init` does.
    """
    from accord.provision import setup_database

    tag = uuid.uuid4().hex[:12]
    schema, owner_role, app_role = f"t_{tag}", f"accord_owner_{tag}", f"accord_app_{tag}"
    admin = create_engine(
        TEST_DATABASE_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )  # outlives a database restart
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{owner_role}" LOGIN'))
        conn.execute(text(f'CREATE ROLE "{app_role}" LOGIN'))
        conn.execute(text(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{owner_role}"'))
    db = RoleDatabase(
        schema,
        owner_role,
        app_role,
        _schema_url(schema, owner_role),
        _schema_url(schema, app_role),
        create_engine(_schema_url(schema, owner_role)),
        create_engine(_schema_url(schema, app_role)),
        create_engine(_schema_url(schema)),
    )
    try:
        if setup:
            setup_database(db.owner, app_role)
        yield db
    finally:
        for engine in (db.owner, db.app, db.admin):
            engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            for role in (owner_role, app_role):
                conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
                conn.execute(text(f'DROP ROLE "{role}"'))
        admin.dispose()


@pytest.fixture
def role_db() -> Iterator[RoleDatabase]:
    with fresh_role_database() as db:
        yield db


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with fresh_schema() as (engine, _url):
        yield engine


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Tansu broker for the whole session, on a free port."""
    from accord.dev import devstack
    from bus.settings import Settings

    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", state_dir=tmp_path_factory.mktemp("broker"))
    devstack.up(settings)
    try:
        yield settings.bootstrap_servers
    finally:
        devstack.down(settings)
