"""What docs/production.md tells an operator to do, done on the real PostgreSQL.

1. Back up the ledger with pg_dump as the owner, restore it into a new database as the
   owner, and verify it: the same entries, the same checkpoints, the guards and grants
   back. A dump older than a checkpoint published since is caught by ``verify`` against
   that checkpoint, naming the entries the restore lacks.
2. A new checkpoint signing key: the ledger refuses to sign on from a checkpoint the old
   key signed, ``verify`` with the new public key reports the old checkpoints, and the old
   public key still verifies them. This is the page's "cannot rotate in place".
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, ProgrammingError

from ledger import append, entries, verify
from ledger.checkpoint import CheckpointRefused, latest_checkpoint, make_checkpoint, open_checkpoint
from ledger.note import NoteSigner
from tests.conftest import TEST_DATABASE_URL
from tests.integration.test_compose_postgres import Made, _run_script, _script_env, accord
from tests.integration.test_ledger import draft

ORIGIN = "accord.example/ledger"


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[Made, str]]:
    """A database made as compose makes it (init script, then `accord ledger init`), and a restore target's name."""
    tag = uuid.uuid4().hex[:10]
    made = Made(f"accord_prod_{tag}", f"accord_owner_{tag}", f"accord_app_{tag}")
    restored = f"accord_restored_{tag}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    try:
        created = _run_script(_script_env(made, OWNER_PASSWORD="x", APP_PASSWORD="y"))
        assert created.returncode == 0, created.stderr
        init = accord("ledger", "init", env=_accord_env(made, made.db, tmp_path))
        assert init.returncode == 0, init.stderr
        yield made, restored
    finally:
        with admin.connect() as conn:
            for db in (made.db, restored):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
            for role in (made.app, made.owner):
                conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def _url(made: Made, user: str, db: str) -> str:
    base = make_url(TEST_DATABASE_URL)
    return base.set(username=user, password=None, database=db).render_as_string(hide_password=False)


def _accord_env(made: Made, db: str, state: Path) -> dict[str, str]:
    return {
        "ACCORD_LEDGER_OWNER_URL": _url(made, made.owner, db),
        "ACCORD_LEDGER_URL": _url(made, made.app, db),
        "ACCORD_LEDGER_APP_ROLE": made.app,
        "ACCORD_STATE_DIR": str(state),
    }


def _pg(tool: str, made: Made, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    server = make_url(TEST_DATABASE_URL)
    conn = ["--host", server.host or "127.0.0.1", "--port", str(server.port or 5432), "--username", made.owner]
    return subprocess.run([tool, *conn, "--dbname", db, *args], capture_output=True, text=True, timeout=120)


def _empty_database_like_the_init_script(made: Made, db: str) -> None:
    """What init-roles.sh does for the database on an empty volume (the roles exist already here)."""
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{db}" OWNER "{made.owner}"'))
        conn.execute(text(f'REVOKE ALL ON DATABASE "{db}" FROM PUBLIC'))
        conn.execute(text(f'GRANT CONNECT ON DATABASE "{db}" TO "{made.app}"'))
    admin.dispose()
    on_db = create_engine(make_url(TEST_DATABASE_URL).set(database=db), isolation_level="AUTOCOMMIT")
    with on_db.connect() as conn:
        conn.execute(text(f'ALTER SCHEMA public OWNER TO "{made.owner}"'))
        conn.execute(text("REVOKE CREATE ON SCHEMA public FROM PUBLIC"))
    on_db.dispose()


def _ledger_with_checkpoint(app: Engine, signer: NoteSigner, first: int, last: int) -> None:
    append(app, [draft(i, "prod") for i in range(first, last + 1)])
    assert make_checkpoint(app, signer, ORIGIN) is not None


def test_backup_as_owner_restore_and_verify(deployment: tuple[Made, str], tmp_path: Path) -> None:
    made, restored = deployment
    signer = NoteSigner.generate(ORIGIN)
    app = create_engine(_url(made, made.app, made.db))
    _ledger_with_checkpoint(app, signer, 1, 12)
    append(app, [draft(i, "prod") for i in range(13, 16)])  # three entries after the checkpoint

    dump = tmp_path / "ledger.dump"
    dumped = _pg("pg_dump", made, made.db, "--format", "custom", "--file", str(dump))
    assert dumped.returncode == 0, dumped.stderr

    _empty_database_like_the_init_script(made, restored)
    loaded = _pg("pg_restore", made, restored, "--exit-on-error", str(dump))
    assert loaded.returncode == 0, loaded.stderr
    again = accord("ledger", "init", env=_accord_env(made, restored, tmp_path))
    assert again.returncode == 0, again.stderr

    back = create_engine(_url(made, made.app, restored))
    owner = create_engine(_url(made, made.owner, restored))
    try:
        result = verify(back, signer.verifier, ORIGIN)
        assert result.ok and result.entries == 15 and result.checkpoints == 1, result.describe()
        assert [e.entry_hash for e in entries(back)] == [e.entry_hash for e in entries(app)]
        with back.connect() as conn, pytest.raises(ProgrammingError, match="permission denied"):
            conn.execute(text("UPDATE ledger_entries SET seq = seq"))  # the grants came back: SELECT, INSERT only
        with owner.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
            conn.execute(text("DELETE FROM ledger_entries WHERE seq = 1"))  # and the guards, for the owner too
        cli = accord(
            "ledger",
            "verify",
            env={
                "ACCORD_LEDGER_URL": _url(made, made.app, restored),
                "ACCORD_LEDGER_VERIFIER_KEY": signer.verifier.vkey,
                "ACCORD_STATE_DIR": str(tmp_path),
            },
        )
        assert cli.returncode == 0 and "ledger OK" in cli.stdout, cli.stdout + cli.stderr
    finally:
        for engine in (app, back, owner):
            engine.dispose()


def test_a_dump_older_than_a_published_checkpoint_is_caught(deployment: tuple[Made, str], tmp_path: Path) -> None:
    made, restored = deployment
    signer = NoteSigner.generate(ORIGIN)
    app = create_engine(_url(made, made.app, made.db))
    _ledger_with_checkpoint(app, signer, 1, 8)
    dump = tmp_path / "old.dump"
    assert _pg("pg_dump", made, made.db, "--format", "custom", "--file", str(dump)).returncode == 0
    _ledger_with_checkpoint(app, signer, 9, 14)  # recorded (and published) after the dump
    newest = latest_checkpoint(app)
    assert newest is not None
    kept = open_checkpoint(newest.note, signer.verifier, ORIGIN)  # the copy on accord.ledger.checkpoints

    _empty_database_like_the_init_script(made, restored)
    assert _pg("pg_restore", made, restored, "--exit-on-error", str(dump)).returncode == 0
    back = create_engine(_url(made, made.app, restored))
    try:
        alone = verify(back, signer.verifier, ORIGIN)
        assert alone.ok and alone.entries == 8  # consistent in itself
        against = verify(back, signer.verifier, ORIGIN, kept=[kept])
        assert not against.ok
        assert "entries 9 to 14 are missing" in against.describe()
    finally:
        app.dispose()
        back.dispose()


def test_a_new_signing_key_cannot_continue_the_old_keys_checkpoints(deployment: tuple[Made, str]) -> None:
    made, _ = deployment
    old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
    app = create_engine(_url(made, made.app, made.db))
    try:
        _ledger_with_checkpoint(app, old, 1, 5)
        append(app, [draft(i, "prod") for i in range(6, 9)])
        with pytest.raises(CheckpointRefused, match="does not verify with the ledger key"):
            make_checkpoint(app, new, ORIGIN)
        assert verify(app, old.verifier, ORIGIN).ok  # the old public key still verifies the old checkpoints
        with_new = verify(app, new.verifier, ORIGIN)
        assert not with_new.ok and with_new.bad_checkpoint == 5
    finally:
        app.dispose()
