"""Errors a person can act on: every user error is one line on stderr and a non-zero exit.

Each case runs ``accord`` as a subprocess, as a person would, against a real
PostgreSQL (a database that does not exist, a closed port, a schema without
tables) or a closed Kafka port, and asserts the exit code, the one line (its key
words) and that no traceback is printed. The state-folder case also checks that
nothing was created.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bus.database import describe_database_error
from bus.settings import PACKAGE_ROOT
from tests.conftest import TEST_DATABASE_URL, fresh_schema
from tests.ports import free_port

EXAMPLES = PACKAGE_ROOT / "agreements" / "examples"
# An ACCORD_* variable from the caller's environment must not steer these runs.
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}


def accord(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**BASE_ENV, "ACCORD_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PACKAGE_ROOT,
    )


def one_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a refused command (after checking the code and that no traceback came)."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def pg_url(database: str | None = None, port: int | None = None) -> str:
    url = make_url(TEST_DATABASE_URL)
    url = url.set(database=database or url.database, port=port or url.port)
    return url.render_as_string(hide_password=False)


# --------------------------------------------------------------------------- agreements


def _bad_folder(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Six agreements: one with an impossible date and an unknown key, one with an unknown purpose."""
    folder = tmp_path / "agreements"
    folder.mkdir()
    for f in EXAMPLES.glob("*.yaml"):
        (folder / f.name).write_text(f.read_text())
    dated = folder / "custody-to-prosecution.yaml"
    dated.write_text(dated.read_text().replace("valid_from: 2026-01-01", "valid_from: 2026-02-30") + "colour: red\n")
    purpose = folder / "referral-to-mash.yaml"
    purpose.write_text(purpose.read_text().replace("purpose: safeguarding", "purpose: gossip"))
    return folder, dated, purpose


def _line_of(path: Path, needle: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t)


def test_validate_reports_a_bad_date_with_file_and_line_and_every_other_problem(tmp_path: Path) -> None:
    folder, dated, purpose = _bad_folder(tmp_path)
    result = accord("agreements", "validate", str(folder))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    problems = result.stderr.strip().splitlines()
    assert problems == [
        f"{dated}:{_line_of(dated, 'valid_from')}: valid_from: '2026-02-30' is not a date (day value is outside "
        "expected range); write a calendar date as YYYY-MM-DD",
        f"{dated}:{_line_of(dated, 'colour')}: colour: Extra inputs are not permitted",
        f"{purpose}:{_line_of(purpose, 'gossip')}: purpose: " + problems[2].split(": purpose: ", 1)[1],
    ]
    assert "Input should be" in problems[2]
    assert f"3 problems in {folder} (6 files)" in result.stdout


@pytest.mark.parametrize("command", [("agreements", "list"), ("topics", "create")])
def test_a_command_loading_bad_agreements_prints_the_same_lines_and_exits_2(tmp_path: Path, command) -> None:
    folder, _dated, _purpose = _bad_folder(tmp_path)
    extra = (str(folder),) if command[0] == "agreements" else ()
    # topics create loads the agreements before it contacts the broker: the closed port is never tried.
    result = accord(
        *command,
        *extra,
        ACCORD_AGREEMENTS_DIR=str(folder),
        ACCORD_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",
        timeout=20,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    validated = accord("agreements", "validate", str(folder)).stderr.strip().splitlines()
    lines = result.stderr.strip().splitlines()
    assert lines[:-1] == validated and len(validated) == 3
    assert lines[-1] == (
        f"accord {' '.join(command)}: 3 problem(s) in the agreements of {folder}; nothing done: "
        f"fix them (`accord agreements validate {folder}` lists them)"
    )


# --------------------------------------------------------------------------- database


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "verify"),
        ("ledger", "report", "--subject", "9434765919"),
        ("consent", "deny", "--subject", "nhs:9434765919", "--recipient", "cps"),
    ],
)
def test_a_database_that_does_not_exist_is_one_line(tmp_path: Path, args) -> None:
    url = pg_url(database="accord_nosuchdb")
    line = one_line(accord(*args, ACCORD_LEDGER_URL=url, ACCORD_STATE_DIR=str(tmp_path)))
    command = " ".join(args[:2])
    assert line.startswith(f"accord {command}: cannot open the database {make_url(url).render_as_string()}")
    assert 'database "accord_nosuchdb" does not exist' in line and "ACCORD_LEDGER_URL" in line


def test_postgresql_down_is_one_line_naming_it(tmp_path: Path) -> None:
    url = pg_url(port=free_port())
    started = time.monotonic()
    line = one_line(accord("ledger", "verify", ACCORD_LEDGER_URL=url, ACCORD_STATE_DIR=str(tmp_path)))
    assert time.monotonic() - started < 15
    assert line.startswith(f"accord ledger verify: could not reach the database {make_url(url).render_as_string()}")
    assert "Connection refused" in line and "check that PostgreSQL is running" in line


def test_a_postgresql_ledger_without_tables_refuses(tmp_path: Path) -> None:
    with fresh_schema() as (_, url):
        for args in (
            ("ledger", "verify"),
            ("ledger", "pending-receipts"),
            ("ledger", "export", "--from", "1", "--to", "1"),
        ):
            line = one_line(accord(*args, ACCORD_LEDGER_URL=url, ACCORD_STATE_DIR=str(tmp_path)))
            assert line.startswith(f"accord {' '.join(args[:2])}: no ledger in database ")
            assert "(tables missing: " in line and "ledger_entries" in line and "run `accord ledger init`" in line


SIGNING_SEED = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "args",
    [
        ("ledger", "verify"),
        ("ledger", "report", "--subject", "9434765919"),
        ("ledger", "export", "--from", "1", "--to", "5"),
        ("ledger", "prove", "--entry", "1"),
        ("ledger", "checkpoint", "--no-publish"),
        ("ledger", "pending-receipts"),
        ("ledger", "cosign", "--size", "1"),
        ("agreements", "explain", "EVENT"),
    ],
)
def test_a_mistyped_state_dir_refuses_and_creates_nothing(tmp_path: Path, args) -> None:
    state = tmp_path / "statee"  # the typo: no such folder
    event = tmp_path / "event.json"
    if "EVENT" in args:  # explain reads the event, then consent from the ledger database
        from producers.synthetic import build_scenario, to_json_line

        event.write_text(to_json_line(build_scenario(n_events=5, seed=1).events[0]))
        args = tuple(str(event) if a == "EVENT" else a for a in args)
    result = accord(*args, ACCORD_STATE_DIR=str(state), ACCORD_LEDGER_SIGNING_KEY=SIGNING_SEED)
    line = one_line(result)
    assert line == (
        f"accord {' '.join(args[:2])}: no ledger at {state / 'ledger.db'}; check ACCORD_STATE_DIR "
        "(or ACCORD_LEDGER_URL), or run `accord ledger init` to make a new one"
    )
    assert not state.exists() and result.stdout == ""


def test_an_empty_sqlite_file_is_not_a_ledger_either(tmp_path: Path) -> None:
    (tmp_path / "ledger.db").write_bytes(b"")
    line = one_line(accord("ledger", "verify", ACCORD_STATE_DIR=str(tmp_path)))
    assert line.startswith(f"accord ledger verify: no ledger in {tmp_path / 'ledger.db'} (tables missing: ")
    assert (tmp_path / "ledger.db").stat().st_size == 0  # nothing created in it


def test_writers_still_create_a_sqlite_ledger(tmp_path: Path) -> None:
    state = tmp_path / "new"
    assert accord("ledger", "init", ACCORD_STATE_DIR=str(state)).returncode == 0
    verified = accord("ledger", "verify", ACCORD_STATE_DIR=str(state))
    assert verified.returncode == 0 and "ledger OK: 0 entries" in verified.stdout


def test_database_errors_never_echo_values(pg_engine) -> None:
    """The line names the database and the failure, not the value PostgreSQL quotes in its message."""
    secret = "9434765919"
    url = pg_engine.url.render_as_string(hide_password=False)
    engine = create_engine(url, hide_parameters=True)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE people (nhs text PRIMARY KEY)"))
        conn.execute(text("INSERT INTO people VALUES (:v)"), {"v": secret})
    caught = []
    for sql in ("INSERT INTO people VALUES (:v)", "SELECT CAST(:v AS uuid)", "SELECT nhs FROM nosuch WHERE nhs = :v"):
        with pytest.raises(DBAPIError) as info, engine.begin() as conn:
            conn.execute(text(sql), {"v": secret})
        caught.append((str(info.value.orig), describe_database_error(info.value, url)))
    engine.dispose()
    # PostgreSQL quotes the value (in DETAIL, or in the message itself)...
    assert secret in caught[0][0] and secret in caught[1][0]
    for _, line in caught:  # ...the line a person sees does not, nor the statement's parameters
        assert secret not in line and "\n" not in line
        assert make_url(url).render_as_string() in line
    assert caught[0][1].endswith("refused a value (UniqueViolation, SQLSTATE 23505)")
    assert caught[1][1].endswith("refused a value (InvalidTextRepresentation, SQLSTATE 22P02)")
    assert caught[2][1].endswith('refused: relation "nosuch" does not exist')


# --------------------------------------------------------------------------- broker


@pytest.mark.parametrize("args", [("topics", "create"), ("consume", "--partner", "cps")])
def test_broker_down_is_one_line_naming_the_servers_within_seconds(tmp_path: Path, args) -> None:
    servers = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = accord(*args, ACCORD_BOOTSTRAP_SERVERS=servers, ACCORD_STATE_DIR=str(tmp_path), timeout=30)
    elapsed = time.monotonic() - started
    line = one_line(result)
    assert elapsed < 15, elapsed
    assert line.startswith(
        f"accord {' '.join(args[:2]) if args[0] == 'topics' else 'consume'}: no Kafka broker answered at {servers} ("
    )
    assert "ACCORD_BOOTSTRAP_SERVERS" in line and "%3|" not in result.stderr  # no librdkafka log lines


# --------------------------------------------------------------------------- the catch-all


def test_a_bad_setting_names_the_variable_not_the_value() -> None:
    line = one_line(accord("ledger", "verify", ACCORD_SESSION_TIMEOUT_MS="1x9434765919"))
    assert line.startswith("accord ledger verify: ACCORD_SESSION_TIMEOUT_MS: Input should be a valid integer")
    assert "9434765919" not in line


def test_a_missing_file_given_by_the_user_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "export.jsonl"
    line = one_line(accord("ledger", "verify-export", str(missing)))
    assert (
        line == f"accord ledger verify-export: {missing}: no such file or directory; check the path and its permissions"
    )


_CRASH = (
    "import sys, accord.cli as cli, accord.cli.ledger as ledger_commands\n"
    "def boom(args, settings):\n"
    "    return {}['nhs:9434765919']\n"
    "ledger_commands.cmd_ledger_verify = boom\n"
    "sys.exit(cli.main(['ledger', 'verify']))\n"
)


def test_an_unexpected_error_is_one_line_without_its_text_and_debug_adds_the_traceback() -> None:
    def crash(**env: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", _CRASH],
            env={**BASE_ENV, **env},
            capture_output=True,
            text=True,
            timeout=60,
            cwd=PACKAGE_ROOT,
        )

    line = one_line(crash(), code=70)
    assert line.startswith("accord ledger verify: unexpected error (KeyError at ")
    assert line.endswith("); run with ACCORD_LOG_LEVEL=DEBUG for the traceback")
    assert "9434765919" not in line
    debug = crash(ACCORD_LOG_LEVEL="DEBUG")
    assert debug.returncode == 70 and "Traceback" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == line


def test_checkpoint_with_the_broker_down_is_one_line_within_seconds(tmp_path: Path) -> None:
    from ledger import append
    from tests.integration.test_ledger import draft

    env = {
        "ACCORD_STATE_DIR": str(tmp_path),
        "ACCORD_LEDGER_SIGNING_KEY": SIGNING_SEED,
        "ACCORD_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",
    }
    # env holds ACCORD_* names only, never timeout.
    assert accord("ledger", "init", **env).returncode == 0  # type: ignore[arg-type]
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    append(engine, [draft(i) for i in range(1, 4)])
    engine.dispose()
    started = time.monotonic()
    line = one_line(accord("ledger", "checkpoint", timeout=30, **env))
    assert time.monotonic() - started < 15
    assert line.startswith("accord ledger checkpoint: checkpoint 3 not delivered: ")
    assert f"no Kafka broker took it at {env['ACCORD_BOOTSTRAP_SERVERS']}; the checkpoint is stored" in line


# --------------------------------------------------------------------------- careless options


def test_options_a_person_mistypes_are_one_line_each_and_leave_nothing_behind(tmp_path: Path) -> None:
    state, secret = str(tmp_path), "x" * 40
    assert accord("ledger", "init", ACCORD_STATE_DIR=state).returncode == 0
    cases = [
        (
            accord("ledger", "keygen", "--out", str(tmp_path / "typo" / "ledger.key"), ACCORD_STATE_DIR=state),
            f"accord ledger keygen: {tmp_path / 'typo' / 'ledger.key'}: no such file or directory; check the path "
            "and its permissions",
        ),
        (
            accord("consent", "token", "--staff", "--ttl", "0", ACCORD_STATE_DIR=state, ACCORD_API_SECRET=secret),
            "accord consent token: --ttl must be 1 to 86400 seconds (24 hours), not 0",
        ),
        (
            accord("ledger", "pending-receipts", "--partner", "nope", ACCORD_STATE_DIR=state),
            f"accord ledger pending-receipts: --partner 'nope' is not in {PACKAGE_ROOT / 'agreements' / 'partners.yaml'}",
        ),
        (
            accord("ledger", "pending-receipts", "--older-than", "-5", ACCORD_STATE_DIR=state),
            "accord ledger pending-receipts: --older-than must be 0 or more seconds, not -5",
        ),
        (
            accord("ledger", "verify", ACCORD_LOG_LEVEL="LOUD", ACCORD_STATE_DIR=state),
            "accord ledger verify: ACCORD_LOG_LEVEL: give one of DEBUG, INFO, WARNING, ERROR, CRITICAL; fix the "
            "environment variable",
        ),
        (
            accord("ledger", "verify", ACCORD_DATABASE_SSLMODE="bogus", ACCORD_STATE_DIR=state),
            "accord ledger verify: ACCORD_DATABASE_SSLMODE: Input should be '', 'disable', 'allow', 'prefer', "
            "'require', 'verify-ca' or 'verify-full'; fix the environment variable",
        ),
    ]
    for result, line in cases:
        assert one_line(result) == line
    assert not (tmp_path / "typo").exists()
    assert (
        accord(
            "consent", "token", "--staff", "--ttl", "60", ACCORD_STATE_DIR=state, ACCORD_API_SECRET=secret
        ).returncode
        == 0
    )


def test_a_recipient_missing_from_the_partner_registry_is_refused_by_validate_publish_and_the_processor(
    tmp_path: Path,
) -> None:
    """Its recipient class comes from the registry: without one, a citizen's "no sharing with the courts"
    could not apply to it. Refused wherever the agreements are loaded, before any broker is tried."""
    import shutil

    folder = tmp_path / "agreements"
    shutil.copytree(EXAMPLES, folder)
    edited = folder / "custody-to-prosecution.yaml"
    text_before = edited.read_text()
    assert "recipients: [cps, hmcts]" in text_before
    edited.write_text(text_before.replace("recipients: [cps, hmcts]", "recipients: [cps, hmcts, manchester-courts]"))
    partners = tmp_path / "partners.yaml"
    shutil.copy(PACKAGE_ROOT / "agreements" / "partners.yaml", partners)
    line = f"{edited}:{_line_of(edited, 'manchester-courts')}: recipients: 'manchester-courts' is not in the partner "
    closed = f"127.0.0.1:{free_port()}"

    def run(*args: str) -> subprocess.CompletedProcess:
        return accord(
            *args,
            ACCORD_PARTNERS_FILE=str(partners),
            ACCORD_BOOTSTRAP_SERVERS=closed,
            ACCORD_AGREEMENTS_DIR=str(folder),
            ACCORD_PSEUDONYM_KEY="ab" * 32,
            timeout=30,
        )

    validated = run("agreements", "validate", str(folder))
    assert validated.returncode == 1 and "Traceback" not in validated.stderr
    assert validated.stderr.strip().startswith(line + f"registry {partners}: add it there")
    for command in (("agreements", "publish", str(folder)), ("run", "processor")):
        refused = run(*command)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert line in refused.stderr

    partners.write_text(partners.read_text() + "manchester-courts: courts\n")
    assert run("agreements", "validate", str(folder)).returncode == 0
    partners.write_text("cps: [prosecution\n")  # a broken registry is a problem too, with its line
    broken = run("agreements", "validate", str(folder))
    assert broken.returncode == 1 and f"{partners}:2: (yaml): " in broken.stderr


def test_agreements_validate_on_a_missing_folder_or_a_file_says_so(tmp_path: Path) -> None:
    missing = accord("agreements", "validate", str(tmp_path / "nothere"))
    assert missing.returncode == 1 and f"{tmp_path / 'nothere'}:0: (folder): no such folder" in missing.stderr
    one = EXAMPLES / "custody-to-prosecution.yaml"
    given = accord("agreements", "validate", str(one))
    assert given.returncode == 1 and f"{one}:0: (folder): is a file: give the folder that holds it" in given.stderr


def test_an_agreement_past_its_valid_until_is_noted_by_validate_and_refuses_nothing(tmp_path: Path) -> None:
    """A planned end: validate exits 0 with a note, and the folder still loads for every command."""
    import shutil

    folder = tmp_path / "agreements"
    shutil.copytree(EXAMPLES, folder)
    ended = folder / "custody-to-youth-offending.yaml"
    ended.write_text(
        ended.read_text().replace("valid_from: 2026-01-01", "valid_from: 2026-01-01\nvalid_until: 2026-02-01")
    )
    validated = accord("agreements", "validate", str(folder))
    assert validated.returncode == 0, validated.stderr
    assert "note: custody-to-youth-offending@v1 expired on 2026-02-01" in validated.stderr
    listed = accord("agreements", "list", str(folder))
    assert listed.returncode == 0 and "custody-to-youth-offending@v1" in listed.stdout
