"""Which earlier disclosures a consent withdrawal retracts (pure)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from accord.sharing.decide import Context
from accord.sharing.retraction import retraction_id, retractions_for
from agreements import load_dir
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord
from ledger import EntryDraft

AGREEMENTS = {a.key: a for a in load_dir(PACKAGE_ROOT / "agreements" / "examples")}
NOW = Context(datetime(2026, 6, 1, tzinfo=UTC))


def _disclosed(agreement_id: str, recipient: str, disclosure_id: str) -> EntryDraft:
    a = AGREEMENTS[f"{agreement_id}@v1"]
    return EntryDraft(
        disclosure_id,
        "e1",
        a.event_types[0],
        a.providers[0],
        recipient,
        a.id,
        a.version,
        a.purpose.value,
        a.legal_basis,
        "DISCLOSED",
        None,
        ("envelope.event_id",),
        a.consent_mode.value,
        0,
        "nhs:9434765919",
        datetime(2026, 5, 1, tzinfo=UTC),
    )


def _consent(id: int, decision: ConsentDecision, recipient: str) -> ConsentRecord:
    return ConsentRecord(id, "nhs:9434765919", None, recipient, decision, datetime(2026, 5, id, tzinfo=UTC))


def test_withdrawal_retracts_consent_based_disclosures_only() -> None:
    disclosed = [
        _disclosed("natal-care-to-health-visiting", "salford-health-visiting", "d-hv"),
        _disclosed("custody-to-prosecution", "cps", "d-cps"),
        _disclosed("custody-to-liaison-diversion", "liaison-diversion", "d-ld"),
    ]
    consents = [
        _consent(1, ConsentDecision.PERMIT, "liaison-diversion"),
        _consent(2, ConsentDecision.DENY, "salford-health-visiting"),
        _consent(3, ConsentDecision.DENY, "cps"),  # statutory: consent is not the basis
        _consent(4, ConsentDecision.DENY, "liaison-diversion"),
    ]
    got = {r.retracts: r for r in retractions_for(disclosed, AGREEMENTS, consents, NOW)}
    assert set(got) == {"d-hv", "d-ld"}
    entry = got["d-hv"].entry
    # Each rests on the withdrawal that ended it.
    assert entry.outcome == "RETRACTED" and entry.refers_to == "d-hv" and entry.consent_version == 2
    assert got["d-ld"].entry.consent_version == 4
    assert entry.disclosure_id == retraction_id("d-hv") != retraction_id("d-ld")


def test_a_withdrawal_retracts_what_it_ended_though_a_permit_followed() -> None:
    """However soon the permit came after the deny (before the sweep ran, or after), the
    disclosure made before the deny is retracted; one made after the permit is not."""
    before = _disclosed("custody-to-liaison-diversion", "liaison-diversion", "d-before")
    after = replace(_disclosed("custody-to-liaison-diversion", "liaison-diversion", "d-after"), consent_version=2)
    consents = [
        _consent(1, ConsentDecision.DENY, "liaison-diversion"),
        _consent(2, ConsentDecision.PERMIT, "liaison-diversion"),
    ]
    [got] = retractions_for([before, after], AGREEMENTS, consents, NOW)
    assert got.retracts == "d-before" and got.entry.consent_version == 1
    assert got.entry.reason == "consent withdrawn: consent denied (consent record 1)"
    assert retractions_for([before, after], AGREEMENTS, list(reversed(consents)), NOW) == [got]  # order given


def test_a_withdrawal_for_another_purpose_retracts_nothing() -> None:
    permitted = replace(_disclosed("custody-to-liaison-diversion", "liaison-diversion", "d-ld"), consent_version=1)
    consents = [
        _consent(1, ConsentDecision.PERMIT, "liaison-diversion"),
        replace(_consent(2, ConsentDecision.DENY, "liaison-diversion"), purpose="research"),
    ]
    assert retractions_for([permitted], AGREEMENTS, consents, NOW) == []
    consents.append(_consent(3, ConsentDecision.DENY, "liaison-diversion"))
    assert [r.entry.consent_version for r in retractions_for([permitted], AGREEMENTS, consents, NOW)] == [3]


def test_suspending_an_agreement_retracts_every_disclosure_under_it_whatever_the_consent_mode() -> None:
    from accord.sharing.retraction import retractions_for_agreement
    from agreements import Status

    prosecution = AGREEMENTS["custody-to-prosecution@v1"]
    suspended = prosecution.model_copy(update={"version": 2, "status": Status.SUSPENDED})
    disclosed = [
        _disclosed("custody-to-prosecution", "cps", "d-cps"),  # not_required: consent cannot undo it, suspension does
        _disclosed("custody-to-prosecution", "hmcts", "d-hmcts"),
        _disclosed("custody-to-liaison-diversion", "liaison-diversion", "d-ld"),  # another agreement
    ]
    reinstated_then = replace(_disclosed("custody-to-prosecution", "cps", "d-v3"), agreement_version=3)
    got = {r.retracts: r.entry for r in retractions_for_agreement([*disclosed, reinstated_then], suspended, NOW)}
    assert set(got) == {"d-cps", "d-hmcts"}  # not one under a later version that reinstated it
    assert got["d-cps"].reason == "agreement custody-to-prosecution suspended (version 2)"
    assert got["d-cps"].disclosure_id == retraction_id("d-cps") and got["d-cps"].refers_to == "d-cps"
    assert got["d-cps"].outcome == "RETRACTED" and got["d-cps"].decided_at == NOW.now


def test_an_agreement_in_force_retracts_nothing_and_says_so() -> None:
    import pytest

    from accord.sharing.retraction import retractions_for_agreement

    with pytest.raises(ValueError, match="not suspended or revoked"):
        retractions_for_agreement([], AGREEMENTS["custody-to-prosecution@v1"], NOW)
