"""Two real processors in one consumer group append to one ledger: no gaps, no duplicates.

Both run as the application role on a fresh schema; events go to the 4-partition
event topics in waves until each processor has appended at least once, so the two
have really been writing at the same time, then the ledger must verify with seqs
1..N and one entry per disclosure id.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from accord.drain import wait_for_group
from ledger import LedgerEntry, verify
from producers import Publisher
from producers.synthetic import build_scenario
from agreements import load_dir
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database


def _spawn(bus: Bus, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "run", "processor"],
        env={**os.environ, **settings_env(bus.settings), "ACCORD_BATCH_SIZE": "50"},
        stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )


def _appended(log: Path) -> int:
    """Entries a processor says it appended (its JSON 'batch' log lines)."""
    total = 0
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"batch"' in line:
            try:
                total += json.loads(line).get("appended", 0)
            except json.JSONDecodeError:
                continue
    return total


@pytest.fixture
def two_processors(broker: str, tmp_path: Path) -> Iterator[tuple[Bus, list[Path]]]:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        procs = [_spawn(bus, log) for log in logs]
        try:
            yield bus, logs
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def test_two_processors_append_without_gaps_or_duplicates(two_processors: tuple[Bus, list[Path]]) -> None:
    bus, logs = two_processors
    scenario = build_scenario(n_events=3000, seed=random.SystemRandom().randrange(1 << 30), n_malformed=0)
    events = iter(scenario.events)
    publisher = Publisher(bus.settings)
    published: set[str] = set()

    def wave(n: int) -> None:
        for _ in range(n):
            e = next(events)
            publisher.publish(e.event_type, e.record)
            published.add(e.record["envelope"]["event_id"])
        publisher.flush()

    # Keep events coming until both processors have appended (both joined and got partitions).
    deadline = time.monotonic() + 90
    while not all(_appended(log) > 0 for log in logs):
        assert time.monotonic() < deadline, f"not both processors appended: {[_appended(l) for l in logs]}"
        wave(100)
        time.sleep(0.3)
    wave(600)  # and a last burst while both are in the group
    report = publisher.flush()
    wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=120)

    result = verify(bus.engine)
    assert result.ok, result.describe()
    with bus.engine.connect() as conn:
        n, low, high, distinct_ids, events_seen = conn.execute(
            select(func.count(), func.min(LedgerEntry.seq), func.max(LedgerEntry.seq),
                   func.count(LedgerEntry.disclosure_id.distinct()), func.count(LedgerEntry.event_id.distinct()))
        ).one()
        ledger_events = set(conn.execute(select(LedgerEntry.event_id).distinct()).scalars())
    assert (low, high) == (1, n) and distinct_ids == n  # seqs 1..N, no gaps, no duplicate decisions
    assert result.entries == n
    assert ledger_events == published and events_seen == len(published)  # every event decided (I2)
    assert all(_appended(log) > 0 for log in logs)
    # Every event the processors decided on is in the ledger once per recipient, however the
    # group rebalanced while the second processor joined (replays append nothing twice).
    assert sum(_appended(log) for log in logs) == n
