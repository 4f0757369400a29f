"""What a consent change on /me says it will do: the N of "N past disclosures will be retracted".

Pure: stored entries made here, the example agreements, no database. N must be what the
retraction sweep would append for that recipient: consent-based disclosures of the
subject's own, not those already retracted, not statutory ones, not another recipient's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from accord.sharing.retraction import retraction_id
from accord.web.me import consent_effect
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord
from ledger import EntryDraft
from ledger.entry import StoredEntry

AGREEMENTS = tuple(load_dir(PACKAGE_ROOT / "agreements" / "examples"))
BY_KEY = {a.key: a for a in AGREEMENTS}
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
NAMES = {p.id: p.name for a in AGREEMENTS for p in a.parties if p.id}
ME = "nhs:9434765919"  # passes Modulus 11 (schemas.subject_keys' own example)
BABY = "nhs:9991408916"  # producers.nhs_number.generate(random.Random(1)): test range, Modulus 11
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _stored(seq: int, key: str, subject: str = ME, outcome: str = "DISCLOSED", **changes: object) -> StoredEntry:
    a = BY_KEY[key]
    fields: dict[str, object] = {
        "disclosure_id": f"d{seq}",
        "event_id": f"e{seq}",
        "event_type": a.event_types[0],
        "provider": a.providers[0],
        "recipient": a.recipients[0],
        "agreement_id": a.id,
        "agreement_version": a.version,
        "purpose": a.purpose.value,
        "legal_basis": a.legal_basis,
        "outcome": outcome,
        "reason": None,
        "fields": (),
        "consent_mode": a.consent_mode.value,
        "consent_version": 0,
        "subject_key": subject,
        "decided_at": NOW - timedelta(days=10 - seq),
    }
    fields.update(changes)
    return StoredEntry(seq, EntryDraft(**fields), bytes(32), bytes(32))  # type: ignore[arg-type]


def _effect(recipient: str, decision: ConsentDecision, stored: list[StoredEntry], records: list[ConsentRecord]):
    return consent_effect(ME, recipient, decision, stored, AGREEMENTS, records, PARTNERS, NAMES, NOW)


def test_withdrawal_counts_the_consent_based_disclosures_to_that_recipient_not_yet_retracted() -> None:
    hv, research = "natal-care-to-health-visiting@v1", "natal-care-to-research@v1"
    stored = [
        _stored(1, hv),
        _stored(2, hv),
        _stored(3, hv),
        _stored(4, hv, outcome="RETRACTED", disclosure_id=retraction_id("d3"), refers_to="d3"),  # already retracted
        _stored(5, hv, outcome="WITHHELD"),  # nothing was sent
        _stored(6, research),  # another recipient
        _stored(7, hv, subject=BABY, subjects=(ME,)),  # not her own entry: her consent does not govern it
        _stored(8, "custody-to-prosecution@v1"),  # statutory: withdrawal does not undo it
    ]
    effect = _effect("salford-health-visiting", ConsentDecision.DENY, stored, [])
    assert effect.retracted == 2
    assert (
        effect.future
        == "Future sharing with Salford City Council health visiting service that rests on your agreement stops."
    )
    assert effect.continues == ()
    assert _effect("salford-research", ConsentDecision.DENY, stored, []).retracted == 1


def test_a_recipient_already_denied_owes_nothing_more_and_permitting_retracts_nothing() -> None:
    hv = "natal-care-to-health-visiting@v1"
    denied = ConsentRecord(1, ME, None, "salford-health-visiting", ConsentDecision.DENY, NOW - timedelta(days=1))
    stored = [_stored(1, hv), _stored(2, hv, outcome="RETRACTED", disclosure_id=retraction_id("d1"), refers_to="d1")]
    assert _effect("salford-health-visiting", ConsentDecision.DENY, stored, [denied]).retracted == 0
    permit = _effect("salford-health-visiting", ConsentDecision.PERMIT, stored, [denied])
    assert permit.retracted == 0
    assert permit.future == (
        "Salford City Council health visiting service may be sent information about you for your care from now on."
    )


def test_explicit_consent_withdrawn_retracts_what_the_permit_allowed() -> None:
    ld = "custody-to-liaison-diversion@v1"
    permit = ConsentRecord(1, ME, None, "liaison-diversion", ConsentDecision.PERMIT, NOW - timedelta(days=20))
    stored = [_stored(1, ld, consent_version=1), _stored(2, ld, consent_version=1)]
    assert _effect("liaison-diversion", ConsentDecision.DENY, stored, [permit]).retracted == 2
