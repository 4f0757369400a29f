"""A change on /me governs every purpose the recipient receives for, whatever was chosen before.

The page's "Stop sharing with X" is about X as a whole. Recorded for X alone, it lost to an
earlier choice naming X and a purpose (the more specific record wins): the page said sharing
stops, and it went on. Pure: the records a change makes, judged by the rule the processor uses.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from accord.web.me import records_for_change
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord, applicable

AGREEMENTS = tuple(load_dir(PACKAGE_ROOT / "agreements" / "examples"))
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
ME = "nhs:9434765919"  # passes Modulus 11
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LIAISON = "liaison-diversion"


def _purposes(recipient: str) -> list[str]:
    return sorted({a.purpose.value for a in AGREEMENTS if recipient in a.recipients})


def _governs(records: list[ConsentRecord], recipient: str) -> set[ConsentDecision | None]:
    found = (applicable(records, p, recipient, PARTNERS.get(recipient), NOW) for p in _purposes(recipient))
    return {r.decision if r is not None else None for r in found}


@pytest.mark.parametrize("decision", [ConsentDecision.DENY, ConsentDecision.PERMIT])
def test_an_earlier_choice_naming_a_purpose_is_overridden_too(decision: ConsentDecision) -> None:
    other = ConsentDecision.PERMIT if decision is ConsentDecision.DENY else ConsentDecision.DENY
    [purpose] = _purposes(LIAISON)[:1]
    earlier = [ConsentRecord(7, ME, purpose, LIAISON, other, NOW)]
    alone = ConsentRecord(8, ME, None, LIAISON, decision, NOW)
    assert _governs([*earlier, alone], LIAISON) != {decision}  # what recording for the recipient alone did

    made = records_for_change(ME, LIAISON, decision, AGREEMENTS, earlier, PARTNERS, NOW)
    assert [(r.id, r.purpose, r.recipient, r.decision) for r in made] == [
        (8, None, LIAISON, decision),
        (9, purpose, LIAISON, decision),
    ]
    assert _governs([*earlier, *made], LIAISON) == {decision}


def test_with_nothing_more_specific_one_record_for_the_recipient_is_enough() -> None:
    earlier = [ConsentRecord(3, ME, None, "cps", ConsentDecision.PERMIT, NOW)]  # another recipient's
    made = records_for_change(ME, LIAISON, ConsentDecision.DENY, AGREEMENTS, earlier, PARTNERS, NOW)
    assert [(r.purpose, r.recipient) for r in made] == [(None, LIAISON)]
    assert _governs([*earlier, *made], LIAISON) == {ConsentDecision.DENY}
