"""`accord run processor --workers 2`: starting, stopping and killing workers never loses an
event or takes another worker down, and the control plane runs in exactly one of them.

From outside: the workers are seen as OS processes (their pids), the control-plane lease
as the advisory lock in pg_locks, and what was shared as partner topics and the ledger
(tests/faults.audit), which must verify against the checkpoints the lease holder signed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text

from accord.dev.drain import wait_for_group
from accord.processor.agreement_feed import publish_agreements
from accord.processor.control_lease import lease_key
from agreements import Status, load_dir
from ledger import verify
from ledger.checkpoint import checkpoints, generate_key_file
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database
from tests.faults import audit, ledger_rows
from tests.integration.test_end_to_end import _wait_for

ROUNDS = 10
PER_ROUND = 60


def _children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except FileNotFoundError:
        return set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat  # a zombie is dead


def _lease_holders(bus: Bus, schema: str) -> list[int]:
    """OS pids of the workers whose session holds this schema's control-plane advisory lock."""
    key = lease_key(schema) & 0xFFFF_FFFF_FFFF_FFFF  # pg_locks shows a bigint key as two oids
    with bus.engine.connect() as conn:
        names = (
            conn.execute(
                text(
                    "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi AND l.objid = :lo"
                ),
                {"hi": key >> 32, "lo": key & 0xFFFF_FFFF},
            )
            .scalars()
            .all()
        )
    return [int(n.rsplit(":", 1)[1]) for n in names]


def _start_workers(bus: Bus, n: int) -> subprocess.Popen:
    log = (bus.settings.state_dir / "workers.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "run", "processor", "--workers", str(n)],
        env={
            **os.environ,
            **settings_env(bus.settings),
            "ACCORD_CHECKPOINT_INTERVAL_S": "1",
            "ACCORD_CHECKPOINT_EVERY_ENTRIES": "100",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_children(pid: int, n: int, timeout: float = 30) -> set[int]:
    return _wait_for(lambda: (lambda c: c if len(c) == n else None)(_children(pid)), timeout=timeout)


def _stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def _bus(broker: str, db, state: Path) -> Bus:
    settings = make_settings(broker, db.app_url, state)
    generate_key_file(state / "ledger-signing.key", settings.ledger_origin)
    bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
    bus.create_topics()
    return bus


def test_ten_starts_of_two_workers_together_lose_none(broker, tmp_path_factory) -> None:
    scenario = build_scenario(ROUNDS * PER_ROUND, seed=random.SystemRandom().randrange(1 << 30), n_malformed=0)
    with fresh_role_database() as db:
        bus = _bus(broker, db, tmp_path_factory.mktemp("workers"))
        publisher = Publisher(bus.settings)
        holders: list[list[int]] = []
        for r in range(ROUNDS):
            supervisor = _start_workers(bus, 2)
            try:
                first = _wait_children(supervisor.pid, 2)
                for e in scenario.events[r * PER_ROUND : (r + 1) * PER_ROUND]:
                    publisher.publish(e.event_type, e.record)
                report = publisher.flush()
                assert not report.failed
                wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=120)
                holders.append(_wait_for(lambda: _lease_holders(bus, db.schema) or None))
                # Both workers started together are still the same two processes: none exited.
                assert _children(supervisor.pid) == first and all(_alive(p) for p in first), f"round {r}"
                assert set(holders[-1]) <= first
            finally:
                assert _stop(supervisor) == 0
        valid = {e.record["envelope"]["event_id"]: (e.event_type, e.record) for e in scenario.events}
        breaks = audit(bus, valid, bus.agreements, datetime.now(UTC).date())
        assert breaks.total() == 0, breaks
        # Exactly one worker held the control plane in every round.
        assert all(len(h) == 1 for h in holders), holders
        assert "worker_exited" not in (bus.settings.state_dir / "workers.log").read_text()
        assert verify(db.owner).ok


def test_killing_workers_never_takes_another_down_and_the_control_plane_moves(broker, tmp_path_factory) -> None:
    rng = random.Random()
    scenario = build_scenario(1500, seed=rng.randrange(1 << 30), n_malformed=5)
    with fresh_role_database() as db:
        bus = _bus(broker, db, tmp_path_factory.mktemp("workers-kill"))
        supervisor = _start_workers(bus, 2)
        try:
            workers = _wait_children(supervisor.pid, 2)
            publisher = Publisher(bus.settings)
            half = len(scenario.events) // 2
            for e in scenario.events[:half]:
                publisher.publish(e.event_type, e.record)
            publisher.flush()
            # 1. kill the lease holder: the other worker lives on, and the lease moves to a live worker.
            [holder] = _wait_for(lambda: _lease_holders(bus, db.schema) or None)
            other = (workers - {holder}).pop()
            os.kill(holder, signal.SIGKILL)
            taken = _wait_for(lambda: [p for p in _lease_holders(bus, db.schema) if p != holder] or None, timeout=40)
            assert _alive(other), "killing one worker took the other down"
            assert len(taken) == 1 and _alive(taken[0])
            # 2. kill both at once, mid-stream: the supervisor starts both again.
            for e in scenario.events[half:]:
                publisher.publish(e.event_type, e.record)
            for event_type, raw in scenario.malformed:
                publisher.publish_raw(event_type, raw, key=b"raw")
            now = _wait_children(supervisor.pid, 2)
            for pid in now:
                os.kill(pid, signal.SIGKILL)
            report = publisher.flush()
            assert not report.failed
            # Started again: two live children, neither of them the killed ones.
            _wait_for(
                lambda: (lambda c: len(c) == 2 and not c & now and all(map(_alive, c)))(_children(supervisor.pid)),
                timeout=60,
            )
            wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=180)
            # 3. suspend an agreement: the one lease holder retracts, once per disclosure.
            current = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
            suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
            publish_agreements(bus.settings, [suspended])
            disclosed = [r for r in ledger_rows(bus) if r.agreement_id == current.id and r.outcome == "DISCLOSED"]
            assert disclosed
            _wait_for(
                lambda: len([r for r in ledger_rows(bus) if r.outcome == "RETRACTED"]) >= len(disclosed) or None,
                timeout=60,
            )
            time.sleep(3)  # a second sweeper, if there were one, would have had time to act
            assert supervisor.poll() is None
        finally:
            assert _stop(supervisor) == 0
        rows = ledger_rows(bus)
        retracted = [r.refers_to for r in rows if r.outcome == "RETRACTED"]
        assert sorted(retracted) == sorted(r.disclosure_id for r in disclosed)
        received = {r.retracts_disclosure_id for p in ("cps", "hmcts") for r in bus.retractions(p)}
        assert received == set(retracted)
        valid = {e.record["envelope"]["event_id"]: (e.event_type, e.record) for e in scenario.events}
        # Every event was decided before the suspension, under the versions in force then.
        breaks = audit(bus, valid, bus.agreements, datetime.now(UTC).date())
        assert breaks.total() == 0, breaks
        result = verify(db.owner)
        assert result.ok, result
        assert checkpoints(db.owner), "the lease holder signed no checkpoint"


def test_a_supervisor_killed_with_sigkill_takes_its_workers_with_it(broker, tmp_path_factory) -> None:
    """No worker runs on unsupervised after kill -9 of `--workers 2`: a new supervisor would start two
    more beside them, and their health ports would answer for it."""
    with fresh_role_database() as db:
        bus = _bus(broker, db, tmp_path_factory.mktemp("workers-orphans"))
        supervisor = _start_workers(bus, 2)
        workers = _wait_children(supervisor.pid, 2)
        log_file = bus.settings.state_dir / "workers.log"
        _wait_for(lambda: log_file.read_text().count("agreements_caught_up") >= 2 or None, timeout=60)
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        _wait_for(lambda: not any(map(_alive, workers)) or None, timeout=60)
        log = log_file.read_text()
        assert log.count("processor_stopped") == 2, log[-2000:]  # each stopped as on SIGTERM, not killed
