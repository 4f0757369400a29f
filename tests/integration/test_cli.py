"""The ``accord`` command line, run as a user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bus.settings import Settings
from bus.topics import TopicNames
from producers.synthetic import build_scenario, to_json_line
from tests.bus import make_settings, read_topic, settings_env


def accord(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_lists_every_command() -> None:
    result = accord("--help")
    assert result.returncode == 0
    for command in ("dev", "topics", "publish", "run", "consume", "consent", "ledger", "demo"):
        assert f"    {command}" in result.stdout, command


def test_ledger_init_and_verify_on_sqlite(tmp_path: Path) -> None:
    env = {"ACCORD_STATE_DIR": str(tmp_path), "ACCORD_LEDGER_URL": ""}
    assert accord("ledger", "init", env=env).returncode == 0
    result = accord("ledger", "verify", env=env)
    assert result.returncode == 0 and "ledger OK: 0 entries" in result.stdout


def test_consent_needs_a_purpose_or_recipient(tmp_path: Path) -> None:
    env = {"ACCORD_STATE_DIR": str(tmp_path), "ACCORD_LEDGER_URL": ""}
    result = accord("consent", "deny", "--subject", "nhs:9434765919", env=env)
    assert result.returncode == 2 and "names a purpose, a recipient or a recipient class" in result.stderr


def _events_on_topic(settings: Settings, topic: str) -> list[str]:
    return [headers["accord.event_id"].decode() for headers, _ in read_topic(settings, topic)]


def test_publish_refuses_bad_lines_by_number_and_field_and_publishes_the_rest(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    env = settings_env(settings)
    first = accord("topics", "create", env=env)
    assert first.returncode == 0 and "created  " + TopicNames(settings.topic_prefix).event("custody") in first.stdout
    again = accord("topics", "create", env=env)
    assert again.returncode == 0 and "created" not in again.stdout  # idempotent

    good = [e for e in build_scenario(n_events=40, seed=3).events if e.agency == "met-police"][:3]
    bad_date = json.loads(to_json_line(good[1]))
    bad_date["subject"]["date_of_birth"] = "not-a-date"
    lines = [
        to_json_line(good[0]),
        "{this is not json",
        json.dumps(bad_date),
        to_json_line(good[2]).replace('"met-police"', '"gmp-police"'),
        to_json_line(good[2]),
    ]
    path = tmp_path / "custody.jsonl"
    path.write_text("\n".join(lines) + "\n")

    result = accord("publish", "--agency", "met-police", "--type", "custody", str(path), env=env)
    assert result.returncode == 1
    assert "5 lines read, 2 published, 3 refused" in result.stdout
    assert f"{path}:2: (json): not valid JSON" in result.stderr
    assert f"{path}:3: subject.date_of_birth:" in result.stderr
    assert f"{path}:4: envelope.source_agency:" in result.stderr
    published = _events_on_topic(settings, TopicNames(settings.topic_prefix).event("custody"))
    assert sorted(published) == sorted([good[0].record["envelope"]["event_id"], good[2].record["envelope"]["event_id"]])
