"""Why an event would (or would not) be shared: every agreement, every recipient.

``explain`` is pure (no I/O). For every loaded agreement it says whether the
agreement applies to the event and, if not, why (wrong provider, wrong event
type, not active, not yet valid or expired, which condition failed). For the
agreements that apply it gives each recipient's decision, taken from
``accord.sharing.decide`` itself, so an explanation can never disagree with
what the processor would do.

The event's values appear only in ``would_receive`` (the projected record a
recipient would get, which is the point of the command); every reason is free
of them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from accord.sharing.decide import Context, Decision, decide
from agreements.model import Agreement, deciding, statutory_gateways, superseded_by
from bus.topics import EVENT_TYPES
from consent.model import ConsentDecision, ConsentRecord
from schemas.serde import InvalidRecord, from_json, load_schema, to_json, validate

__all__ = [
    "AgreementExplanation",
    "EventError",
    "Explanation",
    "RecipientExplanation",
    "explain",
    "parse_event",
    "render_text",
]


@dataclass(frozen=True)
class RecipientExplanation:
    recipient: str
    outcome: str  # DISCLOSED | WITHHELD
    reason: str | None
    fields: tuple[str, ...]
    disclosure_id: str
    consent_version: int
    would_receive: dict[str, Any] | None  # the projected (and pseudonymised) record; None when withheld

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipient": self.recipient,
            "outcome": self.outcome,
            "reason": self.reason,
            "fields": list(self.fields),
            "disclosure_id": self.disclosure_id,
            "consent_version": self.consent_version,
            "would_receive": to_json(self.would_receive) if self.would_receive is not None else None,
        }


@dataclass(frozen=True)
class AgreementExplanation:
    key: str
    id: str
    version: int
    title: str
    status: str
    purpose: str
    legal_basis: str
    consent_mode: str
    conditions: tuple[str, ...]  # as the agreement states them
    matches: bool
    reason: str | None  # why it does not apply; None when it does
    recipients: tuple[RecipientExplanation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "id": self.id,
            "version": self.version,
            "title": self.title,
            "status": self.status,
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "consent_mode": self.consent_mode,
            "conditions": list(self.conditions),
            "matches": self.matches,
            "reason": self.reason,
            "recipients": [r.to_dict() for r in self.recipients],
        }


@dataclass(frozen=True)
class Explanation:
    event_type: str
    event_id: str
    provider: str
    decision_date: date
    consent_version: int
    agreements: tuple[AgreementExplanation, ...] = field(default_factory=tuple)

    @property
    def matching(self) -> tuple[AgreementExplanation, ...]:
        return tuple(a for a in self.agreements if a.matches)

    def decisions(self) -> list[tuple[str, str, str]]:
        """``(agreement key, recipient, outcome)`` for every recipient decision, to compare with ``decide``."""
        return [(a.key, r.recipient, r.outcome) for a in self.agreements for r in a.recipients]

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_type": self.event_type,
            "event_id": self.event_id,
            "provider": self.provider,
            "decision_date": self.decision_date.isoformat(),
            "consent_version": self.consent_version,
            "agreements": [a.to_dict() for a in self.agreements],
        }


def _recipient(d: Decision) -> RecipientExplanation:
    return RecipientExplanation(
        recipient=d.recipient,
        outcome=d.outcome.value,
        reason=d.reason,
        fields=d.fields,
        disclosure_id=d.disclosure_id,
        consent_version=d.consent_version,
        would_receive=d.projected,
    )


def explain(
    event_type: str,
    record: dict[str, Any],
    agreements: Iterable[Agreement],
    consents: Sequence[ConsentRecord],
    context: Context,
) -> Explanation:
    """Every agreement's verdict on this event, with ``decide``'s per-recipient decisions."""
    agreements = list(agreements)
    provider = record["envelope"]["source_agency"]
    # As the processor decides: only the version of each id that decides that day.
    decisions = decide(event_type, record, deciding(agreements, context.today), consents, context)
    by_agreement: dict[int, list[Decision]] = {}
    for d in decisions:
        by_agreement.setdefault(id(d.agreement), []).append(d)
    out = []
    for a in agreements:
        newer = superseded_by(a, agreements, context.today)
        reason = (
            f"version {newer.version} decides instead from {newer.valid_from.isoformat() if newer.valid_from else 'the start'}"
            if newer is not None
            else a.exclusion(provider, event_type, context.today, record)
        )
        own = by_agreement.get(id(a), [])
        if reason is None and not own:  # cannot happen while decide uses Agreement.exclusion
            raise AssertionError(f"{a.key} applies but decide made no decision for it")
        if reason is not None and own:
            raise AssertionError(f"{a.key} does not apply ({reason}) but decide made decisions for it")
        out.append(
            AgreementExplanation(
                key=a.key,
                id=a.id,
                version=a.version,
                title=a.title,
                status=a.status.value,
                purpose=a.purpose.value,
                legal_basis=a.legal_basis,
                consent_mode=a.consent_mode.value,
                conditions=tuple(c.describe() for c in a.conditions),
                matches=reason is None,
                reason=reason,
                recipients=tuple(_recipient(d) for d in own),
            )
        )
    return Explanation(
        event_type=event_type,
        event_id=record["envelope"]["event_id"],
        provider=provider,
        decision_date=context.today,
        consent_version=decisions[0].consent_version if decisions else max((c.id for c in consents), default=0),
        agreements=tuple(out),
    )


class EventError(ValueError):
    """An event given to ``explain`` that no event schema (or not the one named) accepts."""


def parse_event(data: Any, event_type: str | None = None) -> tuple[str, dict[str, Any]]:
    """``(event type, record)`` from a JSON-loaded event, validated against its schema.

    Without ``event_type`` the event must fit exactly one event schema; the error
    says which schemas refused it and why (field paths, never values).
    """
    if not isinstance(data, dict):
        raise EventError("an event must be a JSON object")
    candidates = [event_type] if event_type else list(EVENT_TYPES)
    fits: list[tuple[str, dict[str, Any]]] = []
    problems: list[str] = []
    for name in candidates:
        try:
            schema = load_schema(name)
        except FileNotFoundError:
            raise EventError(f"unknown event type {name!r} (known: {', '.join(EVENT_TYPES)})") from None
        try:
            record = from_json(schema, data)
            validate(schema, record)
        except InvalidRecord as exc:
            problems.append(f"not a {name} event: {exc.field}: {exc.problem}")
            continue
        fits.append((name, record))
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise EventError("; ".join(problems))
    raise EventError(f"the event fits several schemas ({', '.join(n for n, _ in fits)}): name one with --type")


def _render_value(value: Any, indent: str) -> list[str]:
    lines = []
    for key, v in value.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{key}:")
            lines.extend(_render_value(v, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {'null' if v is None else v}")
    return lines


def render_text(explanation: Explanation) -> str:
    """A human-readable report for ``accord agreements explain EVENT.json``."""
    e = explanation
    matching = e.matching
    lines = [
        f"{e.event_type} event {e.event_id} from {e.provider}, decided on {e.decision_date.isoformat()} "
        f"(consent version {e.consent_version})",
        f"{len(matching)} of {len(e.agreements)} agreements apply.",
        "",
    ]
    for a in sorted(e.agreements, key=lambda a: (not a.matches, a.key)):
        if not a.matches:
            lines.append(f"- {a.key} does not apply: {a.reason}")
            continue
        lines.append(f"+ {a.key} applies: {a.title}")
        lines.append(f"    purpose {a.purpose}; consent {a.consent_mode}; legal basis: {a.legal_basis}")
        if a.conditions:
            lines.append(f"    conditions met: {'; '.join(a.conditions)}")
        for r in a.recipients:
            if r.outcome == "DISCLOSED":
                note = f"; {r.reason}" if r.reason else ""  # e.g. consent overridden by a statutory gateway
                lines.append(
                    f"    -> {r.recipient}: DISCLOSED ({len(r.fields)} fields{note}), disclosure {r.disclosure_id}"
                )
                lines.append("       would receive:")
                lines.extend(_render_value(to_json(r.would_receive or {}), "         "))
            else:
                lines.append(f"    -> {r.recipient}: WITHHELD: {r.reason}")
    return "\n".join(lines) + "\n"


def cannot_stop(
    agreements: Iterable[Agreement], record: ConsentRecord, on: date, class_of: Mapping[str, str] | None = None
) -> str | None:
    """What a citizen's "no" cannot stop, in one sentence for them; None when it can stop all it names.

    Sharing under a statutory gateway does not rest on consent: a "no" to a recipient, to
    a class of recipients (its members from ``class_of``, the partner registry: partner id
    -> class), or for a purpose, that such sharing reaches is recorded and stops nothing of it.
    """
    if record.decision is not ConsentDecision.DENY:
        return None
    within: Collection[str] | None
    if record.recipient_class is not None:
        within = sorted(p for p, c in (class_of or {}).items() if c == record.recipient_class)
        scope = f"with {record.recipient_class.replace('_', ' ')} recipients ({', '.join(within)})"
    elif record.recipient is not None:
        within, scope = (record.recipient,), f"with {record.recipient}"
    elif record.purpose is not None:
        within, scope = None, f"for {record.purpose.replace('_', ' ')}"
    else:
        return None  # a "no" to everything: /me and the API say so elsewhere
    gateways, on_consent = statutory_gateways(agreements, within, on, record.purpose)
    if not gateways:
        return None
    what = "Some sharing" if on_consent else "All sharing"
    return f"{what} {scope} does not rest on your consent, and this preference does not stop it: {'; '.join(gateways)}"
