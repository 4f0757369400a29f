"""The benchmark's records: a synthetic scenario encoded once, published again for each run.

Every run gets a fresh topic prefix (so a fresh group and fresh topics), but the same
bytes: the events are checked and encoded once by the publishing SDK's own checks
(``Publisher.problems``), then produced as they are, with the SDK's key (the subject
key) and provenance headers, so partitions and sizes are identical in every run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaError, Message

from accord.sharing.decide import subject_key
from agreements import load_dir, recipients_by_type
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicLayout, TopicNames, TopicSpec, create_topics
from producers import Publisher
from producers.synthetic import build_scenario


@dataclass(frozen=True)
class Encoded:
    event_type: str
    event_id: str
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


def encode_scenario(settings: Settings, n_events: int, seed: int = 1) -> list[Encoded]:
    """``n_events`` synthetic events, each checked and encoded as ``Publisher.publish`` would."""
    checker = Publisher(settings, producer=kafka.producer(settings))
    out = []
    for e in build_scenario(n_events=n_events, seed=seed, n_malformed=0).events:
        problems, value = checker.problems(e.event_type, e.record)
        if problems or value is None:
            raise ValueError(f"synthetic event refused by the publisher's checks: {problems}")
        env = e.record["envelope"]
        headers = (
            (header.AGENCY, str(env["source_agency"]).encode()),
            (header.SOURCE_SYSTEM, str(env["source_system"]).encode()),
            (header.EVENT_ID, str(env["event_id"]).encode()),
            (header.OCCURRED_AT, str(env["occurred_at"]).encode()),
        )
        out.append(
            Encoded(e.event_type, str(env["event_id"]), subject_key(e.event_type, e.record).encode(), value, headers)
        )
    return out


def position(msg: Message) -> tuple[tuple[str, int], int]:
    """A record's (topic, partition) and offset: set on every one delivered or consumed without an error."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return (topic, partition), offset


def create_bus_topics(settings: Settings, extra: Sequence[TopicSpec] = ()) -> list[TopicSpec]:
    """The bus's whole topic catalogue under ``settings.topic_prefix`` (event topics have 4 partitions)."""
    names = TopicNames(settings.topic_prefix)
    specs = names.catalogue(recipients_by_type(load_dir(settings.agreements_dir)), TopicLayout.of(settings)) + list(
        extra
    )
    create_topics(kafka.admin(settings), specs)
    return specs


def partner_topics(settings: Settings) -> dict[str, list[str]]:
    """Event type -> the partner topics the agreements send it to."""
    names = TopicNames(settings.topic_prefix)
    by_type = recipients_by_type(load_dir(settings.agreements_dir))
    return {t: [names.partner(p, t) for p in sorted(ps)] for t, ps in sorted(by_type.items())}


def publish(settings: Settings, events: list[Encoded]) -> dict[tuple[str, int], int]:
    """Produce every event and wait for all acknowledgements; the end offset of each partition."""
    names = TopicNames(settings.topic_prefix)
    producer = kafka.producer(settings)
    ends: dict[tuple[str, int], int] = {}
    failed: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err.name())
            return
        tp, offset = position(msg)
        ends[tp] = max(ends.get(tp, 0), offset + 1)

    for e in events:
        while True:
            try:
                producer.produce(
                    names.event(e.event_type),
                    key=e.key,
                    value=e.value,
                    headers=list(e.headers),
                    on_delivery=on_delivery,
                )
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) or failed:
        raise RuntimeError(f"backlog not delivered: {len(failed)} failed ({failed[:3]})")
    return ends
