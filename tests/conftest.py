"""Shared fixtures: a fresh PostgreSQL schema per test, one embedded broker per session."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, create_engine, text

TEST_DATABASE_URL = os.environ.get(
    "ACCORD_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


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


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    with fresh_schema() as (engine, _url):
        yield engine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One embedded Tansu broker for the whole session, on a free port."""
    from accord import devstack
    from accord.settings import Settings

    settings = Settings(
        bootstrap_servers=f"127.0.0.1:{_free_port()}", state_dir=tmp_path_factory.mktemp("broker")
    )
    devstack.up(settings)
    try:
        yield settings.bootstrap_servers
    finally:
        devstack.down(settings)
