"""/me for a person the ledger holds as another subject of someone's record (a baby in the mother's).

Consent is checked under the record's main subject (docs/sharing.md), so the page must
neither word the mother's choices as the baby's, nor show what the mother chose, nor
promise the baby that their own choice stops that sharing. Pure: the page model from
stored entries, no database or browser.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from accord.sharing.retraction import retraction_id
from accord.web.me import Contact, build_page, consent_effect
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord
from ledger import EntryDraft
from ledger.entry import StoredEntry
from ledger.report import build_report

AGREEMENTS = tuple(load_dir(PACKAGE_ROOT / "agreements" / "examples"))
BY_KEY = {a.key: a for a in AGREEMENTS}
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
NAMES = {p.id: p.name for a in AGREEMENTS for p in a.parties if p.id}
MOTHER = "nhs:9434765919"  # passes Modulus 11 (schemas.subject_keys' own example)
BABY = "nhs:9991408916"  # producers.nhs_number.generate(random.Random(1)): test range, Modulus 11
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HV = "natal-care-to-health-visiting@v1"


def _stored(seq: int, outcome: str = "DISCLOSED", subject: str = MOTHER, **changes: object) -> StoredEntry:
    a = BY_KEY[HV]
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
        "fields": ("mother.nhs_number", "baby.nhs_number"),
        "consent_mode": a.consent_mode.value,
        "consent_version": 0,
        "subject_key": subject,
        "subjects": (BABY,) if subject == MOTHER else (),
        "decided_at": NOW - timedelta(days=10 - seq),
    }
    fields.update(changes)
    return StoredEntry(seq, EntryDraft(**fields), bytes(32), bytes(32))  # type: ignore[arg-type]


# The mother's record 3 withdrew her consent to health visiting: entry 1 (sent) was then
# retracted (entry 3), and entry 4 was held back. Entry 5 is the baby's own record, held back
# by the baby's own denial (record 7).
MOTHERS = [
    _stored(1),
    _stored(2, "WITHHELD", reason="consent denied (consent record 3)"),
    _stored(
        3, "RETRACTED", reason="consent withdrawn (consent record 3)", refers_to="d1", disclosure_id=retraction_id("d1")
    ),
    _stored(4, "WITHHELD", reason="consent withdrawn (consent record 3)"),
]
BABYS_OWN = _stored(5, "WITHHELD", subject=BABY, reason="consent denied (consent record 7)")


def _page(stored: list[StoredEntry], records: list[ConsentRecord]):
    report = build_report(BABY, stored, BY_KEY, {}, None, NOW.date(), NOW)
    return build_page(
        report, stored, AGREEMENTS, records, PARTNERS, NAMES, Contact("", "", "https://ico.org.uk"), None, now=NOW
    )


def test_the_mothers_choices_are_neither_shown_nor_worded_as_the_babys() -> None:
    page = _page(MOTHERS, [])
    entries = [e for r in page.recipients for e in r.entries]
    assert sorted(e.seq for e in entries) == [1, 3]  # what was sent of the baby's, and taken back
    [retraction] = [e for e in entries if e.outcome == "RETRACTED"]
    assert retraction.why == "the consent it rested on was withdrawn" and not retraction.because_of_choice
    assert page.not_sent_by_choice == ()
    text = " ".join(page.summary)
    assert "your choices" not in text and "held back" not in text
    for e in entries:
        assert e.why is None or "you" not in e.why.split()


def test_the_babys_own_choice_on_the_babys_own_record_is_still_the_babys() -> None:
    denial = ConsentRecord(7, BABY, None, "salford-health-visiting", ConsentDecision.DENY, NOW - timedelta(days=6))
    page = _page([*MOTHERS, BABYS_OWN], [denial])
    assert [e.seq for e in page.not_sent_by_choice] == [5]
    assert page.not_sent_by_choice[0].why is not None and page.not_sent_by_choice[0].why.startswith("you said no")
    assert "Because of your choices, information was held back once." in page.summary


def test_the_confirm_page_says_the_other_persons_records_follow_their_choices() -> None:
    recipient = BY_KEY[HV].recipients[0]
    effect = consent_effect(BABY, recipient, ConsentDecision.DENY, MOTHERS, AGREEMENTS, [], PARTNERS, NAMES, NOW)
    assert effect.others_decide and effect.retracted == 0  # the sweep retracts only the baby's own
    alone = consent_effect(BABY, recipient, ConsentDecision.DENY, [BABYS_OWN], AGREEMENTS, [], PARTNERS, NAMES, NOW)
    assert not alone.others_decide
    mothers = consent_effect(MOTHER, recipient, ConsentDecision.DENY, MOTHERS, AGREEMENTS, [], PARTNERS, NAMES, NOW)
    assert not mothers.others_decide
