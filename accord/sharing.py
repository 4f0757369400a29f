"""The sharing decision: agreements + consent -> per-recipient outcome.

This is the functional core of Accord. It does no I/O, so every rule about who
may receive what is unit-tested without Kafka or a database. The processor
(``accord.processor``) is the imperative shell around it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import Enum
from typing import Any

from accord.pseudonymise import pseudonymise
from agreements.model import Agreement, ConsentMode, IdentifierTreatment
from consent.model import ConsentDecision, ConsentRecord, applicable, version
from schemas.projection import project_record

# Fixed namespace: disclosure ids must be stable across runs and machines (I7).
DISCLOSURE_NAMESPACE = uuid.UUID("7d1f3c9e-2b4a-5e6f-8a9b-0c1d2e3f4a5b")


class Outcome(str, Enum):
    DISCLOSED = "DISCLOSED"
    WITHHELD = "WITHHELD"


@dataclass(frozen=True)
class Context:
    """What a decision depends on besides the event, its agreements and consent."""

    now: datetime
    partner_classes: Mapping[str, str] = field(default_factory=dict)  # recipient -> recipient class
    pseudonym_key: bytes = b""

    @property
    def today(self) -> date:
        return self.now.date()


@dataclass(frozen=True)
class Decision:
    disclosure_id: str
    event_id: str
    event_type: str
    provider: str
    recipient: str
    agreement: Agreement
    outcome: Outcome
    reason: str | None
    fields: tuple[str, ...]
    consent_version: int
    subject_key: str
    projected: dict[str, Any] | None  # the record the recipient receives; None when withheld


def disclosure_id(event_id: str, recipient: str, agreement_id: str, agreement_version: int) -> str:
    return str(uuid.uuid5(DISCLOSURE_NAMESPACE, f"{event_id}|{recipient}|{agreement_id}|{agreement_version}"))


def subject_key(event_type: str, record: dict[str, Any]) -> str:
    """The key consent is recorded under: the NHS number where the event has one.

    Falling back to the provider's own identifier keeps events without an NHS
    number decidable; their consent is recorded against that identifier.
    """
    if event_type == "natal_care":
        return f"nhs:{record['mother']['nhs_number']}"
    subject = record["subject"]
    if subject.get("nhs_number"):
        return f"nhs:{subject['nhs_number']}"
    if event_type == "custody":
        return f"pnc:{subject['pnc_id']}"
    return f"local:{record['envelope']['source_agency']}:{subject['local_id']}"


def other_subjects(event_type: str, record: dict[str, Any]) -> tuple[str, ...]:
    """Subject keys of the other people the event is about (a baby in a natal-care event).

    The ledger records them beside ``subject_key`` so a subject report finds a person
    wherever their identifier was shared; consent is still checked under ``subject_key``.
    """
    if event_type == "natal_care":
        baby = record.get("baby") or {}
        if baby.get("nhs_number"):
            return (f"nhs:{baby['nhs_number']}",)
    return ()


def projection_for(
    event_type: str,
    record: dict[str, Any],
    agreement: Agreement,
    fields: Sequence[str],
    recipient: str,
    context: Context,
) -> dict[str, Any]:
    """What ``recipient`` receives of ``record``: the allowed ``fields``, pseudonymised if the agreement says.

    Used for a new decision and, with the fields its ledger entry recorded, for the
    redelivery of an existing one (I8), so both send the same bytes.
    """
    projection = project_record(record, list(fields))
    if agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED:
        return pseudonymise(event_type, projection, context.pseudonym_key, recipient)
    return projection


def consent_outcome(
    agreement: Agreement, recipient: str, records: Sequence[ConsentRecord], context: Context
) -> tuple[Outcome, str | None]:
    mode = agreement.consent_mode
    if mode is ConsentMode.NOT_REQUIRED:
        # Recorded on the DISCLOSED entry so an auditor sees consent was set aside, and by what.
        return Outcome.DISCLOSED, f"consent overridden: {agreement.gateway}"
    governing = applicable(
        records, agreement.purpose.value, recipient, context.partner_classes.get(recipient), context.now
    )
    if governing is not None and governing.decision is ConsentDecision.DENY:
        return Outcome.WITHHELD, f"consent denied (consent record {governing.id})"
    if mode is ConsentMode.EXPLICIT and governing is None:
        return Outcome.WITHHELD, "explicit consent required and none recorded"
    return Outcome.DISCLOSED, None


def candidate_agreements(
    agreements: Iterable[Agreement],
    provider: str,
    event_type: str,
    today: date,
    *,
    record: dict[str, Any] | None = None,
) -> list[Agreement]:
    """The agreements that apply: covering (provider, event type), in force today, conditions met.

    Conditions are tested only when ``record`` is given; without it the result is
    what may apply to such an event. ``Agreement.exclusion`` is the one rule, so
    ``agreements.explain`` cannot disagree with this.
    """
    return [a for a in agreements if a.exclusion(provider, event_type, today, record) is None]


def decide(
    event_type: str,
    record: dict[str, Any],
    agreements: Iterable[Agreement],
    consents: Sequence[ConsentRecord],
    context: Context,
) -> list[Decision]:
    """One decision per (agreement in force, recipient) covering this event."""
    provider = record["envelope"]["source_agency"]
    event_id = record["envelope"]["event_id"]
    key = subject_key(event_type, record)
    consent_version = version(consents)
    decisions = []
    for agreement in candidate_agreements(agreements, provider, event_type, context.today, record=record):
        fields = agreement.fields[event_type]
        pseudonymised = agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED
        projection: dict[str, Any] | None = None  # one per agreement, shared by its recipients
        for recipient in agreement.recipients:
            outcome, reason = consent_outcome(agreement, recipient, consents, context)
            disclosed = outcome is Outcome.DISCLOSED
            projected = None
            if disclosed:
                if projection is None:
                    projection = project_record(record, list(fields))
                projected = (
                    pseudonymise(event_type, projection, context.pseudonym_key, recipient)
                    if pseudonymised
                    else projection
                )
            decisions.append(
                Decision(
                    disclosure_id=disclosure_id(event_id, recipient, agreement.id, agreement.version),
                    event_id=event_id,
                    event_type=event_type,
                    provider=provider,
                    recipient=recipient,
                    agreement=agreement,
                    outcome=outcome,
                    reason=reason,
                    fields=tuple(fields) if disclosed else (),
                    consent_version=consent_version,
                    subject_key=key,
                    projected=projected,
                )
            )
    return decisions
