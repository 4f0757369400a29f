"""Receipts: a partner tells the bus it has handled a disclosure.

A receipt goes to ``accord.receipts`` keyed by the disclosure id; the processor
checks it against the ledger (the disclosure must have been sent to this
partner) and records it as a ledger entry pointing at the disclosure. The
receipt id is derived from (disclosure id, partner), so sending a receipt
again -- after a crash between acknowledging and committing, say -- records
nothing twice.

Nothing here authenticates the partner (the embedded broker ignores ACLs): a
receipt names its partner, and the processor refuses any receipt whose partner
is not the disclosure's recipient, so one partner cannot acknowledge another's
disclosures under its own name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, Producer

from bus import headers as header
from bus.errors import flush_or_raise
from schemas.serde import Catalogue, load_schema

__all__ = [
    "RECEIPT_NAMESPACE",
    "RECEIPT_SCHEMA",
    "Receipt",
    "ReceiptSender",
    "decode_receipt",
    "encode_receipt",
    "receipt_id",
    "with_receipt_schema",
]

RECEIPT_NAMESPACE = uuid.UUID("5d0f8c3e-2b7a-5e61-8c4d-9a1b2c3d4e5f")
RECEIPT_SCHEMA = "receipt"


def receipt_id(disclosure_id: str, partner: str) -> str:
    """uuid5 of the disclosure id and the partner: one receipt per disclosure per partner."""
    return str(uuid.uuid5(RECEIPT_NAMESPACE, f"receipt|{disclosure_id}|{partner}"))


@dataclass(frozen=True)
class Receipt:
    receipt_id: str
    disclosure_id: str
    partner: str
    received_at: datetime

    @classmethod
    def of(cls, disclosure_id: str, partner: str, received_at: datetime | None = None) -> Receipt:
        return cls(receipt_id(disclosure_id, partner), disclosure_id, partner, received_at or datetime.now(UTC))


def with_receipt_schema(catalogue: Catalogue | None = None) -> Catalogue:
    """The catalogue with the receipt schema added (it is not in the default one)."""
    catalogue = catalogue or Catalogue.default()
    if RECEIPT_SCHEMA not in catalogue:
        catalogue.register(RECEIPT_SCHEMA, load_schema(RECEIPT_SCHEMA))
    return catalogue


def encode_receipt(catalogue: Catalogue, receipt: Receipt) -> bytes:
    return catalogue.encode(
        RECEIPT_SCHEMA,
        {
            "receipt_id": receipt.receipt_id,
            "disclosure_id": receipt.disclosure_id,
            "partner": receipt.partner,
            "received_at": receipt.received_at,
        },
    )


def decode_receipt(catalogue: Catalogue, data: bytes) -> Receipt:
    """The receipt in ``data``; ValueError (SerdeError) if it is anything else."""
    name, record = catalogue.decode(data)
    if name != RECEIPT_SCHEMA:
        raise ValueError(f"a {name} record on the receipts topic")
    received_at = record["received_at"]
    if received_at.tzinfo is None:
        received_at = received_at.replace(tzinfo=UTC)
    return Receipt(record["receipt_id"], record["disclosure_id"], record["partner"], received_at)


class ReceiptSender:
    """Produces a partner's receipts; ``flush`` before committing the offsets they cover."""

    def __init__(self, producer: Producer, topic: str, partner: str, catalogue: Catalogue | None = None) -> None:
        self.producer = producer
        self.topic = topic
        self.partner = partner
        self.catalogue = with_receipt_schema(catalogue)
        self._errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self._errors.append(err.str())

    def send(self, disclosure_id: str, received_at: datetime | None = None) -> Receipt:
        receipt = Receipt.of(disclosure_id, self.partner, received_at)
        self.producer.produce(
            self.topic,
            key=disclosure_id.encode(),
            value=encode_receipt(self.catalogue, receipt),
            headers=[(header.PARTNER, self.partner.encode())],
            on_delivery=self._on_delivery,
        )
        self.producer.poll(0)
        self.sent += 1
        return receipt

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every receipt is on the broker; raise if any is not."""
        flush_or_raise(self.producer, "receipts", self._errors, timeout)
