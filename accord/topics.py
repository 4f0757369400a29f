"""Topic names and the catalogue of topics Accord needs.

Every topic is created explicitly with its partition count before anything
subscribes: the embedded broker would otherwise invent one with 4 partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

EVENT_TYPES: tuple[str, ...] = ("custody", "referral", "natal_care")
EVENT_PARTITIONS = 4
DEAD_LETTER = "accord.deadletter"
CONSENT_PREFERENCES = "consent.preferences"


def event_topic(event_type: str, version: int = 1) -> str:
    return f"events.{event_type}.v{version}"


def partner_topic(partner: str, event_type: str) -> str:
    return f"partner.{partner}.{event_type}"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def catalogue(partners_by_type: dict[str, set[str]]) -> list[TopicSpec]:
    """Every topic of the bus, given which partners receive which event types."""
    specs = [TopicSpec(event_topic(t), EVENT_PARTITIONS, {}) for t in EVENT_TYPES]
    specs.append(TopicSpec(DEAD_LETTER, 1, {}))
    # Co-partitioned with the event topics, keyed by subject key.
    specs.append(TopicSpec(CONSENT_PREFERENCES, EVENT_PARTITIONS, {"cleanup.policy": "compact"}))
    for event_type, partners in sorted(partners_by_type.items()):
        for partner in sorted(partners):
            specs.append(TopicSpec(partner_topic(partner, event_type), 1, {}))
    return specs


def create_topics(admin: AdminClient, specs: list[TopicSpec], timeout: float = 15.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created"|"exists"}``."""
    existing = set(admin.list_topics(timeout=timeout).topics)
    result = {s.name: "exists" for s in specs if s.name in existing}
    wanted = [NewTopic(s.name, s.partitions, 1, config=s.config) for s in specs if s.name not in existing]
    if not wanted:
        return result
    for name, future in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            future.result()
            result[name] = "created"
        except KafkaException as exc:
            if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                raise
            result[name] = "exists"
    return result
