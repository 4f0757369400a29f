"""Partners' receipts from ``accord.receipts`` into the ledger.

Per batch: decode every receipt, check each against the ledger (the disclosure
must have been sent to the partner that acknowledges it) and append the good
ones in one transaction; the processor dead-letters everything else with the
reason (I2). A replayed batch appends nothing twice: receipt ids are stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Engine

from accord.processor.handler import Inbound
from consumers.receipts import decode_receipt, receipt_id, with_receipt_schema
from ledger.receipts import ReceiptClaim, record_receipts

__all__ = ["ReceiptRecorder", "ReceiptReport"]


@dataclass
class ReceiptReport:
    receipts: int = 0
    recorded: int = 0  # new ledger entries
    refused: list[tuple[Inbound, str, str]] = field(default_factory=list)  # (record, error kind, reason)


class ReceiptRecorder:
    """Checks receipts against the ledger and appends the good ones; the caller dead-letters the refused."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.catalogue = with_receipt_schema()

    def handle(self, batch: Sequence[Inbound]) -> ReceiptReport:
        """Record the good receipts of ``batch`` in one transaction; the others come back in ``refused``."""
        report = ReceiptReport(receipts=len(batch))
        claims: list[tuple[Inbound, ReceiptClaim]] = []
        for msg in batch:
            try:
                if msg.value is None:
                    raise ValueError("empty message (no value)")
                r = decode_receipt(self.catalogue, msg.value)
                if msg.key is not None and msg.key != r.disclosure_id.encode():
                    # The SDK keys a receipt by the id it acknowledges; another key is a record altered or forged.
                    raise ValueError("the record's key is not the disclosure id the receipt names")
            except (ValueError, KeyError) as exc:
                report.refused.append((msg, type(exc).__name__, str(exc)))
                continue
            claims.append((msg, ReceiptClaim(r.receipt_id, r.disclosure_id, r.partner, r.received_at)))
        outcomes = record_receipts(self.engine, [c for _, c in claims], receipt_id) if claims else []
        for (msg, _), outcome in zip(claims, outcomes, strict=True):
            if outcome.refusal is not None:
                report.refused.append((msg, "ReceiptRefused", outcome.refusal))
            elif outcome.appended is not None and outcome.appended.new:
                report.recorded += 1
        return report
