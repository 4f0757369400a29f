"""The pure sharing decision: agreements + consent -> per-recipient outcome, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accord.sharing.decide import Context, Outcome, decide, disclosure_id, subject_key
from agreements import load_dir
from agreements.model import Status
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord
from producers.synthetic import build_scenario

TODAY = Context(datetime(2026, 6, 1, 12, tzinfo=UTC), pseudonym_key=b"unit-test-key-0123456789abcdef01")
AGREEMENTS = load_dir(PACKAGE_ROOT / "agreements" / "examples")
SCENARIO = build_scenario(n_events=200, seed=11)


def _first(event_type: str, agency: str | None = None, with_nhs: bool = False) -> dict:
    for e in SCENARIO.events:
        if e.event_type != event_type or (agency and e.agency != agency):
            continue
        if with_nhs and not (e.record.get("subject") or {}).get("nhs_number"):
            continue
        return e.record
    raise AssertionError("scenario lacks the event the test needs")


def _consent(id: int, decision: ConsentDecision, purpose: str | None = None, recipient: str | None = None):
    return ConsentRecord(id, "nhs:x", purpose, recipient, decision, datetime(2026, 1, id, tzinfo=UTC))


def _by_recipient(decisions):
    return {d.recipient: d for d in decisions}


def test_custody_goes_to_cps_and_courts_without_consent_and_not_to_liaison_without_permit() -> None:
    record = _first("custody", "met-police", with_nhs=True)
    got = _by_recipient(decide("custody", record, AGREEMENTS, [], TODAY))
    assert set(got) == {"cps", "hmcts", "liaison-diversion"}
    assert got["cps"].outcome is Outcome.DISCLOSED and got["hmcts"].outcome is Outcome.DISCLOSED
    assert "nhs_number" not in got["cps"].projected["subject"]
    assert got["liaison-diversion"].outcome is Outcome.WITHHELD
    assert got["liaison-diversion"].projected is None and got["liaison-diversion"].fields == ()


def test_consent_denial_does_not_stop_a_statutory_disclosure() -> None:
    record = _first("custody", "met-police")
    deny_all = [_consent(1, ConsentDecision.DENY, recipient="cps")]
    got = _by_recipient(decide("custody", record, AGREEMENTS, deny_all, TODAY))
    assert got["cps"].outcome is Outcome.DISCLOSED
    assert got["cps"].consent_version == 1


def test_opt_out_denial_withholds_and_names_the_record() -> None:
    record = _first("natal_care")
    consents = [_consent(4, ConsentDecision.DENY, recipient="salford-health-visiting")]
    d = _by_recipient(decide("natal_care", record, AGREEMENTS, consents, TODAY))["salford-health-visiting"]
    assert d.outcome is Outcome.WITHHELD and d.reason == "consent denied (consent record 4)"
    assert d.consent_version == 4


def test_recipient_level_permit_beats_purpose_level_denial() -> None:
    record = _first("natal_care")
    consents = [
        _consent(9, ConsentDecision.DENY, purpose="individual_care"),
        _consent(3, ConsentDecision.PERMIT, recipient="salford-health-visiting"),
    ]
    d = _by_recipient(decide("natal_care", record, AGREEMENTS, consents, TODAY))["salford-health-visiting"]
    assert d.outcome is Outcome.DISCLOSED and d.consent_version == 9


def test_newest_wins_at_equal_specificity() -> None:
    record = _first("custody", with_nhs=True)
    permit_then_deny = [
        _consent(1, ConsentDecision.PERMIT, recipient="liaison-diversion"),
        _consent(2, ConsentDecision.DENY, recipient="liaison-diversion"),
    ]
    got = _by_recipient(decide("custody", record, AGREEMENTS, permit_then_deny, TODAY))
    assert got["liaison-diversion"].outcome is Outcome.WITHHELD


def test_class_level_denial_applies_to_every_partner_of_the_class_and_expired_records_do_not() -> None:
    record = _first("natal_care")
    context = Context(
        TODAY.now,
        {"salford-health-visiting": "local_authority", "salford-research": "research_body"},
        TODAY.pseudonym_key,
    )
    deny_class = ConsentRecord(5, "nhs:x", None, None, ConsentDecision.DENY, TODAY.now, recipient_class="research_body")
    got = _by_recipient(decide("natal_care", record, AGREEMENTS, [deny_class], context))
    assert got["salford-research"].outcome is Outcome.WITHHELD
    assert got["salford-health-visiting"].outcome is Outcome.DISCLOSED
    lapsed = ConsentRecord(
        5, "nhs:x", None, None, ConsentDecision.DENY, TODAY.now, recipient_class="research_body", expires_at=TODAY.now
    )
    got = _by_recipient(decide("natal_care", record, AGREEMENTS, [lapsed], context))
    assert got["salford-research"].outcome is Outcome.DISCLOSED


def test_pseudonyms_are_stable_per_recipient_and_differ_between_recipients() -> None:
    from accord.sharing.pseudonymise import token

    key = b"unit-test-key-0123456789abcdef01"
    assert token(key, "a", "9434765919") == token(key, "a", "9434765919")
    assert token(key, "a", "9434765919") != token(key, "b", "9434765919")
    assert token(key, "a", "9434765919") != token(key, "a", "9434765870")
    record = _first("natal_care")
    got = _by_recipient(decide("natal_care", record, AGREEMENTS, [], TODAY))["salford-research"]
    assert got.projected["mother"]["nhs_number"] == token(key, "salford-research", record["mother"]["nhs_number"])


def test_agreements_not_in_force_do_not_match() -> None:
    record = _first("referral")
    suspended = [a.model_copy(update={"status": Status.SUSPENDED}) for a in AGREEMENTS]
    assert decide("referral", record, suspended, [], TODAY) == []
    assert (
        decide("referral", record, AGREEMENTS, [], Context(datetime(2025, 12, 31, tzinfo=UTC))) == []
    )  # before valid_from


def test_unknown_provider_gets_no_recipients() -> None:
    record = _first("custody")
    record = {**record, "envelope": {**record["envelope"], "source_agency": "unknown-force"}}
    assert decide("custody", record, AGREEMENTS, [], TODAY) == []


def test_disclosure_ids_are_stable_and_distinct() -> None:
    a = disclosure_id("e1", "cps", "custody-to-prosecution", 1)
    assert a == disclosure_id("e1", "cps", "custody-to-prosecution", 1)
    assert (
        len(
            {
                a,
                disclosure_id("e1", "hmcts", "custody-to-prosecution", 1),
                disclosure_id("e1", "cps", "custody-to-prosecution", 2),
                disclosure_id("e2", "cps", "custody-to-prosecution", 1),
            }
        )
        == 4
    )


@pytest.mark.parametrize("event_type", ["custody", "referral", "natal_care"])
def test_subject_key_prefers_the_nhs_number(event_type: str) -> None:
    record = _first(event_type)
    key = subject_key(event_type, record)
    nhs = record["mother"]["nhs_number"] if event_type == "natal_care" else record["subject"]["nhs_number"]
    if nhs:
        assert key == f"nhs:{nhs}"
    else:
        assert key.startswith(("pnc:", "local:"))
