"""A batch the processor cannot complete is not lost: it exits, and a restart replays it."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import text

from accord.database import setup_database
from accord.drain import wait_for_group
from accord.processor import EXIT_BATCH_FAILED
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import start_bus
from tests.conftest import fresh_role_database


def test_processor_exits_on_ledger_failure_and_replays_after_restart(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    events = [e for e in build_scenario(40, seed=random.randrange(1 << 30)).events if e.event_type == "referral"]
    with fresh_role_database() as db:
        engine = db.owner
        bus = start_bus(broker, db, tmp_path_factory.mktemp("failure"))
        try:
            bus.publish([("referral", events[0].record)])
            with engine.begin() as conn:  # the ledger disappears under the running processor
                conn.execute(text("DROP TABLE ledger_entries CASCADE"))

            publisher = Publisher(bus.settings)
            publisher.publish("referral", events[1].record)
            report = publisher.flush()
            assert bus.processor.wait(60) == EXIT_BATCH_FAILED

            setup_database(engine, db.app_role)  # `accord ledger init` again, as the owner
            bus.start_processor()
            wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=60)
            [entry] = bus.ledger(event_id=events[1].record["envelope"]["event_id"])
            assert entry.outcome == "DISCLOSED"
            assert any(d.disclosure_id == entry.disclosure_id for d in bus.received("salford-mash"))
        finally:
            bus.stop_processor()
