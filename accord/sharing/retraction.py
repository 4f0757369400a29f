"""Retractions: telling a recipient to stop using data it was sent.

Pure. Two causes:

- consent withdrawn: given a subject's earlier disclosures (from the ledger) and
  their consent history, each consent-based disclosure that a withdrawal made
  after it ended is retracted;
- agreement suspended or revoked: every disclosure made under an earlier version
  of that agreement is retracted, whatever its consent mode.

Both are judged as things stood when the withdrawal or the ending version came, not
as they stand when the sweep runs, so what is retracted does not depend on how soon
the sweep ran, or on a permit or a reinstating version that followed.

Each retraction is recorded in the ledger like a disclosure, and its recipient
gets a notice. A retraction's id is derived from the disclosure it retracts, so
a disclosure is retracted once, whatever the cause and however often the sweep
runs (I7).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from accord.sharing.decide import Context, Outcome, consent_outcome
from agreements.model import Agreement, ConsentMode, Status
from consent.model import ConsentDecision, ConsentRecord
from ledger import EntryDraft

RETRACTION_NAMESPACE = uuid.UUID("0b6c1a52-6f7e-5d2c-9a41-3e8f7c2d1b90")


def retraction_id(disclosure_id: str) -> str:
    return str(uuid.uuid5(RETRACTION_NAMESPACE, f"retract|{disclosure_id}"))


@dataclass(frozen=True)
class Retraction:
    entry: EntryDraft  # the ledger entry recording the retraction
    retracts: str  # the disclosure id whose data must no longer be used


def retractions_for(
    disclosed: Iterable[EntryDraft],
    agreements: Mapping[str, Agreement],
    consents: Sequence[ConsentRecord],
    context: Context,
) -> list[Retraction]:
    """Retractions owed for ``disclosed`` by the withdrawals in the subject's consent history.

    A consent-based disclosure decided with consent version v is retracted by the first
    DENY record w after it (w.id > v) under which it would not have been made, judged on
    the history as it stood when w was recorded: the records up to w, at w's time. What
    came after w does not undo that: a permit recorded later governs the decisions after
    it, not whether the recipient must stop using what it had been sent. So the answer
    is the same whenever the sweep runs, however soon a permit follows the withdrawal.
    """
    history = sorted(consents, key=lambda r: r.id)
    withdrawals = [(i, r) for i, r in enumerate(history) if r.decision is ConsentDecision.DENY]
    out = []
    for entry in disclosed:
        if entry.outcome != Outcome.DISCLOSED.value:
            continue
        agreement = agreements.get(f"{entry.agreement_id}@v{entry.agreement_version}")
        if agreement is None or agreement.consent_mode is ConsentMode.NOT_REQUIRED:
            continue  # statutory sharing does not rest on consent, so withdrawal does not undo it
        for i, withdrawal in withdrawals:
            if withdrawal.id <= entry.consent_version:
                continue  # the decision knew of it
            then = replace(context, now=withdrawal.recorded_at)
            outcome, reason = consent_outcome(agreement, entry.recipient, history[: i + 1], then)
            if outcome is not Outcome.DISCLOSED:
                out.append(_retract(entry, f"consent withdrawn: {reason}", context, consent_version=withdrawal.id))
                break
    return out


def _retract(disclosure: EntryDraft, reason: str, context: Context, consent_version: int | None = None) -> Retraction:
    """The ledger entry retracting ``disclosure``: its id is derived from the disclosure's.

    ``consent_version``: the subject's consent it rests on, when that is newer than the disclosure's.
    """
    entry = replace(
        disclosure,
        disclosure_id=retraction_id(disclosure.disclosure_id),
        outcome="RETRACTED",
        reason=reason,
        decided_at=context.now,
        refers_to=disclosure.disclosure_id,
        consent_version=disclosure.consent_version if consent_version is None else consent_version,
    )
    return Retraction(entry=entry, retracts=disclosure.disclosure_id)


ENDED = (Status.SUSPENDED, Status.REVOKED)


def retractions_for_agreement(disclosed: Iterable[EntryDraft], ended: Agreement, context: Context) -> list[Retraction]:
    """Retractions owed because version ``ended`` of an agreement suspended or revoked it.

    Every disclosure under an earlier version is retracted, whatever came after: a later
    version that reinstates the agreement governs the disclosures after it, not whether
    the recipients must stop using what they had been sent under the ended one.
    """
    if ended.status not in ENDED:
        raise ValueError(f"{ended.key} is {ended.status.value}, not suspended or revoked")
    reason = f"agreement {ended.id} {ended.status.value} (version {ended.version})"
    return [
        _retract(entry, reason, context)
        for entry in disclosed
        if entry.outcome == Outcome.DISCLOSED.value
        and entry.agreement_id == ended.id
        and entry.agreement_version < ended.version
    ]
