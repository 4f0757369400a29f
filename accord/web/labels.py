"""Plain words for what was shared: a label per event type and field path, said to the person.

Why: the ledger records dotted field paths (``mother.nhs_number``, ``baby``) because a
recipient and an auditor need them exactly; a citizen needs "your NHS number" and "your
baby's NHS number". This module is the one place those words are kept, so the citizen's
page, and anything else that speaks to a person, says the same thing for the same field.

A label is written from the point of view of the event's main subject (the person its
subject key names). An event can be about someone else too (``accord.other_subjects``:
the baby in a natal-care event); for them, :data:`OTHER_SUBJECT_LABELS` says it from
their side ("your NHS number", "your mother's NHS number").

A field an agreement pseudonymises (an identifier of the event type, ``accord.identifiers``,
under ``identifier_treatment: pseudonymised``) was not sent as itself: the recipient got
a code only it can link (accord/sharing/pseudonymise.py), and the label says so.

Every field path an agreement may name has a label (tests/integration/test_web_me.py
checks each path of every event schema); an unknown path still gets words made from its
last part, never a bare dotted path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = [
    "LABELS",
    "OTHER_SUBJECT_LABELS",
    "PSEUDONYMISED",
    "FieldLabel",
    "field_label",
    "field_labels",
]

PSEUDONYMISED = "a code that only this recipient can link"

_ENVELOPE = {
    "envelope": "the record's reference details",
    "envelope.event_id": "the record's reference number",
    "envelope.occurred_at": "when it happened",
    "envelope.recorded_at": "when it was recorded",
    "envelope.source_agency": "which organisation sent it",
    "envelope.source_system": "which computer system it came from",
}

_PERSON = {
    "given_names": "your first names",
    "family_name": "your surname",
    "date_of_birth": "your date of birth",
    "nhs_number": "your NHS number",
    "address": "your address",
    "address.line1": "the first line of your address",
    "address.town": "your town",
    "address.postcode": "your postcode",
}


def _person(prefix: str, extra: Mapping[str, str] | None = None, whole: str = "your details") -> dict[str, str]:
    out = {prefix: whole}
    out.update({f"{prefix}.{k}": v for k, v in {**_PERSON, **(extra or {})}.items()})
    return out


LABELS: Mapping[str, Mapping[str, str]] = {
    "custody": {
        **_ENVELOPE,
        "event_kind": "what happened (arrest, detention, charge or release)",
        "custody_record_id": "your custody record number",
        **_person("subject", {"pnc_id": "your Police National Computer number"}),
        "offence_codes": "the offences recorded",
        "outcome": "the outcome (for example charged or released)",
    },
    "natal_care": {
        **_ENVELOPE,
        "event_kind": "what kind of care it was (booking, birth or discharge)",
        "trust_ods_code": "which NHS trust sent it (its code)",
        **_person("mother"),
        "baby": "your baby's details (NHS number, date of birth and sex)",
        "baby.nhs_number": "your baby's NHS number",
        "baby.date_of_birth": "your baby's date of birth",
        "baby.sex": "your baby's sex",
        "gestation_weeks": "how many weeks pregnant you were",
        "health_visitor_handover": "the handover notes for your health visitor",
        "health_visitor_handover.team": "which health visiting team will see you",
        "health_visitor_handover.handover_date": "the date of the handover to your health visitor",
        "health_visitor_handover.notes": "the handover notes for your health visitor",
    },
    "referral": {
        **_ENVELOPE,
        "referral_id": "the referral's reference number",
        "referrer": "who made the referral",
        "referrer.agency": "which organisation made the referral",
        "referrer.role": "the job of the person who made the referral",
        **_person(
            "subject",
            {
                "subject_kind": "whether you are a child or an adult",
                "local_id": "your council record number",
                "interpreter_language": "the language you need an interpreter for",
            },
        ),
        "concern_categories": "the kinds of concern raised",
        "urgency": "how urgent the referral is",
        "narrative": "what the person making the referral wrote",
    },
}

# The same fields said to a person an event is about who is not its main subject.
OTHER_SUBJECT_LABELS: Mapping[str, Mapping[str, str]] = {
    "natal_care": {
        **_person(
            "mother", {k: v.replace("your ", "your mother's ") for k, v in _PERSON.items()}, "your mother's details"
        ),
        "baby": "your details from birth (NHS number, date of birth and sex)",
        "baby.nhs_number": "your NHS number",
        "baby.date_of_birth": "your date of birth",
        "baby.sex": "your sex",
        "gestation_weeks": "how many weeks pregnant your mother was",
        "health_visitor_handover": "the handover notes for your family's health visitor",
        "health_visitor_handover.notes": "the handover notes for your family's health visitor",
    },
}


@dataclass(frozen=True)
class FieldLabel:
    """One field as the person reads it."""

    path: str  # the dotted path the ledger records
    text: str  # "your NHS number"
    pseudonymised: bool = False  # sent as a code only the recipient can link

    def __str__(self) -> str:
        return f"{self.text}, as {PSEUDONYMISED}" if self.pseudonymised else self.text


def _fallback(path: str) -> str:
    return path.rsplit(".", 1)[-1].replace("_", " ")


def field_label(event_type: str, path: str, *, other_subject: bool = False) -> str:
    """The words for one field path of ``event_type``, from the main subject's side or the other's."""
    if other_subject:
        text = OTHER_SUBJECT_LABELS.get(event_type, {}).get(path)
        if text is not None:
            return text
    return LABELS.get(event_type, {}).get(path) or _fallback(path)


def field_labels(
    event_type: str,
    paths: Iterable[str],
    *,
    pseudonymised: Iterable[str] = (),
    other_subject: bool = False,
) -> list[FieldLabel]:
    """Labels for the paths, in their order; ``pseudonymised``: the paths sent as codes."""
    coded = set(pseudonymised)
    return [FieldLabel(p, field_label(event_type, p, other_subject=other_subject), p in coded) for p in paths]
