"""End to end: suspending an agreement retracts what was disclosed under it, and stops new sharing."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

import consent
from accord.processor.agreement_feed import publish_agreements
from accord.sharing.decide import subject_key
from agreements import Status
from agreements.partners import load_partners
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


def test_what_was_ended_is_retracted_however_soon_it_was_undone(bus: Bus) -> None:
    """A suspension reinstated by the next version, and a citizen's deny followed by a
    permit, both before the sweep could see the first: every disclosure made before the
    ending is retracted all the same, in the ledger and on the partner's topic (it
    depended on when the sweep ran: 0 of N, or one 500-entry chunk of N)."""
    custody = _custody(3)
    natal = [e for e in build_scenario(200, seed=random.SystemRandom().randrange(1 << 30)).events]
    natal_care = next(e.record for e in natal if e.event_type == "natal_care")
    bus.publish([("custody", e) for e in custody[:2]] + [("natal_care", natal_care)])
    under_v1 = [
        e
        for c in custody[:2]
        for e in bus.ledger(event_id=c["envelope"]["event_id"], agreement_id="custody-to-prosecution")
    ]
    [visiting] = bus.ledger(event_id=natal_care["envelope"]["event_id"], recipient="salford-health-visiting")
    assert {e.outcome for e in [*under_v1, visiting]} == {"DISCLOSED"}

    # The mother says stop, then at once says yes again; the agreement is suspended and reinstated.
    known = consent.KnownScopes.from_partners(load_partners(bus.settings.partners_file))
    subject = subject_key("natal_care", natal_care)
    for decision in (consent.ConsentDecision.DENY, consent.ConsentDecision.PERMIT):
        consent.record(bus.engine, subject, decision, known=known, recipient="salford-health-visiting")
    current = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
    suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
    reinstated = current.model_copy(update={"version": current.version + 2})
    publish_agreements(bus.settings, [suspended, reinstated])
    bus.agreements += [suspended, reinstated]  # partners decode with every version they signed

    for entry in [*under_v1, visiting]:
        [retraction] = _wait_for(lambda entry=entry: bus.ledger(refers_to=entry.disclosure_id))
        assert retraction.outcome == "RETRACTED" and retraction.recipient == entry.recipient
        notices = _wait_for(
            lambda entry=entry: [
                r for r in bus.retractions(entry.recipient) if r.retracts_disclosure_id == entry.disclosure_id
            ]
        )
        assert {n.retraction_id for n in notices} == {retraction.disclosure_id}

    # What came after the ending governs what comes after it: the reinstated version shares again.
    bus.publish([("custody", custody[2])])
    after = bus.ledger(event_id=custody[2]["envelope"]["event_id"], agreement_id="custody-to-prosecution")
    assert {(e.outcome, e.agreement_version) for e in after} == {("DISCLOSED", reinstated.version)}
    bus.publish([("custody", custody[0])])  # nothing more is retracted for a replay, and nothing twice
    retracted = [e for e in bus.ledger(outcome="RETRACTED")]
    assert len(retracted) == len({e.refers_to for e in retracted}) == len(under_v1) + 1
    assert not {e.disclosure_id for e in after} & {e.refers_to for e in retracted}
    assert verify(bus.engine).ok
