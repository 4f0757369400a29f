"""End to end: suspending an agreement retracts what was disclosed under it, and stops new sharing."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from accord.processor.agreement_feed import publish_agreements
from agreements import Status
from ledger import verify
from producers.synthetic import build_scenario
from tests.bus import Bus, running_bus
from tests.integration.test_end_to_end import _wait_for


@pytest.fixture
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """A processor of its own: suspending an agreement must not leak into other tests."""
    with running_bus(broker, tmp_path_factory.mktemp("suspend")) as bus:
        yield bus


def _custody(n: int) -> list[dict]:
    scenario = build_scenario(n_events=120, seed=random.SystemRandom().randrange(1 << 30))
    found = [e.record for e in scenario.events if e.event_type == "custody"]
    return found[:n]


def test_suspending_an_agreement_retracts_its_disclosures_and_stops_new_ones(bus: Bus) -> None:
    first, later = _custody(2)
    bus.publish([("custody", first)])
    disclosed = bus.ledger(event_id=first["envelope"]["event_id"], agreement_id="custody-to-prosecution")
    assert {(e.recipient, e.outcome) for e in disclosed} == {("cps", "DISCLOSED"), ("hmcts", "DISCLOSED")}

    current = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
    suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
    publish_agreements(bus.settings, [suspended])
    # The processor follows the feed without a consumer group: the retractions show it applied it.

    for entry in disclosed:
        [retraction] = _wait_for(lambda entry=entry: bus.ledger(refers_to=entry.disclosure_id))
        assert retraction.outcome == "RETRACTED" and retraction.recipient == entry.recipient
        assert retraction.reason == f"agreement custody-to-prosecution suspended (version {suspended.version})"
        notices = _wait_for(
            lambda entry=entry: [
                r for r in bus.retractions(entry.recipient) if r.retracts_disclosure_id == entry.disclosure_id
            ]
        )
        assert {(n.retraction_id, n.ledger_seq) for n in notices} == {(retraction.disclosure_id, retraction.seq)}

    # The next custody event is not shared with the CPS or the courts at all.
    bus.publish([("custody", later)])
    later_entries = bus.ledger(event_id=later["envelope"]["event_id"])
    assert later_entries, "the event was decided under the other custody agreements"
    assert not [e for e in later_entries if e.agreement_id == "custody-to-prosecution"]
    received = {d.disclosure_id for d in bus.received("cps")}
    assert not received & {e.disclosure_id for e in later_entries}
    assert verify(bus.engine).ok
