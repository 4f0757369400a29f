"""A batch the processor cannot complete is not lost: it waits, and resumes by itself when the ledger is back.

The ledger comes back as an operator brings it back (docs/production.md, "Backing up the
ledger"): restored from a backup made by pg_dump as the owner, then `accord ledger init`.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url, text

from accord.dev.drain import wait_for_group
from accord.provision import setup_database
from ledger import verify
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import start_bus
from tests.conftest import TEST_DATABASE_URL, RoleDatabase, fresh_role_database


def _psql_tool(tool: str, db: RoleDatabase, *args: str) -> None:
    """pg_dump or psql as the schema's owner role, on the test server."""
    server = make_url(TEST_DATABASE_URL)
    connection = ["--host", server.host or "127.0.0.1", "--port", str(server.port or 5432)]
    connection += ["--username", db.owner_role, "--dbname", server.database or "test"]
    done = subprocess.run([tool, *connection, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_processor_waits_while_the_ledger_is_gone_and_resumes_without_a_restart(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """1. An event decided, the ledger backed up. 2. ledger_entries dropped under the running processor:
    the next event waits, undelivered. 3. The table restored from the backup, `accord ledger init`: the
    processor decides the waiting event on the restored chain, with no restart, and the ledger verifies."""
    events = [e for e in build_scenario(40, seed=random.randrange(1 << 30)).events if e.event_type == "referral"]
    state = tmp_path_factory.mktemp("failure")
    backup = Path(state) / "ledger_entries.sql"
    with fresh_role_database() as db:
        engine = db.owner
        bus = start_bus(broker, db, state)
        assert bus.processor is not None  # start_bus started it
        try:
            bus.publish([("referral", events[0].record)])  # 1. decided and committed
            before = bus.ledger()
            assert before
            _psql_tool("pg_dump", db, "--table", f'"{db.schema}".ledger_entries', "--file", str(backup))
            with engine.begin() as conn:  # 2. the ledger disappears under the running processor
                conn.execute(text("DROP TABLE ledger_entries CASCADE"))

            publisher = Publisher(bus.settings)
            publisher.publish("referral", events[1].record)
            report = publisher.flush()
            time.sleep(3)
            assert bus.processor.poll() is None, "the processor must wait, not exit"
            assert not [
                d for d in bus.received("salford-mash") if d.record["referral_id"] == events[1].record["referral_id"]
            ], "delivered without a ledger"

            _psql_tool("psql", db, "--quiet", "--set", "ON_ERROR_STOP=1", "--file", str(backup))  # 3.
            setup_database(engine, db.app_role)  # `accord ledger init` again, as the owner
            wait_for_group(bus.settings, bus.settings.processor_group, report.end_offsets, timeout=60)
            assert bus.processor.poll() is None
            [entry] = bus.ledger(event_id=events[1].record["envelope"]["event_id"])
            assert entry.outcome == "DISCLOSED"
            assert any(d.disclosure_id == entry.disclosure_id for d in bus.received("salford-mash"))
            after = bus.ledger()
            assert after[: len(before)] == before and entry.seq > before[-1].seq  # chained on, not from genesis
            result = verify(db.app)
            assert result.ok and result.entries == len(after)
        finally:
            bus.stop_processor()
