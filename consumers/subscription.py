"""The partner SDK: subscribe to your own topics and get decoded disclosures.

A partner subscribes only to ``partner.<its id>.<type>`` topics: isolation comes
from what the processor writes where, not from broker ACLs (which the embedded
broker ignores). Records are decoded with the recipient schema the agreement
defines, so a partner never needs the source schema.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message

from accord import kafka
from accord.settings import Settings
from accord.topics import TopicNames
from agreements.model import Agreement
from agreements.recipient_schemas import recipient_catalogue


@dataclass(frozen=True)
class Disclosure:
    disclosure_id: str
    agreement: str
    event_type: str
    ledger_seq: int
    schema: str
    record: dict[str, Any]
    topic: str
    partition: int
    offset: int


def partner_topics(names: TopicNames, partner: str, agreements: Iterable[Agreement]) -> list[str]:
    return sorted(
        {names.partner(partner, t) for a in agreements if partner in a.recipients for t in a.event_types}
    )


class Subscription:
    def __init__(self, settings: Settings, partner: str, agreements: Iterable[Agreement], group_id: str | None = None):
        agreements = list(agreements)
        self.partner = partner
        self.topics = partner_topics(TopicNames(settings.topic_prefix), partner, agreements)
        if not self.topics:
            raise ValueError(f"no agreement names {partner!r} as a recipient")
        self.catalogue = recipient_catalogue(agreements)
        self.consumer = kafka.consumer(settings, group_id or f"accord-partner-{partner}")
        self.consumer.subscribe(self.topics)

    def _decode(self, msg: Message) -> Disclosure:
        headers = {k: v.decode() for k, v in (msg.headers() or [])}
        schema, record = self.catalogue.decode(msg.value())
        return Disclosure(
            disclosure_id=headers["accord.disclosure_id"],
            agreement=headers["accord.agreement"],
            event_type=headers["accord.event_type"],
            ledger_seq=int(headers["accord.ledger_seq"]),
            schema=schema,
            record=record,
            topic=msg.topic(),
            partition=msg.partition(),
            offset=msg.offset(),
        )

    def poll(self, timeout: float = 1.0) -> Disclosure | None:
        msg = self.consumer.poll(timeout)
        if msg is None:
            return None
        if msg.error():
            raise KafkaException(msg.error())
        return self._decode(msg)

    def iter(self, max_records: int | None = None, idle_timeout: float = 10.0) -> Iterator[Disclosure]:
        """Yield disclosures until ``max_records`` or ``idle_timeout`` seconds with nothing new."""
        count = 0
        while max_records is None or count < max_records:
            disclosure = self.poll(idle_timeout)
            if disclosure is None:
                return
            count += 1
            yield disclosure

    def commit(self) -> None:
        self.consumer.commit(asynchronous=False)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
