"""Partners' receipts in the ledger, and the disclosures still waiting for one.

A receipt is a ledger entry with outcome RECEIVED whose ``refers_to`` is the
disclosure (or retraction) acknowledged and whose ``disclosure_id`` is the
receipt id, uuid5(disclosure id, partner): appending it twice records it once
(I7). A receipt is accepted only from the partner the disclosure was sent to,
so partner isolation holds without broker ACLs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, and_, exists, select
from sqlalchemy.orm import aliased

from ledger.append import Appended, append
from ledger.entry import EntryDraft, StoredEntry, stored_entry
from ledger.tables import LedgerEntry

__all__ = [
    "ACKNOWLEDGEABLE",
    "RECEIVED",
    "ReceiptClaim",
    "ReceiptOutcome",
    "check_claim",
    "pending_receipts",
    "receipt_entry",
    "record_receipts",
]

RECEIVED = "RECEIVED"
# What a partner can acknowledge: what was actually sent to it.
ACKNOWLEDGEABLE = frozenset({"DISCLOSED", "RETRACTED"})
_CHUNK = 1000


@dataclass(frozen=True)
class ReceiptClaim:
    """A receipt as a partner sent it (nothing in it is trusted until checked)."""

    receipt_id: str
    disclosure_id: str
    partner: str
    received_at: datetime


@dataclass(frozen=True)
class ReceiptOutcome:
    claim: ReceiptClaim
    appended: Appended | None  # None when refused
    refusal: str | None  # why, naming the problem, never the record's contents


def check_claim(claim: ReceiptClaim, expected_id: str, acknowledged: EntryDraft | None) -> str | None:
    """Why the claim is refused, or None. Pure.

    ``acknowledged`` is the ledger entry the claim names (None if there is none).
    """
    if claim.receipt_id != expected_id:
        return "receipt id is not uuid5(disclosure id, partner)"
    if acknowledged is None or acknowledged.outcome not in ACKNOWLEDGEABLE:
        return f"no disclosure with that id was sent to partner {claim.partner!r}"
    if acknowledged.recipient != claim.partner:
        return f"receipt from partner {claim.partner!r} for a disclosure sent to another recipient"
    return None


def receipt_entry(claim: ReceiptClaim, acknowledged: EntryDraft, recorded_at: datetime) -> EntryDraft:
    """The RECEIVED entry for a checked claim: the acknowledged entry's context, pointing at it."""
    received = claim.received_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return replace(
        acknowledged,
        disclosure_id=claim.receipt_id,
        outcome=RECEIVED,
        reason=f"acknowledged by the partner at {received}",
        fields=(),
        decided_at=recorded_at,
        refers_to=acknowledged.disclosure_id,
    )


def _by_id(engine: Engine, ids: Iterable[str]) -> dict[str, StoredEntry]:
    wanted = sorted(set(ids))
    found: dict[str, StoredEntry] = {}
    with engine.connect() as conn:
        for i in range(0, len(wanted), _CHUNK):
            stmt = select(LedgerEntry.__table__).where(LedgerEntry.disclosure_id.in_(wanted[i : i + _CHUNK]))
            for row in conn.execute(stmt):
                found[row.disclosure_id] = stored_entry(row)
    return found


def record_receipts(
    engine: Engine,
    claims: Sequence[ReceiptClaim],
    expected_id: Callable[[str, str], str],
    recorded_at: datetime | None = None,
) -> list[ReceiptOutcome]:
    """Check each claim against the ledger and append the accepted ones in one batch.

    ``expected_id(disclosure_id, partner)`` is the receipt-id function (the partner
    SDK's), passed in so the ledger does not depend on the partner side.
    """
    now = recorded_at or datetime.now(UTC)
    known = _by_id(engine, (c.disclosure_id for c in claims))
    outcomes: list[ReceiptOutcome | None] = []
    drafts: list[EntryDraft] = []
    for claim in claims:
        stored = known.get(claim.disclosure_id)
        acknowledged = stored.draft if stored else None
        refusal = check_claim(claim, expected_id(claim.disclosure_id, claim.partner), acknowledged)
        if refusal is not None:
            outcomes.append(ReceiptOutcome(claim, None, refusal))
            continue
        assert acknowledged is not None  # check_claim refuses a claim that names no entry
        drafts.append(receipt_entry(claim, acknowledged, now))
        outcomes.append(None)
    appended = iter(append(engine, drafts)) if drafts else iter(())
    return [
        o if o is not None else ReceiptOutcome(c, next(appended), None) for c, o in zip(claims, outcomes, strict=True)
    ]


def pending_receipts(
    engine: Engine,
    partner: str | None = None,
    older_than: timedelta | None = None,
    now: datetime | None = None,
) -> list[StoredEntry]:
    """Disclosures (and retractions) sent to a partner with no receipt yet, oldest first.

    ``older_than`` keeps only those recorded at least that long before ``now``.
    """
    receipt = aliased(LedgerEntry)
    stmt = (
        select(LedgerEntry.__table__)
        .where(LedgerEntry.outcome.in_(sorted(ACKNOWLEDGEABLE)))
        .where(~exists().where(and_(receipt.refers_to == LedgerEntry.disclosure_id, receipt.outcome == RECEIVED)))
        .order_by(LedgerEntry.seq)
    )
    if partner is not None:
        stmt = stmt.where(LedgerEntry.recipient == partner)
    if older_than is not None:
        stmt = stmt.where(LedgerEntry.decided_at <= (now or datetime.now(UTC)) - older_than)
    with engine.connect() as conn:
        return [stored_entry(r) for r in conn.execute(stmt)]
