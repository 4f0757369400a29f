"""Topic names and the catalogue of topics Accord needs.

Every topic is created explicitly with its partition count before anything
subscribes: the embedded broker would otherwise invent one with 4 partitions.
A prefix (``ACCORD_TOPIC_PREFIX``) lets several buses, or several tests, share
one broker.

The event types and their topics' partitions come from the event catalogue
(``schemas/events/<type>/``, ``accord.partitions``): a new type gets its topic by
having a folder there. A deployment sizes them with :class:`TopicLayout`, read from
the settings: the partitions of each event topic (``ACCORD_TOPIC_PARTITIONS``), and
the replication factor and ``min.insync.replicas`` of every topic Accord creates
(``ACCORD_TOPIC_REPLICATION_FACTOR``, ``ACCORD_TOPIC_MIN_INSYNC_REPLICAS``).

Who relies on partition counts:

- the processor's consumer group shares the event and receipt partitions, so the most
  workers that can decide at once is the largest event topic's count;
- ``consent.preferences`` is keyed by subject key like the event topics. Nothing in
  Accord joins the two (the processor reads consent from the store, I5), but a partner
  or auditor job may: it gets as many partitions as the largest event topic, so it is
  co-partitioned with every event topic of that count (all of them while every type has
  the same count, which is the default and the advice in docs/production.md);
- ``accord.receipts`` (keyed by disclosure id) follows the same count, so receipts are
  spread over as many workers as events are;
- ``accord.agreements``, ``accord.ledger.checkpoints`` and ``accord.deadletter`` keep
  one partition: the processor reads the agreements feed to its end in order, and
  checkpoints and dead letters are read in order by people;
- each partner topic keeps one partition, so a partner reads a disclosure and its
  retraction (both keyed by disclosure id) in the order they were recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from schemas import catalogue as event_catalogue

if TYPE_CHECKING:
    from bus.settings import Settings

EVENT_TYPES: tuple[str, ...] = event_catalogue.default().names()
# The consent-preference and receipt topics' partitions; an event topic has its type's accord.partitions.
EVENT_PARTITIONS = event_catalogue.DEFAULT_PARTITIONS
EVENT_TOPIC_PARTITIONS: dict[str, int] = {t.name: t.partitions for t in event_catalogue.default()}


class TopicLayoutError(ValueError):
    """Topic settings that cannot give a working bus; the message names the variable."""


@dataclass(frozen=True)
class TopicLayout:
    """How many partitions and replicas the topics get: the deployment's, from the settings.

    The default (replication 1, min.insync.replicas 1, the catalogue's partitions) is a
    single broker's: the embedded one, or a laptop.
    """

    replication_factor: int = 1
    min_insync_replicas: int = 1
    partitions: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.replication_factor < 1:
            raise TopicLayoutError(
                f"ACCORD_TOPIC_REPLICATION_FACTOR is {self.replication_factor}: it must be at least 1"
            )
        if self.min_insync_replicas < 1:
            raise TopicLayoutError(
                f"ACCORD_TOPIC_MIN_INSYNC_REPLICAS is {self.min_insync_replicas}: it must be at least 1"
            )
        if self.min_insync_replicas > self.replication_factor:
            raise TopicLayoutError(
                f"ACCORD_TOPIC_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) is more than "
                f"ACCORD_TOPIC_REPLICATION_FACTOR ({self.replication_factor}): no write with acks=all could "
                "ever succeed; lower it or raise the replication factor (3 and 2 on a production cluster)"
            )
        unknown = sorted(set(self.partitions) - set(EVENT_TYPES))
        if unknown:
            raise TopicLayoutError(
                f"ACCORD_TOPIC_PARTITIONS names {', '.join(unknown)}, not an event type of the catalogue "
                f"({', '.join(sorted(EVENT_TYPES))}); fix the name or remove it"
            )
        bad = sorted(t for t, n in self.partitions.items() if type(n) is not int or n < 1)
        if bad:
            raise TopicLayoutError(
                f"ACCORD_TOPIC_PARTITIONS gives {', '.join(bad)} fewer than 1 partition; give a whole number >= 1"
            )

    @classmethod
    def of(cls, settings: Settings) -> TopicLayout:
        """The layout the settings give; TopicLayoutError (one line naming the variable) if they cannot work."""
        return cls(
            settings.topic_replication_factor, settings.topic_min_insync_replicas, dict(settings.topic_partitions)
        )

    def event_partitions(self, event_type: str) -> int:
        return self.partitions.get(event_type, EVENT_TOPIC_PARTITIONS[event_type])

    @property
    def keyed_partitions(self) -> int:
        """Partitions of consent.preferences and accord.receipts: the largest event topic's (module docstring)."""
        return max(self.event_partitions(t) for t in EVENT_TYPES)

    def spec(self, name: str, partitions: int, config: Mapping[str, str] | None = None) -> TopicSpec:
        """A topic with this layout's replication and ``min.insync.replicas``."""
        full = {**(config or {}), "min.insync.replicas": str(self.min_insync_replicas)}
        return TopicSpec(name, partitions, full, self.replication_factor)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]
    replication_factor: int = 1


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

    def catalogue(self, partners_by_type: dict[str, set[str]], layout: TopicLayout | None = None) -> list[TopicSpec]:
        """Every topic of the bus, given which partners receive which event types.

        ``layout`` (``TopicLayout.of(settings)``) sizes them; without it, one broker's
        sizes (replication 1, the catalogue's partitions).
        """
        lay = layout if layout is not None else TopicLayout()
        specs = [lay.spec(self.event(t), lay.event_partitions(t)) for t in EVENT_TYPES]
        specs.append(lay.spec(self.dead_letter, 1))
        # Keyed by agreement id@version; one partition keeps versions in order.
        specs.append(lay.spec(self.agreements, 1, {"cleanup.policy": "compact"}))
        # Keyed by subject key: as many partitions as the largest event topic (module docstring).
        specs.append(lay.spec(self.consent_preferences, lay.keyed_partitions, {"cleanup.policy": "compact"}))
        # Partners' receipts, keyed by disclosure id; the processor records them in the ledger.
        specs.append(lay.spec(self.receipts, lay.keyed_partitions))
        # Signed ledger checkpoints, keyed by tree size, kept for good: partners and auditors hold copies.
        specs.append(lay.spec(self.ledger_checkpoints, 1, {"retention.ms": "-1"}))
        for event_type, partners in sorted(partners_by_type.items()):
            for partner in sorted(partners):
                # One partition: a disclosure and its retraction reach the partner in ledger order.
                specs.append(lay.spec(self.partner(partner, event_type), 1))
        return specs


def create_topics(admin: AdminClient, specs: list[TopicSpec], timeout: float = 10.0) -> dict[str, str]:
    """Create the topics that do not exist yet; returns ``{name: "created"|"exists"}``.

    A broker that does not answer within ``timeout`` seconds raises KafkaException
    (``_TRANSPORT``, ``_TIMED_OUT``): a bounded wait, so ``accord topics create``
    can say which servers it tried instead of hanging.
    """
    existing = set(admin.list_topics(timeout=timeout).topics)
    result = {s.name: "exists" for s in specs if s.name in existing}
    wanted = [
        NewTopic(s.name, s.partitions, s.replication_factor, config=s.config) for s in specs if s.name not in existing
    ]
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


def differences(admin: AdminClient, specs: list[TopicSpec], timeout: float = 10.0) -> list[str]:
    """One line per existing topic whose partitions or replication differ from its spec.

    Accord never changes an existing topic: more partitions would move keys (a subject's
    events would change partition, and their order with them), and the embedded broker
    cannot add partitions at all. So a difference is reported for the operator to decide.
    """
    topics = admin.list_topics(timeout=timeout).topics
    lines = []
    for s in specs:
        meta = topics.get(s.name)
        if meta is None or meta.error is not None:
            continue
        have = len(meta.partitions)
        replicas = min((len(p.replicas) for p in meta.partitions.values()), default=0)
        if have != s.partitions:
            lines.append(f"{s.name}: has {have} partitions, the settings give {s.partitions}")
        if replicas != s.replication_factor:
            lines.append(f"{s.name}: has {replicas} replicas, the settings give {s.replication_factor}")
    return lines
