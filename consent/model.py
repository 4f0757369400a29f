"""Citizens' consent preferences and the rule that picks the one that applies.

Pure: no I/O. The store (``consent.store``) persists the append-only history;
this module derives the current answer for one (subject, purpose, recipient).

Precedence, most specific first: a record naming the recipient (with or without
a purpose) beats one naming only the purpose, which beats one naming neither.
At equal specificity the newest record wins. A record naming a purpose matches
only that purpose; one naming a recipient matches only that recipient.
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

    def matches(self, purpose: str, recipient: str) -> bool:
        return (self.purpose is None or self.purpose == purpose) and (
            self.recipient is None or self.recipient == recipient
        )

    @property
    def specificity(self) -> int:
        return 2 * (self.recipient is not None) + (self.purpose is not None)


def applicable(records: Iterable[ConsentRecord], purpose: str, recipient: str) -> ConsentRecord | None:
    """The record that governs sharing for this purpose with this recipient, if any."""
    best: ConsentRecord | None = None
    for r in records:
        if r.matches(purpose, recipient) and (
            best is None or (r.specificity, r.id) > (best.specificity, best.id)
        ):
            best = r
    return best


def version(records: Iterable[ConsentRecord]) -> int:
    """The consent version a decision used: the newest record id of the subject, 0 for none."""
    return max((r.id for r in records), default=0)
