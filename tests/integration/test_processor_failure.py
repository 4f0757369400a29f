"""A batch the processor cannot complete is not lost: it waits, and resumes by itself when the ledger is back."""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import text

from accord.dev.drain import wait_for_group
from accord.provision import setup_database
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import start_bus
from tests.conftest import fresh_role_database


def test_processor_waits_while_the_ledger_is_gone_and_resumes_without_a_restart(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    events = [e for e in build_scenario(40, seed=random.randrange(1 << 30)).events if e.event_type == "referral"]
    with fresh_role_database() as db:
        engine = db.owner
        bus = start_bus(broker, db, tmp_path_factory.mktemp("failure"))
        assert bus.processor is not None  # start_bus started it
        try:
            bus.publish([("referral", events[0].record)])
            with engine.begin() as conn:  # the ledger disappears under the running processor
                conn.execute(text("DROP TABLE ledger_entries CASCADE"))

            publisher = Publisher(bus.settings)
            publisher.publish("referral", events[1].record)
            report = publisher.flush()
            time.sleep(3)
            assert bus.processor.poll() is None, "the processor must wait, not exit"
            assert not [
                d for d in bus.received("salford-mash") if d.record["referral_id"] == events[1].record["referral_id"]
            ], "delivered without a ledger"

            setup_database(engine, db.app_role)  # `accord ledger init` again, as the owner
            wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=60)
            assert bus.processor.poll() is None
            [entry] = bus.ledger(event_id=events[1].record["envelope"]["event_id"])
            assert entry.outcome == "DISCLOSED"
            assert any(d.disclosure_id == entry.disclosure_id for d in bus.received("salford-mash"))
        finally:
            bus.stop_processor()
