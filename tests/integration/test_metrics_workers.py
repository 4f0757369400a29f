"""`accord run processor --workers 2` with ACCORD_HEALTH_PORT: worker i answers on port + i.

Each worker counts only what it did: the decisions of the two, summed, equal the
ledger's; exactly one of them holds the control-plane lease and exports the
control plane's gauges, and the other exports none of them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from collections import Counter

from sqlalchemy import func, select

from accord.dev.drain import wait_for_group
from agreements import load_dir
from ledger import LedgerEntry
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database
from tests.integration.test_metrics_processor import by, eventually, get, scrape
from tests.ports import free_port


def test_two_workers_answer_on_port_and_port_plus_one_and_sum_to_the_ledger(broker, tmp_path_factory) -> None:
    with fresh_role_database() as db:
        port = free_port(2)
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("metrics-workers")).model_copy(
            update={"health_port": port}
        )
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        log = (settings.state_dir / "workers.log").open("ab")
        workers = subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "run", "processor", "--workers", "2"],
            env={**os.environ, **settings_env(settings)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for p in (port, port + 1):
                eventually(f"worker on port {p} ready", lambda p=p: get(p, "/readyz") == (200, "ready\n"))
            publisher = Publisher(settings)
            scenario = build_scenario(200, seed=random.randrange(1 << 30), n_malformed=0)
            for event in scenario.events:
                publisher.publish(event.event_type, event.record, agency=event.agency)
            report = publisher.flush()
            assert not report.failed
            wait_for_group(settings, settings.processor_group, report.end_offsets, timeout=120)

            with bus.engine.connect() as conn:
                ledger = Counter(
                    {
                        (o,): n
                        for o, n in conn.execute(
                            select(LedgerEntry.outcome, func.count()).group_by(LedgerEntry.outcome)
                        ).all()
                    }
                )
            first, second = scrape(port), scrape(port + 1)
            summed = by(first, "accord_decisions_total", "outcome") + by(second, "accord_decisions_total", "outcome")
            assert summed == ledger
            events = by(first, "accord_events_consumed_total") + by(second, "accord_events_consumed_total")
            assert events == Counter({(): len(scenario.events)})

            def one_leader() -> bool:
                a, b = scrape(port), scrape(port + 1)
                leaders = [s[("accord_control_plane_leader", ())] for s in (a, b)]
                if sorted(leaders) != [0, 1]:
                    return False
                follower = (a, b)[leaders.index(0)]
                leader = (a, b)[leaders.index(1)]
                assert not [k for k in follower if k[0].startswith("accord_retraction_sweep")]
                return ("accord_retraction_sweep_last_run_timestamp_seconds", ()) in leader

            eventually("exactly one worker reports the control plane", one_leader, timeout=30)
        finally:
            workers.send_signal(signal.SIGTERM)
            try:
                workers.wait(60)
            except subprocess.TimeoutExpired:
                workers.kill()
                workers.wait()
