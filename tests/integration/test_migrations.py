"""Migrations: a ledger made by Accord 0.1.0 is upgraded by its owner to head and still verifies.

The old database is the real thing: tests/fixtures/ledger_0_1_0/ledger.sql was dumped
from a schema that Accord 0.1.0's own `accord ledger init` and library made (its
make_fixture.py says how). Fresh and upgraded databases are compared by what
PostgreSQL's catalog says of them: columns, indexes, constraints, triggers (and
whether they are ENABLE ALWAYS), functions, owners and grants.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, inspect, text

from accord.provision import (
    LedgerHistoryAtRisk,
    LedgerSchemaNotCurrent,
    init_database,
    require_app_role,
    setup_database,
)
from ledger import EntryDraft, append, entries, verify
from ledger.checkpoint import load_signer, make_checkpoint
from ledger.migrations import head, require_head, upgrade
from ledger.roles import LedgerSchemaMissing
from tests.bus import TEST_PSEUDONYM_KEY
from tests.conftest import RoleDatabase, fresh_role_database

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ledger_0_1_0" / "ledger.sql"
# The fixture's test key (make_fixture.SIGNING_SEED): bytes 0..31, base64.
SIGNING_SEED = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
ORIGIN = "accord.example/ledger"
FIXTURE_ENTRIES = 13


def restore_first_release(db: RoleDatabase) -> None:
    """Load the 0.1.0 dump into db's schema as its owner, as an operator restoring a backup would."""
    sql = FIXTURE.read_text(encoding="utf-8").replace("__SCHEMA__", f'"{db.schema}"')
    engine = create_engine(db.owner_url)  # its own: the dump empties the connection's search_path
    try:
        raw = engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(sql)
            cur.close()
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def catalog(db: RoleDatabase) -> dict[str, Any]:
    """What PostgreSQL says the schema is, with its own and the roles' names written generically."""
    names = {db.schema: "SCHEMA", db.owner_role: "OWNER", db.app_role: "APP"}

    def generic(value: object) -> object:
        if isinstance(value, str):
            for name, placeholder in names.items():
                value = value.replace(f'"{name}"', placeholder).replace(name, placeholder)
        return value

    queries = {
        "columns": """
            SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid)
            FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
            LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = to_regnamespace(:s) AND c.relkind = 'r' AND a.attnum > 0
                  AND NOT a.attisdropped
            ORDER BY 1, 2""",
        "indexes": """
            SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = :s ORDER BY 1""",
        "constraints": """
            SELECT c.relname, k.conname, k.contype, pg_get_constraintdef(k.oid)
            FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
            WHERE k.connamespace = to_regnamespace(:s) ORDER BY 1, 2""",
        "triggers": """
            SELECT c.relname, t.tgname, t.tgenabled, pg_get_triggerdef(t.oid)
            FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = to_regnamespace(:s) AND NOT t.tgisinternal ORDER BY 1, 2""",
        "functions": """
            SELECT proname, prosrc, pg_get_userbyid(proowner) FROM pg_proc
            WHERE pronamespace = to_regnamespace(:s) ORDER BY 1""",
        "relations": """
            SELECT relname, relkind, pg_get_userbyid(relowner), relacl::text FROM pg_class
            WHERE relnamespace = to_regnamespace(:s) ORDER BY 1""",
        "sequences": """
            SELECT sequencename, data_type::text, increment_by, cycle FROM pg_sequences
            WHERE schemaname = :s ORDER BY 1""",
        "schema": """
            SELECT pg_get_userbyid(nspowner), nspacl::text FROM pg_namespace WHERE nspname = :s""",
    }
    with db.admin.connect() as conn:
        return {
            what: [tuple(generic(v) for v in row) for row in conn.execute(text(sql), {"s": db.schema})]
            for what, sql in queries.items()
        }


def _rows(db: RoleDatabase, table: str) -> list[tuple[Any, ...]]:
    with db.admin.connect() as conn:
        return [tuple(r) for r in conn.execute(text(f'SELECT * FROM "{db.schema}".{table} ORDER BY 1, 2'))]


def _accord(*args: str, db: RoleDatabase, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ACCORD_LEDGER_URL": db.app_url,
        "ACCORD_LEDGER_OWNER_URL": db.owner_url,
        "ACCORD_STATE_DIR": str(tmp_path),
        "ACCORD_LOG_FORMAT": "json",
        "ACCORD_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY,
        "ACCORD_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def problems(stderr: str, command: str) -> list[str]:
    """The lines of stderr saying what is wrong: ``accord COMMAND: ...``, plain or as a JSON log line's message."""
    found = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            line = str(json.loads(line).get("message", ""))
        if line.startswith(f"accord {command}: "):
            found.append(line)
    return found


def _version(db: RoleDatabase) -> list[str]:
    with db.admin.connect() as conn:
        return list(conn.execute(text(f'SELECT version_num FROM "{db.schema}".alembic_version')).scalars())


def _new_entry() -> EntryDraft:
    return EntryDraft(
        disclosure_id="f" * 64,
        event_id="00000000-0000-4000-8000-0000000000aa",
        event_type="custody",
        provider="gmp",
        recipient="cps",
        agreement_id="custody-to-prosecution",
        agreement_version=1,
        purpose="crime_prevention_and_prosecution",
        legal_basis="Crime and Disorder Act 1998 s.115",
        outcome="DISCLOSED",
        reason=None,
        fields=("custody.offence",),
        consent_mode="implied",
        consent_version=0,
        subject_key="nhs:9434765919",
        decided_at=datetime(2026, 12, 1, 12, 0, tzinfo=UTC),
        event_digest="e" * 64,
    )


# --------------------------------------------------------------------------- the first release, upgraded


def test_upgrades_a_database_created_by_the_first_released_schema_to_head_and_verifies_its_ledger(
    tmp_path: Path,
) -> None:
    with fresh_role_database(setup=False) as db:
        restore_first_release(db)
        before = {t: _rows(db, t) for t in ("ledger_entries", "ledger_checkpoints", "ledger_tiles", "consent_records")}
        assert len(before["ledger_entries"]) == FIXTURE_ENTRIES
        assert not inspect(db.admin).has_table("alembic_version", schema=db.schema)

        init = _accord("ledger", "init", db=db, tmp_path=tmp_path)
        assert init.returncode == 0, init.stderr
        assert f"schema upgraded from revision none to {head()}" in init.stdout
        assert f"granted '{db.app_role}' SELECT on alembic_version" in init.stdout
        assert _version(db) == [head()]
        # Nothing that was there changed: the entries, their checkpoint and tiles, the consent history.
        assert {t: _rows(db, t) for t in before} == before

        assert require_app_role(db.app) is not None  # the bus may start as the app role
        signer = load_signer(SIGNING_SEED, ORIGIN)
        assert signer is not None
        assert verify(db.app, signer.verifier, ORIGIN).ok
        append(db.app, [_new_entry()])  # and append after the old entries, on their chain
        checked = _accord("ledger", "verify", db=db, tmp_path=tmp_path, ACCORD_LEDGER_VERIFIER_KEY=signer.verifier.vkey)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"ledger OK: {FIXTURE_ENTRIES + 1} entries, chain intact, consistent with 1 signed checkpoint" in (
            checked.stdout
        )
        assert [e.seq for e in entries(db.app)] == list(range(1, FIXTURE_ENTRIES + 2))

        again = _accord("ledger", "init", db=db, tmp_path=tmp_path)
        assert again.returncode == 0 and f"schema at revision {head()}, nothing to upgrade" in again.stdout
        assert _version(db) == [head()]


def test_init_killed_mid_upgrade_leaves_the_first_release_as_it_was(tmp_path: Path) -> None:
    """kill -9 while 0002 waits for its lock: the stamp and every step roll back; init again succeeds.

    1. Restore 0.1.0's ledger; hold a lock on ledger_entries that CREATE INDEX must wait for.
    2. Start `accord ledger init`; wait until PostgreSQL shows it blocked on that CREATE INDEX
       (so 0001's stamp is already written, in its transaction).
    3. kill -9 it, release the lock: no alembic_version, no new index, the entries as they were.
    4. `accord ledger init` again: at head, and the ledger verifies.
    """
    with fresh_role_database(setup=False) as db:
        restore_first_release(db)  # 1.
        before = _rows(db, "ledger_entries")
        holder = db.admin.connect()
        holder.begin()
        holder.execute(text(f'LOCK TABLE "{db.schema}".ledger_entries IN ROW EXCLUSIVE MODE'))
        env = {
            **os.environ,
            "ACCORD_LEDGER_URL": db.app_url,
            "ACCORD_LEDGER_OWNER_URL": db.owner_url,
            "ACCORD_STATE_DIR": str(tmp_path),
            "ACCORD_PSEUDONYM_KEY": TEST_PSEUDONYM_KEY,
        }
        init = subprocess.Popen(  # 2.
            [sys.executable, "-m", "accord.cli", "ledger", "init"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            blocked = False
            for _ in range(600):
                with db.admin.connect() as conn:
                    blocked = bool(
                        conn.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE usename = :u "
                                "AND wait_event_type = 'Lock' AND query LIKE 'CREATE INDEX%'"
                            ),
                            {"u": db.owner_role},
                        ).scalar_one()
                    )
                if blocked or init.poll() is not None:
                    break
                threading.Event().wait(0.1)
            assert blocked, "init never reached 0002's CREATE INDEX"
        finally:
            init.kill()  # 3.
            init.wait(30)
            holder.rollback()
            holder.close()
        for _ in range(100):  # the server notices the dead client and rolls its transaction back
            with db.admin.connect() as conn:
                gone = not conn.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE usename = :u"), {"u": db.owner_role}
                ).scalar_one()
            if gone:
                break
            threading.Event().wait(0.1)
        assert not inspect(db.admin).has_table("alembic_version", schema=db.schema)
        indexes = {i["name"] for i in inspect(db.admin).get_indexes("ledger_entries", schema=db.schema)}
        assert "ix_ledger_entries_decided_at" not in indexes
        assert _rows(db, "ledger_entries") == before

        again = _accord("ledger", "init", db=db, tmp_path=tmp_path)  # 4.
        assert again.returncode == 0, again.stderr
        assert _version(db) == [head()]
        signer = load_signer(SIGNING_SEED, ORIGIN)
        assert signer is not None and verify(db.app, signer.verifier, ORIGIN).ok


def test_an_upgraded_first_release_is_the_same_database_as_a_fresh_one(tmp_path: Path) -> None:
    """Columns, indexes, constraints, guards (ENABLE ALWAYS), functions, owners and grants alike."""
    with fresh_role_database() as fresh, fresh_role_database(setup=False) as old:
        restore_first_release(old)
        setup_database(old.owner, old.app_role)
        fresh_catalog, upgraded = catalog(fresh), catalog(old)
        assert upgraded == fresh_catalog
        # and it says what it must: the new index, the guards always on, no UPDATE for the app role
        assert any(name == "ix_ledger_entries_decided_at" for name, _ in fresh_catalog["indexes"])
        assert {(t, mode) for _, t, mode, _ in fresh_catalog["triggers"]} == {
            ("ledger_entries_no_truncate", "A"),
            ("ledger_entries_no_update_delete", "A"),
            ("consent_records_no_truncate", "A"),
            ("consent_records_no_update_delete", "A"),
        }
        acl = dict((name, acl) for name, _, _, acl in fresh_catalog["relations"])
        assert "APP=ar/OWNER" in acl["ledger_entries"] and "APP=r/OWNER" in acl["alembic_version"]


def test_init_makes_again_a_table_dropped_from_a_database_at_head() -> None:
    """An empty ledger lost nothing: the models' repair (accord.provision) gives the same table, guards and
    grants as the revisions did."""
    with fresh_role_database() as fresh, fresh_role_database() as dropped:
        with dropped.owner.begin() as conn:
            conn.execute(text("DROP TABLE ledger_entries CASCADE"))
            conn.execute(text("DROP FUNCTION ledger_entries_refuse_change()"))
        setup_database(dropped.owner, dropped.app_role)
        assert catalog(dropped) == catalog(fresh)
        assert require_app_role(dropped.app) is not None


def _tables(db: RoleDatabase) -> list[str]:
    return sorted(inspect(db.admin).get_table_names(schema=db.schema))


def test_init_refuses_to_make_again_a_dropped_ledger_that_its_checkpoint_contradicts(tmp_path: Path) -> None:
    """ledger_entries dropped from a ledger with a signed checkpoint: init refuses in one line, naming what is
    missing, what still holds history and the restore; it creates nothing, and the bus still refuses to start."""
    with fresh_role_database() as db:
        signer = load_signer(SIGNING_SEED, ORIGIN)
        assert signer is not None
        append(db.app, [_new_entry()])
        assert make_checkpoint(db.app, signer, ORIGIN) is not None
        with db.owner.begin() as conn:
            conn.execute(text("DROP TABLE ledger_entries CASCADE"))
        tables, checkpoints = _tables(db), _rows(db, "ledger_checkpoints")

        init = _accord("ledger", "init", db=db, tmp_path=tmp_path)
        assert init.returncode == 2 and "Traceback" not in init.stderr
        [line] = problems(init.stderr, "ledger init")
        assert "has no ledger_entries (dropped since it was migrated)" in line
        assert "ledger_checkpoints, ledger_tiles still hold rows, and an empty ledger_entries beside them" in line
        assert "restore the database from its backup as the owner (pg_restore" in line
        assert "then run `accord ledger init` and `accord ledger verify`" in line
        assert _tables(db) == tables and "ledger_entries" not in tables  # nothing created
        assert _rows(db, "ledger_checkpoints") == checkpoints
        with pytest.raises(LedgerHistoryAtRisk):  # the library refuses alike
            setup_database(db.owner, db.app_role)
        with pytest.raises(LedgerSchemaMissing, match="tables missing: ledger_entries"):
            require_app_role(db.app)


def test_init_never_makes_again_a_dropped_consent_history(role_db: RoleDatabase) -> None:
    """Even in an empty ledger: nothing else says which opt-outs it held."""
    with role_db.owner.begin() as conn:
        conn.execute(text("DROP TABLE consent_records"))
    with pytest.raises(LedgerHistoryAtRisk) as info:
        setup_database(role_db.owner, role_db.app_role)
    message = str(info.value)
    assert "\n" not in message and "has no consent_records" in message
    assert "an empty one would forget every opt-out" in message
    assert not inspect(role_db.admin).has_table("consent_records", schema=role_db.schema)


def test_init_makes_again_dropped_cursors_beside_history(role_db: RoleDatabase) -> None:
    """processor_cursors holds positions only: made again, with its grants, whatever the ledger holds."""
    append(role_db.app, [_new_entry()])
    with role_db.owner.begin() as conn:
        conn.execute(text("DROP TABLE processor_cursors"))
    setup_database(role_db.owner, role_db.app_role)
    assert inspect(role_db.admin).has_table("processor_cursors", schema=role_db.schema)
    assert require_app_role(role_db.app) is not None and verify(role_db.app).entries == 1


def test_a_sqlite_ledger_is_refused_alike_naming_its_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    engine = create_engine(f"sqlite:///{path}")
    upgrade(engine)
    append(engine, [_new_entry()])
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE ledger_subject_refs"))
    with pytest.raises(LedgerHistoryAtRisk) as info:
        init_database(engine)
    message = str(info.value)
    assert "has no ledger_subject_refs" in message and "ledger_entries still hold rows" in message, message
    assert f"restore {path} from its backup" in message
    assert "ledger_subject_refs" not in inspect(engine).get_table_names()
    engine.dispose()


def test_migrations_build_the_schema_the_models_describe(role_db: RoleDatabase) -> None:
    """Alembic's own comparison of head against ledger.tables, consent.store and bus.cursors: no difference."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import MetaData

    from bus.cursors import CursorBase
    from consent.store import ConsentBase
    from ledger import LedgerBase

    models = MetaData()
    for base in (LedgerBase, ConsentBase, CursorBase):
        for table in base.metadata.tables.values():
            table.to_metadata(models)
    with role_db.owner.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = [d for d in compare_metadata(context, models) if not _is_version_table(d)]
    assert differences == []


def _back_to_first_release(conn: Any) -> None:
    """Undo what the revisions after 0001 made, and say so in alembic_version: a database as 0001 left it."""
    conn.execute(text("DROP INDEX ix_ledger_entries_decided_at"))  # 0002
    conn.execute(text("DROP TABLE pseudonym_keys"))  # 0003
    conn.execute(text("DROP TRIGGER consent_records_no_update_delete ON consent_records"))  # 0004
    conn.execute(text("DROP TRIGGER consent_records_no_truncate ON consent_records"))
    conn.execute(text("DROP FUNCTION consent_records_refuse_change()"))
    conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))


def test_the_alembic_command_through_env_py_upgrades_as_init_does(role_db: RoleDatabase) -> None:
    """`alembic upgrade head` (command API, ledger/migrations/env.py) on a database at 0001, as the owner."""
    from alembic import command
    from alembic.config import Config

    from ledger.migrations import SCRIPT_LOCATION

    with role_db.owner.begin() as conn:
        _back_to_first_release(conn)
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    with role_db.owner.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    assert _version(role_db) == [head()]
    indexes = {i["name"] for i in inspect(role_db.admin).get_indexes("ledger_entries", schema=role_db.schema)}
    assert "ix_ledger_entries_decided_at" in indexes
    assert "pseudonym_keys" in inspect(role_db.admin).get_table_names(schema=role_db.schema)


def _is_version_table(diff: Any) -> bool:
    return isinstance(diff, tuple) and diff[0] == "remove_table" and diff[1].name == "alembic_version"


# --------------------------------------------------------------------------- the app role never migrates


def test_the_bus_refuses_a_database_behind_the_code_and_names_what_to_run(role_db: RoleDatabase) -> None:
    with role_db.owner.begin() as conn:  # as if made by 0001 alone
        _back_to_first_release(conn)
    with pytest.raises(LedgerSchemaNotCurrent) as info:
        require_app_role(role_db.app)
    message = str(info.value)
    assert "\n" not in message
    assert f"is at revision 0001 and this Accord needs {head()}" in message
    assert "back it up, then run `accord ledger init` as the owner role (ACCORD_LEDGER_OWNER_URL)" in message
    assert _version(role_db) == ["0001"]  # the app role changed nothing
    assert not any(
        i["name"] == "ix_ledger_entries_decided_at"
        for i in inspect(role_db.admin).get_indexes("ledger_entries", schema=role_db.schema)
    )
    setup_database(role_db.owner, role_db.app_role)  # the owner upgrades
    assert _version(role_db) == [head()] and require_app_role(role_db.app) is not None


def test_the_processor_refuses_to_start_on_a_database_behind_the_code(role_db: RoleDatabase, tmp_path: Path) -> None:
    with role_db.owner.begin() as conn:
        _back_to_first_release(conn)
    result = _accord("run", "processor", db=role_db, tmp_path=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [last] = problems(result.stderr, "run processor")
    assert last.startswith("accord run processor: the ledger database ")
    assert "is at revision 0001" in last and "run `accord ledger init` as the owner role" in last
    assert _version(role_db) == ["0001"]


def test_the_bus_refuses_a_database_from_before_migrations(role_db: RoleDatabase) -> None:
    with role_db.owner.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    with pytest.raises(LedgerSchemaNotCurrent, match=r"predates migrations \(no alembic_version\)"):
        require_app_role(role_db.app)


def test_an_empty_database_is_no_ledger_not_one_from_before_migrations(pg_engine: Engine) -> None:
    with pytest.raises(LedgerSchemaMissing) as info:
        require_head(pg_engine)
    message = str(info.value)
    assert message.startswith("no ledger here (") and "predates" not in message
    assert message.endswith("run `accord ledger init` as the owner role (ACCORD_LEDGER_OWNER_URL)")
    assert not isinstance(info.value, LedgerSchemaNotCurrent)
    assert inspect(pg_engine).get_table_names() == []


def test_an_app_role_that_may_not_read_the_version_is_told_to_run_init(role_db: RoleDatabase) -> None:
    """Told by SQLSTATE 42501 (insufficient_privilege), whatever language the server speaks."""
    with role_db.owner.begin() as conn:
        conn.execute(text(f'REVOKE SELECT ON alembic_version FROM "{role_db.app_role}"'))
    with pytest.raises(LedgerSchemaNotCurrent) as info:
        require_app_role(role_db.app)
    assert f"the role '{role_db.app_role}' may not read alembic_version" in str(info.value)
    setup_database(role_db.owner, role_db.app_role)  # init grants it again
    assert require_app_role(role_db.app) is not None


def test_a_database_ahead_of_the_code_is_refused_by_the_bus_and_by_init(role_db: RoleDatabase, tmp_path: Path) -> None:
    with role_db.owner.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
    with pytest.raises(LedgerSchemaNotCurrent, match="at schema revision 0999, which this Accord does not know"):
        require_app_role(role_db.app)
    init = _accord("ledger", "init", db=role_db, tmp_path=tmp_path)
    assert init.returncode == 2
    [line] = problems(init.stderr, "ledger init")
    assert "a newer Accord upgraded it" in line and "Traceback" not in init.stderr
    assert _version(role_db) == ["0999"]


@pytest.mark.parametrize("named_app_role", [False, True], ids=["refused-before-ddl", "refused-by-postgres"])
def test_the_app_role_cannot_migrate_even_when_asked(tmp_path: Path, named_app_role: bool) -> None:
    """`accord ledger init` with the app role's URL as the owner's changes nothing, and says so in one line.

    As the app role it is refused before any DDL; told of another app role, it tries, and
    PostgreSQL refuses the DDL (the app role owns nothing), rolling the upgrade back.
    """
    with fresh_role_database() as db:
        with db.owner.begin() as conn:
            _back_to_first_release(conn)
        extra = {"ACCORD_LEDGER_APP_ROLE": "someone_else"} if named_app_role else {}
        result = _accord("ledger", "init", db=db, tmp_path=tmp_path, ACCORD_LEDGER_OWNER_URL=db.app_url, **extra)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        [last] = problems(result.stderr, "ledger init")
        assert ("must be owner" in last) if named_app_role else ("run init as a separate owner role" in last)
        assert _version(db) == ["0001"]


# --------------------------------------------------------------------------- what init refuses, and races


def test_a_partial_database_without_a_version_is_refused_not_guessed_at(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE TABLE processor_cursors (name varchar(128) PRIMARY KEY, position bigint)"))
    with pytest.raises(LedgerSchemaMissing) as info:
        upgrade(pg_engine)
    message = str(info.value)
    assert "\n" not in message and "is not Accord 0.1.0's schema" in message
    assert "ledger_entries" in message and "consent_records" in message
    assert not inspect(pg_engine).has_table("alembic_version")


def test_two_inits_at_once_both_succeed_with_one_version(tmp_path: Path) -> None:
    with fresh_role_database(setup=False) as db:
        errors: list[BaseException] = []

        def init() -> None:
            try:
                setup_database(db.owner, db.app_role)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=init) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert _version(db) == [head()]
        assert require_app_role(db.app) is not None


def test_sqlite_from_before_migrations_is_stamped_and_upgraded_on_first_use(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    upgrade(engine)
    append(engine, [_new_entry()])
    with engine.begin() as conn:  # back to what a 0.1.0 demo left: no version table, nothing later revisions made
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("DROP INDEX ix_ledger_entries_decided_at"))
        conn.execute(text("DROP TABLE pseudonym_keys"))
        conn.execute(text("DROP TRIGGER consent_records_no_update"))
        conn.execute(text("DROP TRIGGER consent_records_no_delete"))
    assert require_app_role(engine) is None  # SQLite: upgraded on first use
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [head()]
    assert "ix_ledger_entries_decided_at" in {i["name"] for i in inspect(engine).get_indexes("ledger_entries")}
    assert verify(engine).ok and verify(engine).entries == 1
    engine.dispose()
