"""Citizens' consent preferences and the rule that picks the one that applies.

Pure: no I/O. The store (``consent.store``) persists the append-only history;
this module derives the current answer for one (subject, purpose, recipient).

A record may name a purpose, a recipient, a recipient class (e.g. ``nhs``,
``prosecution``), or a purpose together with one of the other two. It matches a
(purpose, recipient) pair when every scope it names agrees.

Precedence, most specific first:
1. a record naming the recipient beats one naming the recipient's class,
   which beats one naming neither (purpose-only);
2. at equal recipient scope, one that also names the purpose beats one that
   does not;
3. then the newest (highest id) wins.
Expired records (``expires_at`` at or before the decision time) are ignored.

What a preference may name is checked before it is recorded
(:func:`check_preference`): the history is append-only, so a preference filed
under a malformed subject key or an unknown recipient or purpose would sit
there, never matching anything, while the citizen believes it applies. The
known recipients and classes come from the partner registry, which the caller
loads (the CLI and the API from ``settings.partners_file``) and passes in as
:class:`KnownScopes`; this module reads no files.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from agreements.model import Purpose
from schemas.subject_keys import InvalidSubjectKey, normalise


class ConsentDecision(str, Enum):
    PERMIT = "permit"
    DENY = "deny"


@dataclass(frozen=True)
class ConsentRecord:
    id: int  # monotonically increasing; doubles as the consent version
    subject_key: str
    purpose: str | None
    recipient: str | None
    decision: ConsentDecision
    recorded_at: datetime
    recipient_class: str | None = None
    expires_at: datetime | None = None

    def matches(self, purpose: str, recipient: str, recipient_class: str | None) -> bool:
        return (
            (self.purpose is None or self.purpose == purpose)
            and (self.recipient is None or self.recipient == recipient)
            and (self.recipient_class is None or self.recipient_class == recipient_class)
        )

    def in_force(self, now: datetime | None) -> bool:
        return self.expires_at is None or now is None or self.expires_at > now

    @property
    def specificity(self) -> tuple[int, int]:
        scope = 2 if self.recipient is not None else 1 if self.recipient_class is not None else 0
        return scope, int(self.purpose is not None)


class InvalidPreference(ValueError):
    """A preference that would never apply as meant; ``field`` is what is wrong, ``reason`` why.

    The reason never repeats the submitted value, so it may go into a response
    body or a log line (I6).
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


@dataclass(frozen=True)
class KnownScopes:
    """The recipients, recipient classes and purposes a preference may name.

    One fact, the partner registry's ``{partner id: recipient class}``; the recipients and
    the classes are read from it.
    """

    class_of: Mapping[str, str]  # partner id -> its recipient class
    purposes: frozenset[str] = field(default_factory=lambda: frozenset(p.value for p in Purpose))

    @classmethod
    def from_partners(cls, partners: Mapping[str, str]) -> KnownScopes:
        """From the partner registry (agreements.partners.load_partners)."""
        return cls(dict(partners))

    @property
    def recipients(self) -> frozenset[str]:
        return frozenset(self.class_of)

    @property
    def recipient_classes(self) -> frozenset[str]:
        return frozenset(self.class_of.values())


def _listed(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none are registered"


def check_preference(
    subject_key: str,
    known: KnownScopes,
    *,
    purpose: str | None = None,
    recipient: str | None = None,
    recipient_class: str | None = None,
) -> str:
    """The normalised subject key, or :class:`InvalidPreference` naming the first field that is wrong.

    A bare NHS number becomes ``nhs:<number>``; anything else must already be in
    the form the processor derives (schemas.subject_keys), and every scope named
    must be known.
    """
    try:
        key = normalise(subject_key)
    except InvalidSubjectKey as exc:
        raise InvalidPreference("subject", exc.reason) from None
    if purpose is None and recipient is None and recipient_class is None:
        raise InvalidPreference("scope", "a consent preference names a purpose, a recipient or a recipient class")
    if recipient is not None and recipient_class is not None:
        raise InvalidPreference("scope", "a consent preference names a recipient or a recipient class, not both")
    if purpose is not None and purpose not in known.purposes:
        raise InvalidPreference("purpose", f"unknown purpose: use one of {_listed(known.purposes)}")
    if recipient is not None and recipient not in known.recipients:
        hint = (
            "that is a recipient class, not a partner: record it as a recipient class"
            if recipient in known.recipient_classes
            else f"use a partner id from the partner registry: {_listed(known.recipients)}"
        )
        raise InvalidPreference("recipient", f"unknown recipient: {hint}")
    if recipient_class is not None and recipient_class not in known.recipient_classes:
        hint = (
            "that is a partner, not a class: record it as a recipient"
            if recipient_class in known.recipients
            else f"use a class from the partner registry: {_listed(known.recipient_classes)}"
        )
        raise InvalidPreference("recipient_class", f"unknown recipient class: {hint}")
    return key


def applicable(
    records: Iterable[ConsentRecord],
    purpose: str,
    recipient: str,
    recipient_class: str | None = None,
    now: datetime | None = None,
) -> ConsentRecord | None:
    """The record that governs sharing for this purpose with this recipient, if any."""
    best: ConsentRecord | None = None
    for r in records:
        if (
            r.in_force(now)
            and r.matches(purpose, recipient, recipient_class)
            and (best is None or (r.specificity, r.id) > (best.specificity, best.id))
        ):
            best = r
    return best


def version(records: Iterable[ConsentRecord]) -> int:
    """The consent version a decision used: the newest record id of the subject, 0 for none."""
    return max((r.id for r in records), default=0)
