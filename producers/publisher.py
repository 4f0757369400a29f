"""The publishing SDK a source system uses to put events on the bus.

It validates against the schema before anything leaves the process, keys each
event by its subject key (so consent and events co-partition), sets provenance
headers, and reports every delivery failure rather than dropping it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from accord import kafka
from accord.settings import Settings
from accord.sharing import subject_key
from accord.topics import EVENT_TYPES, TopicNames
from schemas.serde import Catalogue, InvalidRecord


@dataclass
class PublishReport:
    delivered: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (event id, error)
    # Highest delivered offset + 1 per (topic, partition): what a processor must reach.
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


class Publisher:
    def __init__(self, settings: Settings, catalogue: Catalogue | None = None, producer: Producer | None = None):
        self.names = TopicNames(settings.topic_prefix)
        self.catalogue = catalogue or Catalogue.default()
        self.producer = producer or kafka.producer(settings)
        self.report = PublishReport()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        headers = dict(msg.headers() or [])
        if err is not None:
            self.report.failed.append((headers.get("accord.event_id", b"?").decode(), err.str()))
            return
        self.report.delivered += 1
        tp = (msg.topic(), msg.partition())
        self.report.end_offsets[tp] = max(self.report.end_offsets.get(tp, 0), msg.offset() + 1)

    def publish(self, event_type: str, record: dict[str, Any], agency: str | None = None) -> None:
        """Validate and send one event; raises InvalidRecord (naming the field) before sending."""
        if event_type not in EVENT_TYPES:
            raise InvalidRecord("(event type)", f"unknown event type {event_type!r}")
        envelope = record.get("envelope") or {}
        if agency is not None and envelope.get("source_agency") != agency:
            raise InvalidRecord(
                "envelope.source_agency",
                f"{envelope.get('source_agency')!r} does not match the publishing agency {agency!r}",
            )
        value = self.catalogue.encode(event_type, record)
        self._send(event_type, value, subject_key(event_type, record).encode(), envelope)

    def publish_raw(self, event_type: str, value: bytes, key: bytes | None = None) -> None:
        """Send bytes as they are; for relays that forward already-encoded events."""
        self._send(event_type, value, key, {})

    def _send(self, event_type: str, value: bytes, key: bytes | None, envelope: dict[str, Any]) -> None:
        headers = [
            ("accord.agency", str(envelope.get("source_agency", "")).encode()),
            ("accord.source_system", str(envelope.get("source_system", "")).encode()),
            ("accord.event_id", str(envelope.get("event_id", "")).encode()),
            ("accord.occurred_at", str(envelope.get("occurred_at", "")).encode()),
        ]
        while True:
            try:
                self.producer.produce(
                    self.names.event(event_type), key=key, value=value, headers=headers, on_delivery=self._on_delivery
                )
                break
            except BufferError:
                self.producer.poll(0.1)  # local queue full: wait for deliveries, lose nothing
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> PublishReport:
        remaining = self.producer.flush(timeout)
        if remaining:
            self.report.failed.append(("?", f"{remaining} messages not delivered within {timeout}s"))
        return self.report
