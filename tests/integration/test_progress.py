"""Progress on long commands: drawn on a terminal's stderr, absent from pipes.

Each command runs as a subprocess twice: once with stderr on a pseudo-terminal (the
progress line must appear there, with counts and no record's contents), once with
pipes (stdout and stderr exactly the command's own lines, no progress characters).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from sqlalchemy import create_engine

from agreements import load_dir, recipients_by_type
from bus import kafka
from bus.settings import PACKAGE_ROOT
from bus.topics import TopicNames, create_topics
from ledger import append
from producers.synthetic import build_scenario
from schemas.serde import to_json
from tests.bus import make_settings
from tests.integration.test_ledger import draft

BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
ENTRIES = 2_500  # three of verify's batches of 1,000
AGENCY = "salford-council"


def run_piped(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**BASE_ENV, "ACCORD_LOG_FORMAT": "json", **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=PACKAGE_ROOT,
    )


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """(exit code, stdout, what was written to the terminal) with stderr on a pseudo-terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "accord.cli", *args],
        env={**BASE_ENV, "ACCORD_LOG_FORMAT": "json", **env},
        stdout=subprocess.PIPE,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        cwd=PACKAGE_ROOT,
    )
    os.close(slave)
    seen = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every copy of the slave is closed (the process ended)
                    break
                if not chunk:
                    break
                seen += chunk
            elif proc.poll() is not None:
                break
        assert proc.stdout is not None
        out = proc.stdout.read().decode()
        code = proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, out, seen.decode(errors="replace")


def sqlite_ledger(state: Path, n: int) -> dict[str, str]:
    env = {"ACCORD_STATE_DIR": str(state), "ACCORD_LEDGER_URL": ""}
    assert run_piped(["ledger", "init"], env).returncode == 0
    engine = create_engine(f"sqlite:///{state / 'ledger.db'}")
    try:
        append(engine, [draft(i, "progress") for i in range(1, n + 1)])
    finally:
        engine.dispose()
    return env


def test_ledger_verify_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    env = sqlite_ledger(tmp_path, ENTRIES)
    expected = f"ledger OK: {ENTRIES:,} entries, chain intact\n"

    piped = run_piped(["ledger", "verify"], env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected
    assert piped.stderr == ""

    code, out, terminal = run_on_terminal(["ledger", "verify"], env)
    assert code == 0, terminal
    assert out == expected  # stdout is the same, terminal or not
    assert "verifying ledger entries" in terminal
    assert f"/{ENTRIES}" in terminal  # counts against the ledger's size
    assert "subj-" not in terminal  # counts only: nothing of an entry


def test_publish_shows_progress_on_a_terminal_only(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    agreements = load_dir(settings.agreements_dir)
    create_topics(kafka.admin(settings), TopicNames(settings.topic_prefix).catalogue(recipients_by_type(agreements)))
    events = [e.record for e in build_scenario(n_events=200, seed=11).events if e.agency == AGENCY][:3]
    env = {
        "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
        "ACCORD_STATE_DIR": str(settings.state_dir),
    }
    args = ["publish", "--agency", AGENCY, "--type", "referral"]
    expected = "3 lines read, 3 published, 0 refused, 0 failed delivery\n"

    piped_file = tmp_path / "piped.jsonl"
    piped_file.write_text("".join(json.dumps(to_json(r)) + "\n" for r in events))
    piped = run_piped([*args, str(piped_file)], env)
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout == expected
    assert piped.stderr == ""

    terminal_file = tmp_path / "terminal.jsonl"
    terminal_file.write_text(piped_file.read_text())
    code, out, terminal = run_on_terminal([*args, str(terminal_file)], env)
    assert code == 0, terminal
    assert out == expected
    assert "publishing terminal.jsonl" in terminal
    nhs_numbers = {r["subject"]["nhs_number"] for r in events if r["subject"].get("nhs_number")}
    assert not any(n in terminal for n in nhs_numbers)  # counts only: nothing of a record
