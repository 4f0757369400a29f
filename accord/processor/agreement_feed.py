"""Agreements as a feed: publish new versions to a compacted topic; the processor follows it.

A new version takes effect without a restart. Within one agreement id the
highest version received that has begun (its ``valid_from``) supersedes the others
for new decisions (``agreements.model.deciding``); every version stays known so
that retractions and explanations can name it.

I9: the processor decides nothing before it has read the feed to its end
(``FeedFollower.catch_up``), at start and after every rebalance, so a version
suspended before a start is in force from that start's first decision.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import structlog
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from accord.processor.metrics import ProcessorMetrics
from agreements import Agreement, recipients_by_type
from agreements.loader import unregistered
from agreements.model import deciding
from agreements.partners import load_partners
from agreements.recipient_schemas import recipient_catalogue
from bus import kafka
from bus.errors import flush_or_raise
from bus.settings import Settings
from bus.topics import TopicLayout, TopicNames, create_topics
from schemas.serde import Catalogue

log = structlog.get_logger("accord.agreement_feed")


class AgreementConflict(ValueError):
    """This processor's agreements folder holds a version the feed published with other content.

    Fatal, not refused like a bad publication: deciding under its own copy would share
    other fields under the same agreement id and version than every other processor
    (I4), and the feed's copy cannot replace it once its recipient schemas are in use.
    """


class AgreementSet:
    """The agreements the processor decides with; safe to update from another thread.

    The folder's agreements are taken at start; the feed then confirms each one it also
    holds, or conflicts with it (AgreementConflict).
    """

    def __init__(
        self,
        agreements: Iterable[Agreement],
        catalogue: Catalogue,
        *,
        partners: Mapping[str, str] | None = None,
        partners_file: Path | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._partners, self._partners_file = partners, partners_file  # a published version's recipients must be in it
        self._all: dict[str, Agreement] = {}
        self._unconfirmed: set[str] = set()  # from the folder, not yet seen on the feed
        self.catalogue = catalogue
        for a in agreements:
            self._all[a.key] = a
            self._unconfirmed.add(a.key)

    def current(self, on: date) -> list[Agreement]:
        """The version of each agreement id that decides on ``on``: the newest that has begun."""
        with self._lock:
            return deciding(self._all.values(), on)

    def by_key(self) -> dict[str, Agreement]:
        with self._lock:
            return dict(self._all)

    def apply(self, payload: bytes, key: bytes | None = None) -> Agreement:
        """Take one published agreement; raises ValueError (pydantic or schema) for a bad one.

        ``key``: the record's key on the feed, which must be the version's own id@version
        (a compacted feed keeps a key's last record, so a version under another key would
        outlive or replace what it should not).
        """
        agreement = Agreement.model_validate_json(payload)
        with self._lock:
            known = self._all.get(agreement.key)
            from_folder = agreement.key in self._unconfirmed
            if known == agreement and key in (None, agreement.key.encode()):
                self._unconfirmed.discard(agreement.key)
                return agreement
            check_publication(agreement, key, self._partners, self._partners_file)
            self._unconfirmed.discard(agreement.key)
            if known is not None and from_folder:
                raise AgreementConflict(
                    f"{agreement.key} in the agreements folder differs from the version published on the "
                    "agreements feed: give the changed file a new version and publish it, or restore the "
                    "published one (`accord agreements publish` publishes a folder)"
                )
            if known is not None:
                raise ValueError(f"{agreement.key} was already published with different content; publish a new version")
            # Registers the recipient schemas; refuses fields missing from the event schema.
            recipient_catalogue([agreement], base=self.catalogue)
            self._all[agreement.key] = agreement
        return agreement


def check_publication(
    agreement: Agreement, key: bytes | None, partners: Mapping[str, str] | None, partners_file: Path | None
) -> None:
    """What a processor refuses a published version for, besides its schemas (ValueError): a record
    key that is not the version's own, a recipient missing from the partner registry."""
    if key is not None and key != agreement.key.encode():
        raise ValueError(f"{agreement.key} was published under the key {key[:80]!a}, not its own")
    if partners is not None and partners_file is not None:
        for recipient in agreement.recipients:
            if recipient not in partners:
                raise ValueError(f"{agreement.key}: recipients: {unregistered(recipient, partners_file)}")


class PublishConflict(ValueError):
    """Versions in a folder to publish that the feed holds with other content."""

    def __init__(self, keys: list[str], topic: str, *, raced: bool = False) -> None:
        what = (
            "another publisher put other content on the feed for them at the same moment, and processors hold "
            "that one; this publication was outdone, and the other's content published again after it"
            if raced
            else "nothing was published"
        )
        super().__init__(
            f"{', '.join(keys)}: published on {topic} with other content; a published version is never "
            "changed (every ledger entry under it names it): give the changed file a new version, or restore "
            f"the published one; {what}"
        )
        self.keys = keys


class PublishUnchecked(RuntimeError):
    """Versions were published, but the feed could not be read again to check no other publisher raced them."""

    def __init__(self, keys: list[str], topic: str) -> None:
        super().__init__(
            f"{', '.join(keys)} published to {topic}, but the feed could not be read again to check that no other "
            "publisher put other content there at the same moment: run `accord agreements publish` again to check "
            "(it publishes nothing twice)"
        )
        self.keys = keys


@dataclass(frozen=True)
class Published:
    new: int  # versions the feed lacked, now published
    repaired: int  # versions held, whose last record on the feed was another's, published again
    on_feed: int  # versions the feed held already


def publish_agreements(settings: Settings, agreements: list[Agreement], *, feed_timeout_s: float = 10.0) -> Published:
    """Publish the versions the feed lacks, keyed by id@version.

    1. create the topics the agreements need, the feed among them (creating one is idempotent);
    2. read the feed to its end (FeedNotReached if the broker does not let us in time),
       judging each record as processors do (a record they refuse is not there);
    3. refuse them all (PublishConflict) if any version is held with other content:
       processors hold the first publication of a version they accept, and one started
       with a changed file stops;
    4. publish the versions the feed lacks, and again those held whose last record is
       another (a compacted topic keeps a key's last record: a publisher that lost a race
       and stopped before putting the winner back left its own there);
    5. read the feed again: another publisher may have published one of them at the same
       moment, with other content. Where its publication came first, processors hold it, so
       publish its content once more after ours and refuse (PublishConflict): exactly one
       of two racing publishers wins.
    """
    names = TopicNames(settings.topic_prefix)
    # 1.
    create_topics(kafka.admin(settings), names.catalogue(recipients_by_type(agreements), TopicLayout.of(settings)))
    # 2.
    feed = published_versions(settings, feed_timeout_s)
    # 3.
    changed = sorted(a.key for a in agreements if feed.held.get(a.key) not in (None, a))
    if changed:
        raise PublishConflict(changed, names.agreements)
    # 4.
    new = [a for a in agreements if a.key not in feed.held]
    stale = [a for a in agreements if a.key in feed.held and feed.last.get(a.key) != a]
    if not new and not stale:
        return Published(0, 0, len(agreements))
    _produce_versions(settings, names, [*new, *stale])
    # 5.
    try:
        after = published_versions(settings, feed_timeout_s)
    except FeedNotReached:
        raise PublishUnchecked([a.key for a in [*new, *stale]], names.agreements) from None
    outdone = [first for a in new if (first := after.held.get(a.key)) is not None and first != a]
    if outdone:
        _produce_versions(settings, names, outdone)
        raise PublishConflict(sorted(a.key for a in outdone), names.agreements, raced=True)
    return Published(len(new), len(stale), len(agreements) - len(new))


def _produce_versions(settings: Settings, names: TopicNames, agreements: list[Agreement]) -> None:
    producer = kafka.producer(settings)
    errors: list[str] = []
    for a in agreements:
        producer.produce(
            names.agreements,
            key=a.key.encode(),
            value=a.model_dump_json().encode(),
            on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
        )
    flush_or_raise(producer, "agreements", errors)


@dataclass(frozen=True)
class FeedState:
    """What the feed holds for each version key, read to its end."""

    held: dict[str, Agreement]  # the first publication a processor accepts: what every processor holds
    last: dict[str, Agreement | None]  # the last record under the key, if acceptable: what compaction keeps


def published_versions(settings: Settings, timeout_s: float) -> FeedState:
    """Every version on the feed, judged as processors judge it (AgreementSet.apply)."""
    partners = load_partners(settings.partners_file)
    held: dict[str, Agreement] = {}
    last: dict[str, Agreement | None] = {}

    def take(msg: Message) -> int:
        if msg.error() is None:
            key = msg.key() or b""
            agreement: Agreement | None
            try:
                agreement = Agreement.model_validate_json(msg.value() or b"")
                check_publication(agreement, key, partners, settings.partners_file)
                recipient_catalogue([agreement])  # a fresh catalogue: refuses fields missing from the event schema
            except ValueError:
                agreement = None
            last[key.decode(errors="replace")] = agreement
            if agreement is not None:
                held.setdefault(agreement.key, agreement)
        return 1

    partition = TopicPartition(TopicNames(settings.topic_prefix).agreements, 0, OFFSET_BEGINNING)
    consumer = kafka.consumer(settings, "accord-agreements-publish", **{"fetch.wait.max.ms": 100, "log_level": 0})
    consumer.assign([partition])
    try:
        read_to_end(consumer, partition, take, settle_s=0.5, timeout_s=timeout_s)
    finally:
        consumer.close()
    return FeedState(held, last)


def read_to_end(
    consumer: Consumer, partition: TopicPartition, take: Callable[[Message], int], *, settle_s: float, timeout_s: float
) -> int:
    """Read one partition up to the end it has now; FeedNotReached if that takes longer than ``timeout_s``.

    "The end" is the high watermark the broker returned in a fetch response (ListOffsets
    is wrong on the embedded broker, docs/architecture.md), so:

    1. keep reading for ``settle_s`` so a fetch answered after this call began sets the watermark;
    2. then read until our position reaches that high watermark.
    """
    started = time.monotonic()
    read = 0
    while True:
        for msg in consumer.consume(100, timeout=0.1):
            read += take(msg)
        if time.monotonic() - started >= settle_s and _at_end(consumer, partition):
            return read
        if time.monotonic() - started > timeout_s:
            raise FeedNotReached(f"the agreements feed {partition.topic} could not be read to its end")


def _at_end(consumer: Consumer, partition: TopicPartition) -> bool:
    _low, high = consumer.get_watermark_offsets(partition, cached=True)
    if high < 0:
        return False  # no fetch answered yet
    if high == 0:
        return True
    position = consumer.position([partition])[0].offset
    return position >= high


class FeedNotReached(RuntimeError):
    """The agreements feed could not be read to its end in time: the broker is unreachable."""


class FeedFollower:
    """Reads the agreements feed (one partition) from its beginning into an AgreementSet.

    No consumer group: every processor reads the whole feed. A catch-up waits until a
    fetch made after it began has answered (``read_to_end``): ``settle_s`` covers the
    fetch wait plus a round trip.
    """

    def __init__(
        self,
        settings: Settings,
        agreements: AgreementSet,
        settle_s: float = 0.5,
        *,
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self.agreements = agreements
        self.settle_s = settle_s
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
        self.partition = TopicPartition(TopicNames(settings.topic_prefix).agreements, 0, OFFSET_BEGINNING)
        self.consumer: Consumer = kafka.consumer(
            settings, f"{settings.processor_group}.agreements", **{"fetch.wait.max.ms": 100}
        )
        self.consumer.assign([self.partition])
        self.applied = 0

    def poll(self) -> int:
        """Apply whatever has arrived, without waiting; returns how many versions were read."""
        read = 0
        while True:
            msgs = self.consumer.consume(100, timeout=0)
            if not msgs:
                return read
            for msg in msgs:
                read += self._apply(msg)

    def catch_up(self, timeout_s: float) -> int:
        """Read the feed up to the end it has now (``read_to_end``); FeedNotReached after ``timeout_s``."""
        return read_to_end(self.consumer, self.partition, self._apply, settle_s=self.settle_s, timeout_s=timeout_s)

    def _apply(self, msg: Message) -> int:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("agreements_feed_error", error=err.name())
            return 0
        try:
            agreement = self.agreements.apply(msg.value() or b"", msg.key() or b"")  # no key: not its own
        except AgreementConflict:
            raise  # the processor stops: its own folder disagrees with what every other one decides by
        except ValueError as exc:
            # A bad publication is refused, not fatal: the previous versions stay in force.
            log.error("agreement_refused", offset=msg.offset(), error=str(exc).splitlines()[0])
            self.metrics.agreements.labels("refused").inc()
            return 1
        self.applied += 1
        self.metrics.agreements.labels("applied").inc()
        log.info("agreement_applied", agreement=agreement.key, status=agreement.status.value, offset=msg.offset())
        return 1

    def close(self) -> None:
        self.consumer.close()
