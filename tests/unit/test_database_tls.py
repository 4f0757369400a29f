"""ACCORD_DATABASE_SSL*: libpq's TLS keywords reach every PostgreSQL connection Accord opens (no database).

Engines are built but never connected: what is checked is the URL and connect
arguments they would connect with. tests/integration/test_secured_clients.py connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accord.processor.control_lease import AdvisoryLease, lease_for
from bus.connection_guard import database_tls, psycopg_connect_args
from bus.database import engine_for, owner_engine_for
from bus.settings import Settings

APP = "postgresql+psycopg://accord_app@db.example:5432/accord?options=-csearch_path%3Dledger"
OWNER = "postgresql+psycopg://accord_owner@db.example:5432/accord"
TLS = {
    "database_sslmode": "verify-full",
    "database_sslrootcert": "/etc/accord/db-ca.pem",
    "database_sslcert": "/etc/accord/client.pem",
    "database_sslkey": "/etc/accord/client.key",
}
EXPECTED = {
    "sslmode": "verify-full",
    "sslrootcert": "/etc/accord/db-ca.pem",
    "sslcert": "/etc/accord/client.pem",
    "sslkey": "/etc/accord/client.key",
}


def tls(**more: Any) -> Settings:
    """Settings with the four TLS settings (and ``more``)."""
    return Settings.model_validate({**TLS, **more})


def test_the_four_settings_are_libpqs_keywords_and_empty_means_unset() -> None:
    assert database_tls(tls()) == EXPECTED
    assert database_tls(Settings()) == {}
    assert database_tls(Settings(database_sslmode="require", database_sslrootcert="  ")) == {"sslmode": "require"}


def test_psycopg_connect_args_carry_tls_with_settings_and_the_timeouts_always() -> None:
    args = psycopg_connect_args(10.0, tls())
    assert {k: args[k] for k in EXPECTED} == EXPECTED
    assert args["connect_timeout"] == 10
    assert not set(EXPECTED) & set(psycopg_connect_args(10.0))


def test_the_app_engine_connects_with_tls_and_keeps_the_urls_own_options() -> None:
    engine = engine_for(tls(ledger_url=APP))
    try:
        query = dict(engine.url.query)
        assert {k: query[k] for k in EXPECTED} == EXPECTED
        assert query["options"] == "-csearch_path=ledger"
        _args, kwargs = engine.dialect.create_connect_args(engine.url)
        assert {k: kwargs[k] for k in EXPECTED} == EXPECTED
    finally:
        engine.dispose()


def test_a_setting_replaces_the_urls_own_sslmode() -> None:
    engine = engine_for(Settings(ledger_url=APP + "&sslmode=prefer", database_sslmode="verify-full"))
    try:
        assert engine.url.query["sslmode"] == "verify-full"
    finally:
        engine.dispose()


def test_the_owner_engine_connects_with_tls_too() -> None:
    engine = owner_engine_for(tls(ledger_url=APP, ledger_owner_url=OWNER))
    try:
        assert engine.url.username == "accord_owner"
        assert {k: engine.url.query[k] for k in EXPECTED} == EXPECTED
    finally:
        engine.dispose()


def test_the_control_plane_lease_opens_its_session_with_tls() -> None:
    engine = engine_for(tls(ledger_url=APP))
    try:
        lease = lease_for(engine, psycopg_connect_args(10.0))
        assert isinstance(lease, AdvisoryLease)
        for key, value in EXPECTED.items():
            assert f"{key}={value.replace('/', '%2F')}" in lease.conninfo, lease.conninfo
    finally:
        engine.dispose()


def test_sqlite_is_left_alone(tmp_path: Path) -> None:
    engine = engine_for(tls(state_dir=tmp_path))
    try:
        assert engine.dialect.name == "sqlite" and not dict(engine.url.query)
    finally:
        engine.dispose()
