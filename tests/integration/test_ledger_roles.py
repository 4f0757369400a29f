"""Role separation on PostgreSQL: the app role can only append; the bus refuses to run as the owner.

Every refusal here comes from PostgreSQL itself (privileges and ownership), not
from the triggers or from Accord's code.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

import consent
from accord.provision import LedgerRoleError, app_grants, require_app_role, setup_database
from bus.settings import Settings
from ledger import append, count, verify
from ledger.roles import LedgerSchemaMissing, check_app_role
from tests.bus import TEST_PSEUDONYM_KEY
from tests.conftest import RoleDatabase, fresh_role_database
from tests.integration.test_ledger import draft

KNOWN = consent.KnownScopes.from_partners({"cps": "prosecution"})


def _refused(engine, sql: str) -> str:
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        conn.execute(text(sql))
    return str(info.value.orig)


def test_app_role_appends_and_reads(role_db: RoleDatabase) -> None:
    out = append(role_db.app, [draft(i) for i in range(1, 11)])
    assert [a.seq for a in out] == list(range(1, 11))
    assert verify(role_db.app).ok
    # Consent history: the app role inserts (its id sequence included) and reads.
    rec = consent.record(role_db.app, "nhs:9434765919", consent.ConsentDecision.DENY, known=KNOWN, recipient="cps")
    assert consent.history(role_db.app, ["nhs:9434765919"])["nhs:9434765919"][0].id == rec.id
    check = require_app_role(role_db.app)
    assert check is not None and check.role == role_db.app_role


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entries SET recipient = 'elsewhere' WHERE seq = 1",
        "DELETE FROM ledger_entries WHERE seq = 1",
        "TRUNCATE ledger_entries",
        "UPDATE consent_records SET decision = 'permit'",
        "DELETE FROM consent_records",
        "TRUNCATE consent_records",
    ],
    ids=["update", "delete", "truncate", "consent-update", "consent-delete", "consent-truncate"],
)
def test_app_role_is_refused_by_postgres(role_db: RoleDatabase, sql: str) -> None:
    append(role_db.app, [draft(i) for i in range(1, 4)])
    consent.record(role_db.app, "nhs:9434765919", consent.ConsentDecision.DENY, known=KNOWN, recipient="cps")
    message = _refused(role_db.app, sql)
    # Refused by privileges, before any trigger fires.
    assert "permission denied for table" in message
    assert count(role_db.app) == 3 and verify(role_db.app).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE consent_records SET decision = 'permit'",
        "DELETE FROM consent_records WHERE subject_key = 'nhs:9434765919'",
        "TRUNCATE consent_records",
    ],
    ids=["update", "delete", "truncate"],
)
def test_even_the_owner_cannot_change_or_remove_a_consent_record(role_db: RoleDatabase, sql: str) -> None:
    """A deleted consent record silently undid a citizen's opt-out (revision 0004 guards the table)."""
    rec = consent.record(role_db.app, "nhs:9434765919", consent.ConsentDecision.DENY, known=KNOWN, recipient="cps")
    assert "consent_records is append-only" in _refused(role_db.owner, sql)
    [kept] = consent.history(role_db.app, ["nhs:9434765919"])["nhs:9434765919"]
    assert (kept.id, kept.decision) == (rec.id, consent.ConsentDecision.DENY)


def test_the_consent_history_is_append_only_on_sqlite_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    from accord.provision import setup_database

    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    setup_database(engine, None)
    consent.record(engine, "nhs:9434765919", consent.ConsentDecision.DENY, known=KNOWN, recipient="cps")
    for sql in ("UPDATE consent_records SET decision = 'permit'", "DELETE FROM consent_records"):
        assert "consent_records is append-only" in _refused(engine, sql)
    assert len(consent.history(engine, ["nhs:9434765919"])["nhs:9434765919"]) == 1
    engine.dispose()


@pytest.mark.parametrize(
    "sql",
    [
        "ALTER TABLE ledger_entries DISABLE TRIGGER ledger_entries_no_update_delete",
        "ALTER TABLE ledger_entries DISABLE TRIGGER ALL",
        "ALTER TABLE ledger_entries ENABLE REPLICA TRIGGER ledger_entries_no_truncate",
        "DROP TRIGGER ledger_entries_no_update_delete ON ledger_entries",
        "DROP TABLE ledger_entries",
    ],
    ids=["disable-one", "disable-all", "replica-only", "drop-trigger", "drop-table"],
)
def test_app_role_cannot_touch_the_guards(role_db: RoleDatabase, sql: str) -> None:
    assert re.search(r"must be owner of (table|relation) ledger_entries", _refused(role_db.app, sql))
    with role_db.owner.connect() as conn:
        modes: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'ledger_entries'::regclass AND NOT tgisinternal"
                )
            ).all()
        )
    assert modes == {"ledger_entries_no_update_delete": "A", "ledger_entries_no_truncate": "A"}


def test_app_role_cannot_switch_to_replica_mode(role_db: RoleDatabase) -> None:
    # session_replication_role is superuser-only; the triggers are ENABLE ALWAYS besides.
    assert "permission denied" in _refused(role_db.app, "SET session_replication_role = replica")


def test_app_role_cannot_create_tables_in_the_schema(role_db: RoleDatabase) -> None:
    assert "permission denied for schema" in _refused(role_db.app, "CREATE TABLE ledger_shadow (x int)")


def test_check_passes_for_app_role_only(role_db: RoleDatabase) -> None:
    assert check_app_role(role_db.app, app_grants()).ok
    owner = check_app_role(role_db.owner, app_grants())
    assert not owner.ok and owner.role == role_db.owner_role
    assert any("owns ledger_entries" in p for p in owner.problems)
    superuser = check_app_role(role_db.admin, app_grants())
    assert superuser.superuser and any("superuser" in p for p in superuser.problems)


def test_check_refuses_an_app_role_given_update(role_db: RoleDatabase) -> None:
    with role_db.owner.begin() as conn:
        conn.execute(text(f'GRANT UPDATE (reason) ON ledger_entries TO "{role_db.app_role}"'))
        conn.execute(text(f'GRANT DELETE ON consent_records TO "{role_db.app_role}"'))
    with pytest.raises(LedgerRoleError) as info:
        require_app_role(role_db.app)
    message = str(info.value)
    assert role_db.app_role in message
    assert "UPDATE on ledger_entries" in message and "DELETE on consent_records" in message


def test_check_refuses_a_member_of_the_owner_role(role_db: RoleDatabase) -> None:
    with role_db.admin.begin() as conn:
        conn.execute(text(f'GRANT "{role_db.owner_role}" TO "{role_db.app_role}"'))
    with pytest.raises(LedgerRoleError, match="owns ledger_entries"):
        require_app_role(role_db.app)


def test_check_refuses_a_role_that_could_grant_itself_the_owner(role_db: RoleDatabase) -> None:
    with role_db.admin.begin() as conn:
        conn.execute(text(f'ALTER ROLE "{role_db.app_role}" CREATEROLE'))
    with pytest.raises(LedgerRoleError, match="CREATEROLE"):
        require_app_role(role_db.app)


def test_missing_schema_tells_the_user_to_run_init() -> None:
    with fresh_role_database(setup=False) as db, pytest.raises(LedgerSchemaMissing, match="accord ledger init"):
        require_app_role(db.app)


def test_setup_is_idempotent_and_refuses_to_grant_the_owner(role_db: RoleDatabase) -> None:
    append(role_db.app, [draft(1)])
    setup_database(role_db.owner, role_db.app_role)  # again
    append(role_db.app, [draft(2)])
    assert verify(role_db.app).ok
    with pytest.raises(LedgerRoleError, match="would own"):
        setup_database(role_db.owner, role_db.owner_role)


def _accord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _env(ledger_url: str, tmp_path, **extra: str) -> dict[str, str]:
    return {
        "ACCORD_LEDGER_URL": ledger_url,
        "ACCORD_STATE_DIR": str(tmp_path),
        "ACCORD_LOG_FORMAT": "json",
        "ACCORD_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY,
        "ACCORD_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        **extra,
    }


def test_processor_refuses_to_start_as_the_owner(role_db: RoleDatabase, tmp_path) -> None:
    result = _accord("run", "processor", env=_env(role_db.owner_url, tmp_path))
    assert result.returncode == 2
    assert f"refusing to run as database role '{role_db.owner_role}'" in result.stderr
    assert "owns ledger_entries" in result.stderr and "ACCORD_LEDGER_OWNER_URL" in result.stderr


def test_processor_refuses_to_start_as_a_superuser(role_db: RoleDatabase, tmp_path) -> None:
    result = _accord("run", "processor", env=_env(str(role_db.admin.url.render_as_string(False)), tmp_path))
    assert result.returncode == 2 and "superuser" in result.stderr


def test_processor_without_tables_says_run_init(tmp_path) -> None:
    with fresh_role_database(setup=False) as db:
        result = _accord("run", "processor", env=_env(db.app_url, tmp_path))
    assert result.returncode == 2 and "run `accord ledger init`" in result.stderr


def test_ledger_init_command_as_owner_grants_the_app_role(tmp_path) -> None:
    with fresh_role_database(setup=False) as db:
        result = _accord("ledger", "init", env=_env(db.app_url, tmp_path, ACCORD_LEDGER_OWNER_URL=db.owner_url))
        assert result.returncode == 0, result.stderr
        assert f"granted '{db.app_role}' SELECT, INSERT on ledger_entries" in result.stdout
        assert check_app_role(db.app, app_grants()).ok
        with db.owner.connect() as conn:
            owner = conn.execute(
                text(
                    "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger_entries' "
                    "AND schemaname = current_schema()"
                )
            ).scalar_one()
        assert owner == db.owner_role
        append(db.app, [draft(1)])
        verify_run = _accord("ledger", "verify", env=_env(db.app_url, tmp_path))
        assert verify_run.returncode == 0 and "ledger OK: 1 entries" in verify_run.stdout


def test_ledger_init_without_owner_url_warns(tmp_path) -> None:
    with fresh_role_database(setup=False) as db:
        result = _accord("ledger", "init", env=_env(db.owner_url, tmp_path))
        assert result.returncode == 0 and "no application role granted" in result.stderr


def test_sqlite_is_not_role_checked(tmp_path) -> None:
    settings = Settings(state_dir=tmp_path, ledger_url="")
    from bus.database import engine_for

    engine = engine_for(settings)
    assert require_app_role(engine) is None  # creates the tables, warns, checks nothing
    append(engine, [draft(1)])
    assert count(engine) == 1


def test_consent_command_appends_as_the_app_role_and_refuses_the_owner(role_db: RoleDatabase, tmp_path) -> None:
    args = ("consent", "deny", "--subject", "nhs:9434765919", "--recipient", "cps")
    refused = _accord(*args, env=_env(role_db.owner_url, tmp_path))
    assert refused.returncode == 2 and f"refusing to run as database role '{role_db.owner_role}'" in refused.stderr
    done = _accord(*args, env=_env(role_db.app_url, tmp_path))
    assert done.returncode == 0, done.stderr
    assert consent.history(role_db.app, ["nhs:9434765919"])["nhs:9434765919"][0].recipient == "cps"
