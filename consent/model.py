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
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum


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
        if r.in_force(now) and r.matches(purpose, recipient, recipient_class) and (
            best is None or (r.specificity, r.id) > (best.specificity, best.id)
        ):
            best = r
    return best


def version(records: Iterable[ConsentRecord]) -> int:
    """The consent version a decision used: the newest record id of the subject, 0 for none."""
    return max((r.id for r in records), default=0)
