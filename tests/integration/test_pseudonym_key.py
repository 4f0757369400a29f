"""A processor started with another pseudonym key than the one in force is refused before it decides.

Pseudonyms are HMACs under ACCORD_PSEUDONYM_KEY. A processor with a mistyped key, or half
the workers given a new one, would hand partners other pseudonyms for the same people,
also for what it delivers again from the ledger (I8), and nothing downstream could tell.
The ledger database keeps the key's check value; changing the key is an explicit act.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, select

from accord.dev.drain import wait_for_group
from accord.provision import init_database
from accord.sharing.pseudonymise import key_check, token
from ledger.pseudonym_keys import PseudonymKeyChanged, accept_key, key_in_force, require_key
from ledger.tables import PseudonymKeyCheck
from producers import Publisher
from tests.bus import TEST_PSEUDONYM_KEY, running_bus, settings_env
from tests.integration.test_delivery_follows_ledger import _events

OTHER_KEY = "another-pseudonym-key-fedcba9876543210"


def test_key_check_tells_keys_apart_and_shows_neither() -> None:
    a, b = key_check(TEST_PSEUDONYM_KEY.encode()), key_check(OTHER_KEY.encode())
    assert a != b and a == key_check(TEST_PSEUDONYM_KEY.encode()) and len(a) == 16
    assert TEST_PSEUDONYM_KEY not in a and token(TEST_PSEUDONYM_KEY.encode(), "x", "y")[4:] != a


def test_the_first_key_is_recorded_another_is_refused_until_accepted_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    init_database(engine)
    a, b = key_check(TEST_PSEUDONYM_KEY.encode()), key_check(OTHER_KEY.encode())
    assert key_in_force(engine) is None
    require_key(engine, a)
    require_key(engine, a)  # the same key again: nothing new
    with pytest.raises(PseudonymKeyChanged, match=f"check {b}; the ledger's is {a}"):
        require_key(engine, b)
    assert accept_key(engine, b) == a
    require_key(engine, b)
    with pytest.raises(PseudonymKeyChanged):
        require_key(engine, a)  # the old key is refused in its turn
    with engine.connect() as conn:
        rows = conn.execute(select(PseudonymKeyCheck.check_value, PseudonymKeyCheck.reason)).all()
    assert sorted(rows) == sorted([(a, "first use"), (b, "accepted")])


def _accord(env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_processor_with_another_key_is_refused_and_decides_nothing_until_the_key_is_accepted(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = _events("natal_care", 2, where=lambda r: bool(r["mother"]["nhs_number"]))
    with running_bus(broker, tmp_path_factory.mktemp("pseudonym-key")) as bus:
        bus.publish([("natal_care", first)])
        assert bus.ledger(event_id=first["envelope"]["event_id"], recipient="salford-research")
        bus.stop_processor()

        bus.settings = bus.settings.model_copy(update={"pseudonym_key": SecretStr(OTHER_KEY)})
        publisher = Publisher(bus.settings)
        publisher.publish("natal_care", second)
        sent = publisher.flush()
        assert not sent.failed
        env = settings_env(bus.settings)
        refused = _accord(env, "run", "processor")
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        last = refused.stderr.strip().splitlines()[-1]
        a, b = key_check(TEST_PSEUDONYM_KEY.encode()), key_check(OTHER_KEY.encode())
        assert f"ACCORD_PSEUDONYM_KEY is not the key in force (check {b}; the ledger's is {a})" in last
        assert OTHER_KEY not in refused.stderr and TEST_PSEUDONYM_KEY not in refused.stderr
        assert bus.ledger(event_id=second["envelope"]["event_id"]) == []

        accepted = _accord(env, "ledger", "accept-pseudonym-key")
        assert (
            accepted.returncode == 0
            and f"pseudonym key {b} is in force from now on (it replaces {a})" in accepted.stdout
        )
        bus.start_processor()
        wait_for_group(bus.settings, bus.settings.processor_group, sent.end_offsets, timeout=60)
        [entry] = bus.ledger(event_id=second["envelope"]["event_id"], recipient="salford-research")
        [got] = [d for d in bus.received("salford-research") if d.disclosure_id == entry.disclosure_id]
        assert got.record["mother"]["nhs_number"] == token(
            OTHER_KEY.encode(), "salford-research", second["mother"]["nhs_number"]
        )
