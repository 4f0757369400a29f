"""Conditions and ``agreements explain``: pure, and always in step with ``decide``."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from accord.sharing.decide import Context, decide
from accord.sharing.explain import EventError, explain, parse_event, render_text
from agreements import Condition, Op, holds, load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from producers.synthetic import age_on, build_scenario, to_json_line
from tests.integration.test_cli import accord

EXAMPLES = PACKAGE_ROOT / "agreements" / "examples"
AGREEMENTS = load_dir(EXAMPLES)
CONTEXT = Context(
    datetime(2026, 11, 1, 12, tzinfo=UTC),
    load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"),
    b"test-only-pseudonym-key",
)
SCENARIO = build_scenario(300, seed=11)


def _custody(adult: bool) -> dict:
    return next(
        e.record
        for e in SCENARIO.events
        if e.event_type == "custody" and (age_on(e.record["subject"]["date_of_birth"], CONTEXT.today) >= 18) is adult
    )


RECORD = {"event_kind": "CHARGE", "outcome": None, "subject": {"date_of_birth": date(2010, 5, 2), "given_names": "Ada"}}


@pytest.mark.parametrize(
    ("condition", "ok"),
    [
        (Condition(field="event_kind", op=Op.EQ, value="CHARGE"), True),
        (Condition(field="event_kind", op=Op.EQ, value="ARREST"), False),
        (Condition(field="event_kind", op=Op.NE, value="CHARGE"), False),
        (Condition(field="event_kind", op=Op.IN, value=("ARREST", "CHARGE")), True),
        (Condition(field="event_kind", op=Op.NOT_IN, value=("ARREST", "CHARGE")), False),
        (Condition(field="outcome", op=Op.ABSENT), True),
        (Condition(field="outcome", op=Op.PRESENT), False),
        (Condition(field="outcome", op=Op.EQ, value="CHARGED"), False),  # absent never equals
        (Condition(field="subject.date_of_birth", op=Op.AGE_UNDER, value=18), True),  # 16 on 2026-11-01
        (Condition(field="subject.date_of_birth", op=Op.AGE_UNDER, value=16), False),
        (Condition(field="subject.date_of_birth", op=Op.AGE_AT_LEAST, value=16), True),
        (Condition(field="subject.missing.deeper", op=Op.AGE_AT_LEAST, value=1), False),
    ],
)
def test_conditions(condition: Condition, ok: bool) -> None:
    held, reason = holds([condition], RECORD, CONTEXT.today)
    assert held is ok
    assert (reason is None) is ok
    if reason:  # a reason names the rule, never the event's values
        assert "Ada" not in reason and "2010" not in reason


def test_age_under_counts_the_birthday_itself() -> None:
    cond = [Condition(field="subject.date_of_birth", op=Op.AGE_UNDER, value=18)]
    record = {"subject": {"date_of_birth": date(2008, 11, 1)}}
    assert holds(cond, record, date(2026, 10, 31))[0] is True
    assert holds(cond, record, date(2026, 11, 1))[0] is False  # 18 today


def test_explain_agrees_with_decide_for_every_synthetic_event() -> None:
    for event in SCENARIO.events:
        decisions = decide(event.event_type, event.record, AGREEMENTS, [], CONTEXT)
        explanation = explain(event.event_type, event.record, AGREEMENTS, [], CONTEXT)
        assert sorted(explanation.decisions()) == sorted(
            (d.agreement.key, d.recipient, d.outcome.value) for d in decisions
        )
        assert {a.key for a in explanation.matching} == {d.agreement.key for d in decisions}
        for a in explanation.agreements:
            assert a.matches == (a.reason is None)


def test_youth_offending_agreement_applies_to_children_only() -> None:
    child = explain("custody", _custody(adult=False), AGREEMENTS, [], CONTEXT)
    adult = explain("custody", _custody(adult=True), AGREEMENTS, [], CONTEXT)
    by_key = {a.key: a for a in child.agreements}
    assert by_key["custody-to-youth-offending@v1"].matches
    yot = by_key["custody-to-youth-offending@v1"].recipients[0]
    assert yot.outcome == "DISCLOSED" and yot.reason == "consent overridden: Crime and Disorder Act 1998 s.115 and s.39"
    assert yot.would_receive is not None and "nhs_number" not in yot.would_receive["subject"]
    miss = {a.key: a for a in adult.agreements}["custody-to-youth-offending@v1"]
    assert miss.reason is not None
    assert not miss.matches and miss.reason.startswith("conditions[0] (subject.date_of_birth age_under 18) not met")


def test_rendered_explanation_names_every_agreement_and_recipient() -> None:
    text = render_text(explain("custody", _custody(adult=True), AGREEMENTS, [], CONTEXT))
    assert f"2 of {len(AGREEMENTS)} agreements apply." in text
    assert "-> liaison-diversion: WITHHELD: explicit consent required and none recorded" in text
    assert "-> cps: DISCLOSED (11 fields; consent overridden: Crime and Disorder Act 1998 s.115)" in text
    assert "- natal-care-to-research@v1 does not apply: provider" in text


def test_parse_event_infers_the_type_and_names_bad_fields() -> None:
    record = json.loads(to_json_line(next(e for e in SCENARIO.events if e.event_type == "referral")))
    assert parse_event(record)[0] == "referral"
    del record["envelope"]["event_id"]
    with pytest.raises(EventError, match=r"not a referral event: envelope\.event_id"):
        parse_event(record, "referral")
    with pytest.raises(EventError, match="unknown event type"):
        parse_event(record, "parking_fine")


def test_cli_explain_and_validate(tmp_path: Path) -> None:
    event = tmp_path / "child.json"
    event.write_text(to_json_line(next(e for e in SCENARIO.events if e.record is _custody(adult=False))))
    result = accord("agreements", "explain", str(event), "--no-consent", "--json", "--date", "2026-11-01")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["event_type"] == "custody" and out["decision_date"] == "2026-11-01"
    youth = next(a for a in out["agreements"] if a["id"] == "custody-to-youth-offending")
    assert youth["matches"] and youth["recipients"][0]["outcome"] == "DISCLOSED"

    bad = tmp_path / "agreements"
    bad.mkdir()
    (bad / "x.yaml").write_text(
        (EXAMPLES / "referral-to-mash.yaml").read_text().replace("purpose: safeguarding", "purpose: gossip")
    )
    result = accord("agreements", "validate", str(bad))
    assert result.returncode == 1
    line = next(i for i, text in enumerate((bad / "x.yaml").read_text().splitlines(), 1) if "gossip" in text)
    assert f"{bad / 'x.yaml'}:{line}: purpose:" in result.stderr
    assert accord("agreements", "validate", str(EXAMPLES)).returncode == 0
