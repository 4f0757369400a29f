"""The receipts shell: partners' receipts from ``accord.receipts`` into the ledger.

Per batch: decode every receipt, check each against the ledger (the disclosure
must have been sent to the partner that acknowledges it) and append the good
ones in one transaction; everything else goes to the dead-letter topic with a
reason (I2). A replayed batch appends nothing twice: receipt ids are stable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer
from sqlalchemy import Engine

from accord.topics import TopicNames
from consumers.receipts import decode_receipt, receipt_id, with_receipt_schema
from ledger.receipts import ReceiptClaim, record_receipts

__all__ = ["ReceiptRecorder", "ReceiptReport", "ReceiptsFailed"]

log = structlog.get_logger("accord.receipts")


class ReceiptsFailed(RuntimeError):
    pass


@dataclass
class ReceiptReport:
    receipts: int = 0
    recorded: int = 0  # new ledger entries
    refused: int = 0  # dead-lettered, unreadable included


class ReceiptRecorder:
    def __init__(self, engine: Engine, producer: Producer, names: TopicNames) -> None:
        self.engine = engine
        self.producer = producer
        self.names = names
        self.catalogue = with_receipt_schema()

    def handle(self, batch: Sequence[Any]) -> ReceiptReport:
        """``batch``: messages with topic, partition, offset, key and value (processor.Inbound)."""
        report = ReceiptReport(receipts=len(batch))
        claims: list[tuple[Any, ReceiptClaim]] = []
        dead: list[tuple[Any, str, str]] = []
        for msg in batch:
            try:
                if msg.value is None:
                    raise ValueError("empty message (no value)")
                r = decode_receipt(self.catalogue, msg.value)
            except (ValueError, KeyError) as exc:
                dead.append((msg, type(exc).__name__, str(exc)))
                continue
            claims.append((msg, ReceiptClaim(r.receipt_id, r.disclosure_id, r.partner, r.received_at)))
        outcomes = record_receipts(self.engine, [c for _, c in claims], receipt_id) if claims else []
        for (msg, _), outcome in zip(claims, outcomes):
            if outcome.refusal is not None:
                dead.append((msg, "ReceiptRefused", outcome.refusal))
            elif outcome.appended is not None and outcome.appended.new:
                report.recorded += 1
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err.str())

        for msg, error, reason in dead:
            self.producer.produce(
                self.names.dead_letter,
                key=msg.key,
                value=msg.value,
                headers=[
                    ("accord.error", error.encode()),
                    ("accord.reason", reason.encode()),
                    ("accord.source_topic", msg.topic.encode()),
                    ("accord.source_partition", str(msg.partition).encode()),
                    ("accord.source_offset", str(msg.offset).encode()),
                ],
                on_delivery=on_delivery,
            )
            # The reason names the partner and the problem; receipts carry no personal data.
            log.warning("receipt_refused", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                        error=error, reason=reason)
        report.refused = len(dead)
        if dead and (self.producer.flush(30) or errors):
            raise ReceiptsFailed(f"dead letters not delivered: {errors[:3]}")
        return report
