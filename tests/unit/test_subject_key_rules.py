"""subject_key and other_subjects, now generated from the catalogue, answer as the hand-written code did.

The oracle is the code as it was in accord/sharing/decide.py before the event types
became data (commit d24563a), kept here verbatim; the records are the synthetic
scenario's plus the edge cases the rules turn on (a missing, null or empty NHS number,
no baby, a baby without one).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from accord.sharing.decide import other_subjects, subject_key
from accord.sharing.pseudonymise import IDENTIFIERS
from producers.synthetic import build_scenario


def old_subject_key(event_type: str, record: dict[str, Any]) -> str:
    if event_type == "natal_care":
        return f"nhs:{record['mother']['nhs_number']}"
    subject = record["subject"]
    if subject.get("nhs_number"):
        return f"nhs:{subject['nhs_number']}"
    if event_type == "custody":
        return f"pnc:{subject['pnc_id']}"
    return f"local:{record['envelope']['source_agency']}:{subject['local_id']}"


def old_other_subjects(event_type: str, record: dict[str, Any]) -> tuple[str, ...]:
    if event_type == "natal_care":
        baby = record.get("baby") or {}
        if baby.get("nhs_number"):
            return (f"nhs:{baby['nhs_number']}",)
    return ()


def variants(event_type: str, record: dict[str, Any]) -> list[dict[str, Any]]:
    out = [record]
    if event_type == "natal_care":
        for baby in (None, {}, {"nhs_number": None}, {"nhs_number": ""}):
            r = copy.deepcopy(record)
            r["baby"] = baby
            out.append(r)
        r = copy.deepcopy(record)
        del r["baby"]
        out.append(r)
    else:
        for nhs in (None, ""):
            r = copy.deepcopy(record)
            r["subject"]["nhs_number"] = nhs
            out.append(r)
        r = copy.deepcopy(record)
        del r["subject"]["nhs_number"]
        out.append(r)
    return out


EVENTS = build_scenario(n_events=400, seed=11).events


def test_the_scenario_covers_every_rule() -> None:
    schemes = {old_subject_key(e.event_type, e.record).split(":")[0] for e in EVENTS}
    assert schemes == {"nhs", "pnc", "local"}
    assert any(old_other_subjects(e.event_type, e.record) for e in EVENTS)


@pytest.mark.parametrize("event", EVENTS[:200], ids=lambda e: e.event_type)
def test_same_keys_as_the_hand_written_rules(event: Any) -> None:
    for record in variants(event.event_type, event.record):
        assert subject_key(event.event_type, record) == old_subject_key(event.event_type, record)
        assert other_subjects(event.event_type, record) == old_other_subjects(event.event_type, record)


def test_a_record_without_its_subject_fails_as_it_did() -> None:
    """The publisher turns these into 'has no subject identifier to key it by'."""
    cases: list[tuple[str, dict[str, Any]]] = [("custody", {"envelope": {}}), ("natal_care", {"mother": {}})]
    for event_type, record in cases:
        with pytest.raises(KeyError):
            old_subject_key(event_type, record)
        with pytest.raises(KeyError):
            subject_key(event_type, record)
    with pytest.raises(KeyError):
        subject_key("no_such_type", {})


def test_identifier_paths_are_the_ones_pseudonymise_listed() -> None:
    assert IDENTIFIERS == {
        "custody": ("subject.pnc_id", "subject.nhs_number", "custody_record_id"),
        "referral": ("subject.nhs_number", "subject.local_id", "referral_id"),
        "natal_care": ("mother.nhs_number", "baby.nhs_number"),
    }
