"""Topic names and the catalogue of topics Accord needs.

Every topic is created explicitly with its partition count before anything
subscribes: the embedded broker would otherwise invent one with 4 partitions.
A prefix (``ACCORD_TOPIC_PREFIX``) lets several buses, or several tests, share
one broker.

The event types and their topics' partitions come from the event catalogue
(``schemas/events/<type>/``, ``accord.partitions``): a new type gets its topic by
having a folder there.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas import catalogue as event_catalogue

EVENT_TYPES: tuple[str, ...] = event_catalogue.default().names()
# The consent-preference and receipt topics' partitions; an event topic has its type's accord.partitions.
EVENT_PARTITIONS = event_catalogue.DEFAULT_PARTITIONS
EVENT_TOPIC_PARTITIONS: dict[str, int] = {t.name: t.partitions for t in event_catalogue.default()}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


@dataclass(frozen=True)
class TopicNames:
    prefix: str = ""

    def event(self, event_type: str, version: int = 1) -> str:
        return f"{self.prefix}events.{event_type}.v{version}"

    def partner(self, partner: str, event_type: str) -> str:
        return f"{self.prefix}partner.{partner}.{event_type}"

    @property
    def dead_letter(self) -> str:
        return f"{self.prefix}accord.deadletter"

    @property
    def agreements(self) -> str:
        return f"{self.prefix}accord.agreements"

    @property
    def consent_preferences(self) -> str:
        return f"{self.prefix}consent.preferences"

    @property
    def receipts(self) -> str:
        return f"{self.prefix}accord.receipts"

    @property
    def ledger_checkpoints(self) -> str:
        return f"{self.prefix}accord.ledger.checkpoints"

    def event_type_of(self, topic: str) -> str:
        """``events.custody.v1`` -> ``custody``; ValueError for any other topic."""
        rest = topic.removeprefix(self.prefix)
        parts = rest.split(".")
        if len(parts) != 3 or parts[0] != "events" or parts[1] not in EVENT_TYPES:
            raise ValueError(f"{topic} is not an event topic")
        return parts[1]

    def catalogue(self, partners_by_type: dict[str, set[str]]) -> list[TopicSpec]:
        """Every topic of the bus, given which partners receive which event types."""
        specs = [TopicSpec(self.event(t), EVENT_TOPIC_PARTITIONS[t], {}) for t in EVENT_TYPES]
        specs.append(TopicSpec(self.dead_letter, 1, {}))
        # Keyed by agreement id@version; one partition keeps versions in order.
        specs.append(TopicSpec(self.agreements, 1, {"cleanup.policy": "compact"}))
        # Keyed by subject key and co-partitioned with the event topics.
        specs.append(TopicSpec(self.consent_preferences, EVENT_PARTITIONS, {"cleanup.policy": "compact"}))
        # Partners' receipts, keyed by disclosure id; the processor records them in the ledger.
        specs.append(TopicSpec(self.receipts, EVENT_PARTITIONS, {}))
        # Signed ledger checkpoints, keyed by tree size, kept for good: partners and auditors hold copies.
        specs.append(TopicSpec(self.ledger_checkpoints, 1, {"retention.ms": "-1"}))
        for event_type, partners in sorted(partners_by_type.items()):
            for partner in sorted(partners):
                specs.append(TopicSpec(self.partner(partner, event_type), 1, {}))
        return specs


def create_topics(admin: AdminClient, specs: list[TopicSpec], timeout: float = 10.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created"|"exists"}``.

    A broker that does not answer within ``timeout`` seconds raises KafkaException
    (``_TRANSPORT``, ``_TIMED_OUT``): a bounded wait, so ``accord topics create``
    can say which servers it tried instead of hanging.
    """
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
