"""compose/postgres/init-roles.sh on the real PostgreSQL: the roles it makes are the ones Accord needs.

The postgres image runs the script once, as the superuser, on an empty volume. Here it
runs the same way against the test server (psql over TCP instead of the socket), with a
database and roles of its own, and then Accord is run as compose runs it: ``accord ledger
init`` as the owner, the bus as the application role, which must pass the bus's own role
check and be unable to create a table or rewrite the ledger.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tests.conftest import TEST_DATABASE_URL

SCRIPT = Path(__file__).resolve().parents[2] / "compose" / "postgres" / "init-roles.sh"
# A password with every character that could break out of a quoted SQL literal.
AWKWARD_PASSWORD = 'it\'s a "pass"; DROP ROLE x; --'


@dataclass
class Made:
    db: str
    owner: str
    app: str

    def url(self, user: str) -> str:
        base = make_url(TEST_DATABASE_URL)
        return base.set(username=user, password=None, database=self.db).render_as_string(hide_password=False)


def _script_env(made: Made, **extra: str) -> dict[str, str]:
    server = make_url(TEST_DATABASE_URL)
    return {
        **os.environ,
        "PGHOST": server.host or "127.0.0.1",
        "PGPORT": str(server.port or 5432),
        "POSTGRES_USER": server.username or "postgres",
        "DB_NAME": made.db,
        "DB_OWNER": made.owner,
        "DB_APP": made.app,
        **extra,
    }


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def made() -> Iterator[Made]:
    tag = uuid.uuid4().hex[:10]
    m = Made(f"accord_compose_{tag}", f"accord_owner_{tag}", f"accord_app_{tag}")
    yield m
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{m.db}" WITH (FORCE)'))
        for role in (m.app, m.owner):
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def accord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_the_init_script_makes_an_owner_and_an_app_role_accord_accepts(made: Made, tmp_path: Path) -> None:
    created = _run_script(_script_env(made, OWNER_PASSWORD=AWKWARD_PASSWORD, APP_PASSWORD=AWKWARD_PASSWORD))
    assert created.returncode == 0, created.stderr

    admin = create_engine(TEST_DATABASE_URL)
    with admin.connect() as conn:
        roles = conn.execute(
            text(
                "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolpassword IS NOT NULL FROM pg_authid "
                "WHERE rolname IN (:o, :a) ORDER BY rolname"
            ),
            {"o": made.owner, "a": made.app},
        ).all()
        db_owner = conn.execute(
            text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :d"), {"d": made.db}
        ).scalar()
    admin.dispose()
    assert sorted(r[0] for r in roles) == sorted([made.owner, made.app])
    assert all(r[1:] == (False, False, False, True) for r in roles)  # plain roles, each with its password
    assert db_owner == made.owner

    env = {
        "ACCORD_LEDGER_OWNER_URL": made.url(made.owner),
        "ACCORD_LEDGER_URL": made.url(made.app),
        "ACCORD_LEDGER_APP_ROLE": made.app,
        "ACCORD_STATE_DIR": str(tmp_path),
    }
    init = accord("ledger", "init", env=env)
    assert init.returncode == 0, init.stderr
    assert f"tables owned by {made.owner!r}" in init.stdout

    from accord.provision import require_app_role

    app = create_engine(made.url(made.app))
    try:
        check = require_app_role(app)  # the processor's own check at start: refuses the owner, a superuser, ...
        assert check is not None and check.ok
        with app.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("CREATE TABLE not_allowed (x int)"))
        with app.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("UPDATE ledger_entries SET seq = seq"))
    finally:
        app.dispose()

    verify = accord("ledger", "verify", env={k: v for k, v in env.items() if k != "ACCORD_LEDGER_OWNER_URL"})
    assert verify.returncode == 0 and "ledger OK: 0 entries" in verify.stdout, verify.stderr


def test_the_init_script_refuses_to_run_without_the_passwords(made: Made) -> None:
    env = _script_env(made, APP_PASSWORD="x")
    env.pop("OWNER_PASSWORD", None)
    refused = _run_script(env)
    assert refused.returncode != 0 and "OWNER_PASSWORD" in refused.stderr
    admin = create_engine(TEST_DATABASE_URL)
    with admin.connect() as conn:
        assert conn.execute(text("SELECT 1 FROM pg_roles WHERE rolname = :o"), {"o": made.owner}).first() is None
    admin.dispose()
