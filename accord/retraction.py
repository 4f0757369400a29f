"""Retractions: telling a recipient to stop using data after consent is withdrawn.

Pure. Given a subject's earlier disclosures (from the ledger) and their consent
history as it stands now, find each disclosure that would no longer be made:
its recipient gets a retraction notice, recorded in the ledger like a
disclosure. A retraction's id is derived from the disclosure it retracts, so a
disclosure is retracted once however often the sweep runs (I7).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from accord.sharing import Context, Outcome, consent_outcome
from agreements.model import Agreement, ConsentMode
from consent.model import ConsentRecord, version
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
    """Retractions owed for ``disclosed`` under the subject's consent as it is now."""
    out = []
    for entry in disclosed:
        if entry.outcome != Outcome.DISCLOSED.value:
            continue
        agreement = agreements.get(f"{entry.agreement_id}@v{entry.agreement_version}")
        if agreement is None or agreement.consent_mode is ConsentMode.NOT_REQUIRED:
            continue  # statutory sharing does not rest on consent, so withdrawal does not undo it
        outcome, reason = consent_outcome(agreement, entry.recipient, consents, context)
        if outcome is Outcome.DISCLOSED:
            continue
        out.append(
            Retraction(
                entry=replace(
                    entry,
                    disclosure_id=retraction_id(entry.disclosure_id),
                    outcome="RETRACTED",
                    reason=f"consent withdrawn: {reason}",
                    consent_version=version(consents),
                    decided_at=context.now,
                    refers_to=entry.disclosure_id,
                ),
                retracts=entry.disclosure_id,
            )
        )
    return out
