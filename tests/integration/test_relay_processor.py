"""The relay's duplicates meet the sharing processor: replays, recorded once, never conflicting duplicates.

The relay publishes a batch; the position is then set back, as a kill -9 between the
flush and the commit leaves it, and the relay publishes the same rows again. The
processor (a real one, as the app role) must decide each event once: one set of ledger
entries per event id, and no dead letter calling a copy a conflicting duplicate.
"""

from __future__ import annotations

from collections import Counter

from accord.dev.drain import wait_for_group
from tests.bus import running_bus
from tests.faults import dead_letters, ledger_rows
from tests.integration.test_relay import good_rows, read_events, run_relay_once, source_database


def test_a_batch_published_twice_is_decided_once(broker, tmp_path) -> None:
    with running_bus(broker, tmp_path) as bus, source_database() as source:
        settings = bus.settings.model_copy(
            update={"relay_source_url": source.relay_url, "relay_poll_interval_s": 0.1, "database_timeout_s": 3.0}
        )
        rows = good_rows(40, seed=31)
        source.insert(rows)
        assert run_relay_once(settings).returncode == 0
        source.sql("UPDATE accord_outbox_position SET last_txid = '0', last_id = 0")  # as a crash leaves it
        again = run_relay_once(settings)
        assert again.returncode == 0 and "40 published" in again.stdout, again.stderr

        on_topic = read_events(settings)
        assert len(on_topic) == 80 and len({r.event_id for r in on_topic}) == 40
        ends: dict[tuple[str, int], int] = {}
        for r in on_topic:
            ends[(r.topic, r.partition)] = max(ends.get((r.topic, r.partition), 0), r.offset + 1)
        wait_for_group(settings, settings.processor_group, ends, timeout=120)

        decisions = [r for r in ledger_rows(bus) if r.outcome in ("DISCLOSED", "WITHHELD", "NOT_COVERED")]
        assert {r.event_id for r in decisions} == {r.event_id for r in on_topic}, "an event was not decided"
        twice = [k for k, n in Counter((r.event_id, r.recipient, r.agreement_id) for r in decisions).items() if n > 1]
        assert not twice, f"{len(twice)} decisions recorded twice"
        conflicts = [d for d in dead_letters(bus) if d.get("accord.error") == "ConflictingDuplicate"]
        assert not conflicts, "a relay duplicate was taken for a conflicting one"
