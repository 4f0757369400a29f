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
from sqlalchemy import Table, func, select

from accord.dev.drain import wait_for_group
from agreements import load_dir
from ledger import EntryDraft, LedgerEntry, verify
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database


def _spawn(bus: Bus, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "run", "processor"],
        env={**os.environ, **settings_env(bus.settings), "ACCORD_BATCH_SIZE": "50"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
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
        assert time.monotonic() < deadline, f"not both processors appended: {[_appended(log) for log in logs]}"
        wave(100)
        time.sleep(0.3)
    wave(600)  # and a last burst while both are in the group
    report = publisher.flush()
    wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=120)

    result = verify(bus.engine)
    assert result.ok, result.describe()
    with bus.engine.connect() as conn:
        n, low, high, distinct_ids, events_seen = conn.execute(
            select(
                func.count(),
                func.min(LedgerEntry.seq),
                func.max(LedgerEntry.seq),
                func.count(LedgerEntry.disclosure_id.distinct()),
                func.count(LedgerEntry.event_id.distinct()),
            )
        ).one()
        ledger_events = set(conn.execute(select(LedgerEntry.event_id).distinct()).scalars())
    assert (low, high) == (1, n) and distinct_ids == n  # seqs 1..N, no gaps, no duplicate decisions
    assert result.entries == n
    assert ledger_events == published and events_seen == len(published)  # every event decided (I2)
    assert all(_appended(log) > 0 for log in logs)
    # Every event the processors decided on is in the ledger once per recipient, however the
    # group rebalanced while the second processor joined (replays append nothing twice).
    assert sum(_appended(log) for log in logs) == n


# --------------------------------------------------------------------------- two writers, the same decisions


def _decision(i: int) -> EntryDraft:
    import hashlib
    import uuid
    from datetime import UTC, datetime, timedelta

    return EntryDraft(
        disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"race:{i}")),
        event_id=f"evt-race-{i // 2}",
        event_type="custody",
        provider="synthetic-force",
        recipient=f"partner-{i % 3}",
        agreement_id="agr-race",
        agreement_version=1,
        purpose="p",
        legal_basis="l",
        outcome="DISCLOSED",
        reason=None,
        fields=("a.b",),
        consent_mode="opt-out",
        consent_version=0,
        subject_key=f"local:race:{i % 17}",
        decided_at=datetime(2026, 2, 1, tzinfo=UTC) + timedelta(milliseconds=i),
        event_digest=hashlib.sha256(f"race event {i // 2}".encode()).hexdigest(),
    )


@pytest.mark.parametrize("paths", [("engine", "engine"), ("engine", "writer")])
def test_two_writers_appending_the_same_decisions_record_each_once(pg_engine, paths: tuple[str, str]) -> None:
    """I7 under two writers deciding the same events (a rebalance): each disclosure id once, one seq, one new=True.

    Each thread appends overlapping batches of the same 1,200 decisions in its own order, so
    most batches meet ids the other has just recorded: the COPY meets UNIQUE(disclosure_id),
    and the batch is redone with a look-up (in a writer() transaction: from a savepoint).
    """
    import threading

    from ledger import append, count, init_ledger, writer

    init_ledger(pg_engine)
    decisions = [_decision(i) for i in range(1200)]
    forward = [decisions[i : i + 60] for i in range(0, 1200, 40)]  # overlapping windows
    backward = [list(reversed(b)) for b in reversed(forward)]
    seen: dict[str, list[tuple[str, int, bool]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str, path: str, batches: list) -> None:
        try:
            start.wait()
            for batch in batches:
                if path == "writer":
                    with writer(pg_engine) as conn:
                        out = append(conn, batch)
                else:
                    out = append(pg_engine, batch)
                assert [a.disclosure_id for a in out] == [d.disclosure_id for d in batch]
                for a in out:
                    seen.setdefault(a.disclosure_id, []).append((name, a.seq, a.new))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [
        threading.Thread(target=worker, args=("a", paths[0], forward)),
        threading.Thread(target=worker, args=("b", paths[1], backward)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(pg_engine) == 1200
    with pg_engine.connect() as conn:
        stored = dict(conn.execute(select(LedgerEntry.disclosure_id, LedgerEntry.seq)).all())
    assert sorted(stored.values()) == list(range(1, 1201))
    for did, sightings in seen.items():
        assert {seq for _, seq, _ in sightings} == {stored[did]}, did  # everyone was told the one seq
        assert sum(new for _, _, new in sightings) == 1, did  # and exactly one append recorded it
    result = verify(pg_engine)
    assert result.ok and result.entries == 1200, result.describe()


def test_the_database_refuses_a_second_entry_for_a_disclosure_id(pg_engine) -> None:
    """The mechanism behind I7 is the database's, not only append's: UNIQUE(disclosure_id)."""
    from dataclasses import replace

    from sqlalchemy.exc import IntegrityError

    from ledger import append, init_ledger
    from ledger.append import _rows
    from ledger.tables import DISCLOSURE_ID_UNIQUE

    init_ledger(pg_engine)
    [first] = append(pg_engine, [_decision(1)])
    # A writer that skips append's look-up: the next row, chained right, reusing the id.
    with pg_engine.connect() as conn:
        head = conn.execute(select(LedgerEntry.entry_hash).where(LedgerEntry.seq == first.seq)).scalar_one()
    rows: list = []
    _rows([replace(_decision(2), disclosure_id=_decision(1).disclosure_id)], {}, first.seq, head, [], rows.append)
    [row] = rows
    columns = [c.name for c in LedgerEntry.__table__.columns]
    with pytest.raises(IntegrityError, match=DISCLOSURE_ID_UNIQUE), pg_engine.begin() as conn:
        table = LedgerEntry.__table__
        assert isinstance(table, Table)
        conn.execute(table.insert(), [dict(zip(columns, row, strict=True))])
    assert verify(pg_engine).entries == 1
