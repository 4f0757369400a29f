"""End to end on the real broker and PostgreSQL: a v1 and a v2 referral both reach the hub.

The catalogue ships referral v1 and v2 (v2 adds the optional
``subject.interpreter_language``). A source system still on v1 and one already
on v2 publish side by side; the processor decodes each with the version it was
written with, and the partner gets what the agreement allows, from either: the
field v2 added is withheld, since no agreement may name it while v1 is in the
catalogue (agreements.loader).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from accord.sharing.decide import disclosure_id
from producers.synthetic import build_scenario
from schemas import catalogue
from schemas.projection import project_record
from schemas.serde import Catalogue, to_json
from tests.bus import Bus, running_bus


@pytest.fixture(scope="module")
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    with running_bus(broker, tmp_path_factory.mktemp("bus")) as bus:
        yield bus


def _referrals(n: int) -> list[dict[str, Any]]:
    """Fresh synthetic referrals (new ids, new people), as v1 writes them."""
    found: list[dict[str, Any]] = []
    while len(found) < n:
        scenario = build_scenario(n_events=80, seed=random.SystemRandom().randrange(1 << 30))
        found += [e.record for e in scenario.events if e.event_type == "referral"]
    return found[:n]


def test_the_shipped_referral_has_a_v1_and_a_v2() -> None:
    referral = catalogue.default()["referral"]
    assert [v.number for v in referral.versions] == [1, 2]
    assert Catalogue.default().fingerprint_of("referral") == referral.latest.fingerprint  # producers write v2


def test_a_v1_and_a_v2_referral_both_reach_the_hub_with_only_allowed_fields(bus: Bus) -> None:
    old, new = _referrals(2)
    new["subject"]["interpreter_language"] = "Polish"
    serde = Catalogue.default()
    v1_bytes = serde.encode("referral.v1", old)
    v1, v2 = catalogue.default()["referral"].versions
    assert v1_bytes[2:10] == v1.fingerprint
    assert serde.encode("referral", new)[2:10] == v2.fingerprint

    bus.publish([("referral", v1_bytes), ("referral", new)])

    agreement = next(a for a in bus.agreements if a.id == "referral-to-mash")
    allowed = list(agreement.fields["referral"])
    received = {d.disclosure_id: d for d in bus.received("salford-mash")}
    for event in (old, new):
        event_id = event["envelope"]["event_id"]
        did = disclosure_id(event_id, "salford-mash", agreement.id, agreement.version)
        assert did in received, f"the {'v1' if event is old else 'v2'} referral did not reach the hub"
        got = received[did].record
        assert to_json(got) == to_json(project_record(event, allowed))
        assert "interpreter_language" not in got["subject"]
        [entry] = bus.ledger(disclosure_id=did)
        assert (entry.outcome, entry.recipient, entry.seq) == ("DISCLOSED", "salford-mash", received[did].ledger_seq)
