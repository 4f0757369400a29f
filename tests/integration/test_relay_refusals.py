"""The source database refuses the relay's own statements: it stops with one line, never republishing for ever.

A refusal waiting will not fix (a trigger that raises, a CHECK a DBA added, a dead-letter
table that lost the key ON CONFLICT needs) stops the relay after the batch was published
once: exit 2, one JSON line naming the kind and SQLSTATE (never the database's text,
which here quotes a value), the position not moved. One that may pass (disk full) is
tried a few times, then the same. The database going away (its session terminated by
the server, SQLSTATE 57P01) stays a wait: the same relay goes on. Checked from outside:
the relay's exit code and stderr, the topic read with a plain consumer, the tables as
the source's owner.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bus.settings import Settings
from producers.outbox import TRANSIENT_TRIES
from tests.integration.test_relay import (
    BAD_NHS,
    GOOD_NHS,
    Source,
    _referral,
    error_lines,
    good_rows,
    read_events,
    relay_env,
    relay_settings,
    source_database,
)

SECRET = GOOD_NHS  # what the source's own error text quotes: it must never reach the relay's line

_RAISE_ON_POSITION = f"""
CREATE FUNCTION refuse_position() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'position % refused for subject {SECRET}', NEW.last_id USING ERRCODE = '{{code}}';
END $$;
CREATE TRIGGER refuse_position BEFORE UPDATE ON accord_outbox_position
    FOR EACH ROW EXECUTE FUNCTION refuse_position();
"""

_AT_COMMIT = f"""
CREATE FUNCTION refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'not now, {SECRET}' USING ERRCODE = 'P0001';
END $$;
CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER UPDATE ON accord_outbox_position
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();
"""

BREAKAGES = {
    # what the DBA did: (SQL as the tables' owner, the kind and SQLSTATE the line names, the table it names)
    "a trigger on the position raises": (
        _RAISE_ON_POSITION.replace("{code}", "P0001"),
        "RaiseException, SQLSTATE P0001",
        "UPDATE accord_outbox_position",
    ),
    "a deferred trigger refuses the commit": (_AT_COMMIT, "RaiseException, SQLSTATE P0001", "commit"),
    "a CHECK on the dead-letter table": (
        "ALTER TABLE accord_outbox_dead_letters ADD CONSTRAINT short_reason CHECK (length(reason) < 5)",
        "CheckViolation, SQLSTATE 23514",
        "INSERT INTO accord_outbox_dead_letters",
    ),
    "the dead-letter table lost its key": (
        "ALTER TABLE accord_outbox_dead_letters DROP CONSTRAINT accord_outbox_dead_letters_pkey",
        "InvalidColumnReference, SQLSTATE 42P10",
        "INSERT INTO accord_outbox_dead_letters",
    ),
}


def _rows() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Good rows, and one bad row (a dead letter) between them, so step 4 writes both tables."""
    good = good_rows(12, seed=41)
    return good, [*good[:6], ("referral", json.dumps(_referral(BAD_NHS))), *good[6:]]


def _run_relay(source: Source, broker: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess[str], Settings]:
    """``accord relay`` as a service (no --once): it must end by itself, or the test times out."""
    settings = relay_settings(broker, source)
    done = subprocess.run(
        [sys.executable, "-m", "accord.cli", "relay"],
        env=relay_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, settings


def _events(stderr: str, name: str) -> list[dict]:
    return [e for line in stderr.splitlines() if line.startswith("{") and (e := json.loads(line))["event"] == name]


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_a_refusal_stops_the_relay_with_one_line_after_publishing_the_batch_once(broker, breakage: str) -> None:
    sql, kind, doing = BREAKAGES[breakage]
    good, rows = _rows()
    with source_database() as source:
        source.sql("INSERT INTO accord_outbox_position (last_txid, last_id) VALUES ('0', 0)")
        source.sql(sql)
        source.insert(rows)

        done, settings = _run_relay(source, broker)

        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        [line] = error_lines(done.stderr)
        assert kind in line and doing in line and "docs/relay.md" in line, line
        assert SECRET not in done.stderr and BAD_NHS not in done.stderr, "the database's text reached the logs"
        assert _events(done.stderr, "relay_waiting") == [], "it waited on a refusal waiting cannot fix"
        assert source.position() == (0, 0), "the position moved past a batch the database refused"
        assert source.dead_letters() == {}
        on_topic = Counter(r.event_id for r in read_events(settings))
        assert on_topic == Counter(json.loads(p)["envelope"]["event_id"] for _, p in good), "published more than once"


def test_a_refusal_that_may_pass_is_tried_a_few_times_then_stops_the_relay(broker) -> None:
    good, rows = _rows()
    with source_database() as source:
        source.sql("INSERT INTO accord_outbox_position (last_txid, last_id) VALUES ('0', 0)")
        source.sql(_RAISE_ON_POSITION.replace("{code}", "53100"))  # disk full, as the DBA's trigger says it
        source.insert(rows)

        done, settings = _run_relay(source, broker)

        assert done.returncode == 2, done.stderr[-2000:]
        [line] = error_lines(done.stderr)
        assert f"DiskFull, SQLSTATE 53100 {TRANSIENT_TRIES + 1} times in a row" in line, line
        assert SECRET not in done.stderr
        assert len(_events(done.stderr, "relay_waiting")) == TRANSIENT_TRIES
        assert source.position() == (0, 0)
        on_topic = Counter(r.event_id for r in read_events(settings))
        ids = [json.loads(p)["envelope"]["event_id"] for _, p in good]
        assert on_topic == Counter({i: TRANSIENT_TRIES + 1 for i in ids}), "not the bounded number of tries"


def test_the_server_ending_the_relays_session_is_a_wait_and_the_same_relay_goes_on(broker, tmp_path: Path) -> None:
    good = good_rows(30, seed=43)
    with source_database() as source:
        settings = relay_settings(broker, source)
        log = tmp_path / "relay.log"
        with log.open("ab") as out:
            relay = subprocess.Popen(
                [sys.executable, "-m", "accord.cli", "relay"], env=relay_env(settings), stdout=out, stderr=out
            )
        try:
            source.insert(good[:10])
            _wait(lambda: source.position() == source.outbox()[-1][:2], relay, log)
            ended = source.sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (source.role,)
            )
            assert ended and all(ok for (ok,) in ended)
            source.insert(good[10:])
            _wait(lambda: source.position() == source.outbox()[-1][:2], relay, log)
            assert relay.poll() is None, "the relay exited when the server ended its session"
            waits = _events(log.read_text(), "relay_waiting")
            assert waits and all(w["waiting_for"] == "database" for w in waits), waits
            ids = {json.loads(p)["envelope"]["event_id"] for _, p in good}
            assert {r.event_id for r in read_events(settings)} == ids
        finally:
            relay.terminate()
            assert relay.wait(30) == 0


def _wait(done, relay: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert relay.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
