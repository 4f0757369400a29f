"""kill -9 mid-stream: the restarted processor counts only what it appended, never a replay.

The killed process's counters die with it (the ledger stays the record). What the
restarted one shows must be exactly the ledger entries made after the kill. To make
a replay certain, not a matter of where the kill fell, the source system then sends
100 of its events again (a retry, the same ids and content): the new process reads
events the ledger already holds, redelivers them, and must count none of their
decisions.
"""

from __future__ import annotations

import random
import time
from collections import Counter

from sqlalchemy import func, select, text

from accord.dev.drain import committed, wait_for_group
from agreements import load_dir
from ledger import LedgerEntry
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings
from tests.conftest import RoleDatabase, fresh_role_database
from tests.integration.test_metrics_processor import by, eventually, get, scrape
from tests.ports import free_port

DECIDED = ("DISCLOSED", "WITHHELD", "NOT_COVERED")


def _ledger_after(bus: Bus, seq: int) -> Counter:
    with bus.engine.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.outcome, func.count())
            .where(LedgerEntry.seq > seq, LedgerEntry.outcome.in_(DECIDED))
            .group_by(LedgerEntry.outcome)
        ).all()
    return Counter({(o,): n for o, n in rows})


def _events_after(bus: Bus, seq: int) -> int:
    with bus.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count(func.distinct(LedgerEntry.event_id))).where(LedgerEntry.seq > seq)
            ).scalar_one()
        )


def _sessions(db: RoleDatabase) -> int:
    with db.admin.connect() as conn:
        return int(
            conn.execute(
                text("SELECT count(*) FROM pg_stat_activity WHERE usename = :role"), {"role": db.app_role}
            ).scalar_one()
        )


def _head(bus: Bus) -> int:
    with bus.engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.max(LedgerEntry.seq), 0))).scalar_one())


def test_a_restarted_processor_does_not_count_what_it_replays(broker, tmp_path_factory) -> None:
    with fresh_role_database() as db:
        port = free_port()
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("metrics-kill")).model_copy(
            update={"health_port": port, "batch_size": 10}
        )
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        publisher = Publisher(settings)
        # Enough that the kill lands mid-stream: at batches of 10 it takes seconds, not one poll of `eventually`.
        scenario = build_scenario(2000, seed=random.randrange(1 << 30), n_malformed=0)
        for event in scenario.events:
            publisher.publish(event.event_type, event.record, agency=event.agency)
        report = publisher.flush()
        assert not report.failed
        ends = dict(report.end_offsets)  # the report goes on counting what is published later

        bus.start_processor()
        assert bus.processor is not None
        try:
            eventually("some decisions recorded", lambda: _head(bus) > 50, timeout=60)
            bus.processor.kill()  # SIGKILL: no batch finished, no goodbye
            bus.processor.wait()
            # A COMMIT (or an offset commit) the dead process sent may still be in the server's
            # hands: read the ledger's head and the group's offsets only once its database
            # sessions are gone and its group session has expired, so nothing of it lands later.
            eventually("the killed process's sessions ended", lambda: _sessions(db) == 0, timeout=30)
            time.sleep(settings.session_timeout_ms / 1000)
            head = _head(bus)
            done = committed(settings, settings.processor_group, list(ends))
            assert sum(done.values()) < sum(ends.values()), "it finished before the kill: nothing to replay"

            bus.start_processor()  # the same port, a new process with counters at 0
            wait_for_group(settings, settings.processor_group, ends, timeout=120)
            for event in scenario.events[:100]:  # the source system's retry
                publisher.publish(event.event_type, event.record, agency=event.agency)
            again = publisher.flush()
            assert not again.failed
            wait_for_group(settings, settings.processor_group, again.end_offsets, timeout=120)
            eventually("the new process answers", lambda: get(port, "/readyz") == (200, "ready\n"))
            after = _ledger_after(bus, head)
            assert after, "the restarted processor decided nothing"
            samples = scrape(port)
            assert by(samples, "accord_decisions_total", "outcome") == after
            # It did read the events sent again, and recorded nothing of them.
            consumed = sum(by(samples, "accord_events_consumed_total").values())
            assert consumed == sum(ends.values()) - sum(done.values()) + 100
            assert _events_after(bus, head) <= sum(ends.values()) - sum(done.values())
        finally:
            bus.stop_processor()
