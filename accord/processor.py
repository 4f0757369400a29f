"""The sharing processor: a confluent-kafka batch loop, with the control plane beside it.

One pass of the loop (``SharingLoop.run_once``), in this order:

1. agreements: apply what is new on the feed; after the start and after every
   rebalance, read it to its end before deciding anything (I9);
2. consume: wait up to ``batch_window_s`` for the first record, then take whatever else
   has already arrived, up to ``batch_size`` records (events and receipts). A batch is
   never held back to fill up, so a quiet stream is not delayed by the window;
3. handle the batch (``BatchHandler.handle``: decide, ledger, deliver, dead letters);
4. commit the batch's offsets;
5. run the control plane when due: the retraction sweep and ledger checkpoints, in the
   one worker that holds the control-plane lease (accord/control_lease.py). A timer
   whose work returns True has more waiting and runs again on the next pass, so a
   large job (retracting a suspended agreement) goes in bounded chunks between batches.

An outage of PostgreSQL or the broker in any step is a wait (``SharingLoop._wait``):
the processor logs it, reports it on the health check, backs off and retries the same
batch by itself; nothing is delivered before its ledger entry is committed and no
offset is committed before its records are delivered (I10). A record that cannot be
decided or delivered is dead-lettered with a reason and the loop goes on (I10): a
batch failing for a reason that is not an outage is split until the one record at
fault is found. A rebalance during a wait drops the records of the partitions it
moved; their new owner reads them again, and the ledger makes that safe (I7, I8).

faust is not used at all (its per-message cost capped the bus at ~3k events/s):
the control plane runs on the loop's own timers.
"""

from __future__ import annotations

import gc
import hashlib
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import psycopg
import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

import consent
from accord.agreement_feed import AgreementSet, FeedFollower, FeedNotReached
from accord.control_lease import Lease
from accord.health import Health
from accord.retraction import ENDED
from accord.sharing import (
    Context,
    Decision,
    Outcome,
    Sharing,
    disclosure_id,
    other_subjects,
    projection_for,
    subject_key,
)
from accord.topics import EVENT_TYPES, TopicNames
from agreements.model import Agreement
from agreements.recipient_schemas import projection_name
from consent.model import version
from ledger import EntryDraft, append, event_entries
from ledger.append import StoredEntry
from schemas.serde import SerdeError
from schemas.validation import Limits, event_problems, size_problem

log = structlog.get_logger("accord.processor")

NOT_COVERED = "NOT_COVERED"

# Delivery errors that belong to one record: retrying cannot help, so it is dead-lettered.
_PER_RECORD_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in ("MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "CORRUPT_MESSAGE",
                 "RECORD_LIST_TOO_LARGE", "INVALID_MSG", "_INVALID_ARG", "INVALID_MSG_SIZE")
    if hasattr(KafkaError, name)
)
# Commit failures that mean "the partitions moved": the new owner replays, nothing to wait for.
_MOVED_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in ("ILLEGAL_GENERATION", "UNKNOWN_MEMBER_ID", "REBALANCE_IN_PROGRESS", "_ASSIGNMENT_LOST",
                 "FENCED_INSTANCE_ID", "_NO_OFFSET")
    if hasattr(KafkaError, name)
)


@dataclass(frozen=True)
class Inbound:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class BatchReport:
    events: int = 0
    dead_letters: int = 0
    appended: int = 0
    redelivered: int = 0
    receipts: int = 0
    outcomes: Counter = field(default_factory=Counter)

    def add(self, other: BatchReport) -> None:
        self.events += other.events
        self.dead_letters += other.dead_letters
        self.appended += other.appended
        self.redelivered += other.redelivered
        self.receipts += other.receipts
        self.outcomes.update(other.outcomes)


class Outage(RuntimeError):
    """PostgreSQL or the broker is not answering: wait and retry, never skip."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service


def outage_of(exc: BaseException) -> str | None:
    """``"database"`` or ``"broker"`` when ``exc`` means a service is unavailable; None for a record's fault.

    Database errors are outages unless their SQLSTATE is class 22 (data exception: a
    value the database refuses, which is one record's fault). A missing table or a
    revoked privilege is an outage too: waiting for the operator is right, dead-lettering
    every record would not be.
    """
    if isinstance(exc, Outage):
        return exc.service
    if isinstance(exc, FeedNotReached):
        return "broker"
    if isinstance(exc, KafkaException):
        return "broker"
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "database"
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        return None if _data_exception(orig) else "database"
    if isinstance(exc, psycopg.Error):
        return None if _data_exception(exc) else "database"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "database"
    return None


def _data_exception(exc: BaseException | None) -> bool:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    return bool(sqlstate) and str(sqlstate).startswith("22")


def backoff(attempt: int, most_s: float = 10.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 0.5 s, doubling, at most ``most_s``."""
    return min(0.5 * 2**attempt, most_s)


@dataclass(frozen=True)
class DeadLetter:
    msg: Inbound
    error: str  # a kind: the serde error's class, InvalidEvent, ConflictingDuplicate, ...
    reason: str  # names the problem and where, never the content (I6)


@dataclass(frozen=True)
class Event:
    """An event that decoded and passed validation."""

    msg: Inbound
    event_type: str
    record: dict[str, Any]
    event_id: str
    digest: str  # sha256 of the record value as received: tells a replay from a reused id (I8)
    subject_key: str
    subjects: tuple[str, ...]


@dataclass(frozen=True)
class Delivery:
    disclosure_id: str
    recipient: str
    event_type: str
    agreement: Agreement
    projected: dict[str, Any]
    seq: int
    source: Inbound


@dataclass(frozen=True)
class _ReplayView:
    """The agreements as one batch sees them, for redelivering recorded entries."""

    by_key: Mapping[str, Agreement]  # every version known, by id@vN
    newest: Mapping[str, Agreement]  # the newest version of each id
    context: Context


def _draft(d: Decision, decided_at: datetime, event: Event) -> EntryDraft:
    # ``_value_`` is the enum member's plain attribute; ``.value`` goes through a property
    # (one of the larger per-decision costs left in a profile: ~180k calls per 20k events).
    return EntryDraft(
        disclosure_id=d.disclosure_id,
        event_id=d.event_id,
        event_type=d.event_type,
        provider=d.provider,
        recipient=d.recipient,
        agreement_id=d.agreement.id,
        agreement_version=d.agreement.version,
        purpose=d.agreement.purpose._value_,
        legal_basis=d.agreement.legal_basis,
        outcome=d.outcome._value_,
        reason=d.reason,
        fields=d.fields,
        consent_mode=d.agreement.consent_mode._value_,
        consent_version=d.consent_version,
        subject_key=d.subject_key,
        decided_at=decided_at,
        event_digest=event.digest,
        subjects=event.subjects,
    )


def _not_covered(event: Event, consent_version: int, decided_at: datetime) -> EntryDraft:
    """The entry of an event no agreement in force covers: recorded, shared with nobody (I2)."""
    provider = event.record["envelope"]["source_agency"]
    return EntryDraft(
        disclosure_id=disclosure_id(event.event_id, "", "", 0),
        event_id=event.event_id,
        event_type=event.event_type,
        provider=provider,
        recipient="",
        agreement_id="",
        agreement_version=0,
        purpose="",
        legal_basis="",
        outcome=NOT_COVERED,
        reason=f"no agreement in force covers this {event.event_type} event from {provider}",
        fields=(),
        consent_mode="",
        consent_version=consent_version,
        subject_key=event.subject_key,
        decided_at=decided_at,
        event_digest=event.digest,
        subjects=event.subjects,
    )


class BatchHandler:
    """The imperative shell for one batch of event records.

    ``handle`` in five steps:

    1. read: decode and validate each record; one that cannot be read or is implausible
       is a dead letter (I2). Copies of one event id are told apart by their digest;
    2. look in the ledger for the batch's event ids: an event already recorded is a
       replay, and its entries decide what is delivered, never a new decision (I8); a
       copy with another digest is a conflicting duplicate, dead-lettered naming the
       first. Of an event not recorded yet, the batch's first copy is decided and any
       copy with other content is the conflicting one;
    3. decide the new events with the consent history read now (I5); an event that no
       agreement covers gets a NOT_COVERED entry;
    4. append every new decision in one transaction, BEFORE anything is produced (I1); a
       decision the ledger already held (another worker recorded the event meanwhile)
       makes its event a replay, handled as in step 2;
    5. produce the disclosures (new and replayed), then the dead letters, and flush. A
       record the broker refuses for itself (too large, invalid) is dead-lettered; any
       other failure is an outage and the whole batch is retried.
    """

    def __init__(
        self,
        agreements: AgreementSet,
        engine: Engine,
        producer: Producer,
        names: TopicNames,
        partner_classes: Mapping[str, str] | None = None,
        pseudonym_key: bytes = b"",
        limits: Limits = Limits(),
        flush_timeout_s: float = 30.0,
    ) -> None:
        self.agreements = agreements
        self.partner_classes = dict(partner_classes or {})
        self.pseudonym_key = pseudonym_key
        self.catalogue = agreements.catalogue
        self.engine = engine
        self.producer = producer
        self.names = names
        self.limits = limits
        self.flush_timeout_s = flush_timeout_s
        self._topic_types: dict[str, str] = {}

    # -- step 1 -----------------------------------------------------------------

    def _topic_type(self, topic: str) -> str:
        event_type = self.names.event_type_of(topic)  # ValueError for a topic that is not an event topic
        self._topic_types[topic] = event_type
        return event_type

    def _read(self, msg: Inbound, now: datetime) -> Event | DeadLetter:
        if msg.value is None or len(msg.value) == 0:
            return DeadLetter(msg, "EmptyRecord", "empty message (no value)")
        too_large = size_problem(msg.value, self.limits)
        if too_large is not None:
            return DeadLetter(msg, "TooLarge", f"{too_large} (ACCORD_MAX_EVENT_BYTES)")
        try:
            event_type = self._topic_types.get(msg.topic) or self._topic_type(msg.topic)
            name, record = self.catalogue.decode(msg.value)
        except (SerdeError, ValueError) as exc:
            return DeadLetter(msg, type(exc).__name__, str(exc))
        if name != event_type:
            return DeadLetter(msg, "WrongEventType", f"a {name} record on the {event_type} topic")
        problems = event_problems(event_type, record, now, self.limits)
        if problems:
            # An invalid identifier is never used to look up consent (DESIGN, fail closed).
            return DeadLetter(msg, "InvalidEvent", "; ".join(str(p) for p in problems))
        return Event(
            msg,
            event_type,
            record,
            record["envelope"]["event_id"],
            hashlib.sha256(msg.value).hexdigest(),
            subject_key(event_type, record),
            other_subjects(event_type, record),
        )

    def handle(self, batch: Sequence[Inbound]) -> BatchReport:
        report = BatchReport(events=len(batch))
        now = datetime.now(UTC)
        # The ledger stores and hashes milliseconds, so decide at that precision.
        decided_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        context = Context(decided_at, self.partner_classes, self.pseudonym_key)

        # 1. read; copies of one event id are kept apart by content until the ledger has spoken
        dead: list[DeadLetter] = []
        copies: dict[str, dict[str, Event]] = {}  # event id -> digest -> its first copy in the batch
        for msg in batch:
            read = self._read(msg, now)
            if isinstance(read, DeadLetter):
                dead.append(read)
            else:
                copies.setdefault(read.event_id, {}).setdefault(read.digest, read)

        # 2. what the ledger already holds decides; only then does the batch's first copy
        events: dict[str, Event] = {}
        deliveries: list[Delivery] = []
        known = event_entries(self.engine, list(copies)) if copies else {}
        agreements = self.agreements.current()  # one view for the whole batch
        sharing = Sharing.of(agreements)  # compiled once per set of agreements (cached)
        replay = _ReplayView(self.agreements.by_key(), {a.id: a for a in agreements}, context)
        for event_id, versions in copies.items():
            stored = known.get(event_id)
            if stored is not None:
                for event in versions.values():  # the recorded content is replayed, any other dead-lettered
                    self._replay(event, stored, replay, deliveries, dead)
                continue
            first, *others = versions.values()
            events[event_id] = first
            for other in others:
                dead.append(DeadLetter(other.msg, "ConflictingDuplicate",
                                       f"event id {event_id} reused with different content: the first is at "
                                       f"{first.msg.topic}[{first.msg.partition}]@{first.msg.offset} in this batch"))

        # 3. decide the new events
        histories = consent.history(self.engine, {e.subject_key for e in events.values()})
        drafts: list[EntryDraft] = []
        decided: list[tuple[Event, Decision]] = []
        for event in events.values():
            consents = histories.get(event.subject_key, ())
            try:
                decisions = sharing.decide(event.event_type, event.record, consents, context, key=event.subject_key)
            except Exception as exc:  # pure code failing on one record must not stop the bus (I10)
                dead.append(DeadLetter(event.msg, "Undecidable", f"could not be decided: {type(exc).__name__}"))
                continue
            if not decisions:
                drafts.append(_not_covered(event, version(consents), decided_at))
            for d in decisions:
                drafts.append(_draft(d, decided_at, event))
                decided.append((event, d))

        # 4. the ledger first (I1)
        appended = append(self.engine, drafts) if drafts else []
        report.appended = sum(1 for a in appended if a.new)
        seq_of = {a.disclosure_id: a.seq for a in appended}
        fresh = {a.disclosure_id for a in appended if a.new}
        raced = {d.event_id for d, a in zip(drafts, appended) if not a.new}
        for event, d in decided:
            report.outcomes[(d.recipient, d.outcome._value_, d.reason or "")] += 1
            if d.outcome is Outcome.DISCLOSED and event.event_id not in raced and d.projected is not None:
                deliveries.append(Delivery(d.disclosure_id, d.recipient, d.event_type, d.agreement, d.projected,
                                           seq_of[d.disclosure_id], event.msg))
        if raced:
            by_id = {e.event_id: e for e in events.values()}
            for event_id, stored in event_entries(self.engine, sorted(raced)).items():
                self._replay(by_id[event_id], stored, replay, deliveries, dead)

        # 5. deliver, then dead letters, then flush
        report.redelivered = len(deliveries) - sum(1 for d in deliveries if d.disclosure_id in fresh)
        dead.extend(self._deliver(deliveries))
        self.dead_letters(dead)
        report.dead_letters = len(dead)
        return report

    # -- step 2 / 4: a replay ---------------------------------------------------

    def _replay(
        self,
        event: Event,
        stored: Sequence[StoredEntry],
        view: _ReplayView,
        deliveries: list[Delivery],
        dead: list[DeadLetter],
    ) -> None:
        """Deliver what the ledger recorded for ``event``; dead-letter it if the ledger holds other content."""
        digests = {e.draft.event_digest for e in stored if e.draft.event_digest}
        if digests != {event.digest}:
            first = min(e.seq for e in stored)
            dead.append(DeadLetter(event.msg, "ConflictingDuplicate",
                                   f"event id {event.event_id} reused with different content: the first is "
                                   f"recorded at ledger seq {first}; nothing of this one was shared"))
            return
        retracted = {e.draft.refers_to for e in stored if e.draft.outcome == "RETRACTED"}
        for entry in stored:
            d = entry.draft
            if d.outcome != Outcome.DISCLOSED.value or d.disclosure_id in retracted:
                continue  # a WITHHELD entry delivers nothing, whatever consent says now (I8)
            agreement = view.by_key.get(f"{d.agreement_id}@v{d.agreement_version}")
            current = view.newest.get(d.agreement_id)
            if agreement is None or (current is not None and current.status in ENDED):
                continue  # ended since: the retraction sweep retracts it; nothing more is sent
            projected = projection_for(event.event_type, event.record, agreement, d.fields, d.recipient, view.context)
            deliveries.append(Delivery(d.disclosure_id, d.recipient, d.event_type, agreement, projected,
                                       entry.seq, event.msg))

    # -- step 5 -----------------------------------------------------------------

    def _deliver(self, deliveries: Sequence[Delivery]) -> list[DeadLetter]:
        """Produce every delivery and flush; the records the broker refused for themselves come back."""
        errors: dict[int, KafkaError] = {}
        refused: list[DeadLetter] = []
        encoded: dict[int, bytes] = {}  # recipients of one agreement share one projection
        for i, d in enumerate(deliveries):
            payload = encoded.get(id(d.projected))
            if payload is None:
                # A projection of a record that just decoded is valid by construction.
                payload = self.catalogue.encode(projection_name(d.agreement, d.event_type), d.projected, validated=True)
                encoded[id(d.projected)] = payload

            def on_delivery(err: KafkaError | None, _msg: Any, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            headers = [
                ("accord.disclosure_id", d.disclosure_id.encode()),
                ("accord.agreement", d.agreement.key.encode()),
                ("accord.event_type", d.event_type.encode()),
                ("accord.ledger_seq", str(d.seq).encode()),
            ]
            topic = self.names.partner(d.recipient, d.event_type)
            refusal = self._produce(topic, d.disclosure_id.encode(), payload, headers, on_delivery)
            if refusal is not None:
                refused.append(self._undeliverable(d, refusal))
        self._flush(errors, "disclosures")
        for i, err in sorted(errors.items()):
            refused.append(self._undeliverable(deliveries[i], err.name()))
        return refused

    def _undeliverable(self, d: Delivery, error: str) -> DeadLetter:
        log.error("disclosure_undeliverable", disclosure_id=d.disclosure_id, recipient=d.recipient, error=error)
        return DeadLetter(d.source, "Undeliverable",
                          f"disclosure {d.disclosure_id} (ledger seq {d.seq}) to {d.recipient} was refused "
                          f"by the broker: {error}")

    def _produce(self, topic: str, key: bytes | None, value: bytes | None, headers: list, on_delivery: Callable) -> str | None:
        """produce(), waiting while the local queue is full; a per-record refusal is returned, not raised.

        Delivery reports are served by the flush that ends each step, not per record.
        """
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
                return None
            except BufferError:
                self.producer.poll(0.5)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() in _PER_RECORD_ERRORS:
                    return err.name()
                raise

    def _flush(self, errors: dict[int, KafkaError], what: str) -> None:
        remaining = self.producer.flush(self.flush_timeout_s)
        if remaining:
            raise Outage("broker", f"{remaining} {what} not acknowledged within {self.flush_timeout_s:.0f}s")
        infra = [e for e in errors.values() if e.code() not in _PER_RECORD_ERRORS]
        if infra:
            raise Outage("broker", f"{what} not delivered: {infra[0].name()}")

    def dead_letters(self, dead: Iterable[DeadLetter]) -> None:
        dead = list(dead)
        if not dead:
            return
        errors: dict[int, KafkaError] = {}
        for i, d in enumerate(dead):
            msg = d.msg
            headers = [
                ("accord.error", d.error.encode()),
                ("accord.reason", d.reason.encode()),
                ("accord.source_topic", msg.topic.encode()),
                ("accord.source_partition", str(msg.partition).encode()),
                ("accord.source_offset", str(msg.offset).encode()),
            ]
            # A record too large to keep is not copied: it stays at its offset on the source topic.
            value = msg.value if msg.value is not None and len(msg.value) <= self.limits.max_event_bytes else None
            if value is None and msg.value is not None:
                headers.append(("accord.value_omitted", str(len(msg.value)).encode()))

            def on_delivery(err: KafkaError | None, _m: Any, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            if self._produce(self.names.dead_letter, msg.key, value, headers, on_delivery) is not None:
                self._produce(self.names.dead_letter, None, None, headers, on_delivery)
            # Reasons name the problem, never the content (I6).
            log.warning("dead_letter", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                        error=d.error, reason=d.reason)
        self._flush(errors, "dead letters")
        if errors:  # the broker refused a dead letter for itself: send its headers alone
            again = [replace(d, msg=replace(d.msg, key=None, value=None)) for i, d in enumerate(dead) if i in errors]
            self.dead_letters(again)



def _inbound(msg: Any) -> Inbound:
    return Inbound(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())


class SharingLoop:
    """The processor's loop: owns the consumer, the feed, the waits and the control-plane timers."""

    def __init__(
        self,
        consumer: Consumer,
        feed: FeedFollower,
        handler: BatchHandler,
        names: TopicNames,
        health: Health,
        *,
        batch_size: int = 500,
        batch_window_s: float = 0.2,
        receipts: Any = None,
        timers: Sequence[tuple[str, float, Callable[[], Any]]] = (),
        lease: Lease | None = None,
        feed_timeout_s: float = 10.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.consumer = consumer
        self.feed = feed
        self.handler = handler
        self.names = names
        self.health = health
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.receipts = receipts
        self.timers = [[name, interval, fn, 0.0] for name, interval, fn in timers]
        self.lease = lease  # None: this loop runs the control plane alone (tests, one worker)
        self.feed_timeout_s = feed_timeout_s
        self.max_backoff_s = max_backoff_s
        self.stopping = False
        self.feed_stale = True
        self.moved: set[tuple[str, int]] = set()

    # confluent-kafka calls these from inside consume()
    def on_assign(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.moved.update((p.topic, p.partition) for p in partitions)
        self.feed_stale = True
        log.info("partitions_assigned", partitions=len(partitions))

    def on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self.moved.update((p.topic, p.partition) for p in partitions)
        log.info("partitions_revoked", partitions=len(partitions))

    def topics(self) -> list[str]:
        return [self.names.event(t) for t in EVENT_TYPES] + [self.names.receipts]

    def start(self) -> None:
        """Catch up with the agreements feed before subscribing: no decision before it (I9)."""
        self._catch_up()
        self.consumer.subscribe(self.topics(), on_assign=self.on_assign, on_revoke=self.on_revoke)
        self.health.running()

    def run(self) -> None:
        self.start()
        while not self.stopping:
            self.run_once()

    def run_once(self) -> BatchReport | None:
        # 1. agreements
        self._guarded(self.feed.poll)
        # 2. consume
        first = self.consumer.poll(self.batch_window_s)  # returns at the first record
        msgs = [] if first is None else [first]
        if first is not None and self.batch_size > 1:
            msgs += self.consumer.consume(self.batch_size - 1, timeout=0)
        self.moved.clear()  # what consume returned belongs to the assignment it ends with
        batch: list[Inbound] = []
        for m in msgs:
            err = m.error()
            if err is None:
                batch.append(_inbound(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", error=err.name())
                if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
                    self.health.waiting("broker", err.name())
        report = None
        if batch:
            # 3. handle, 4. commit: retried through outages until done or dropped by a rebalance
            report = self._complete(batch)
        # 5. control plane
        self._tick()
        return report

    def _complete(self, batch: list[Inbound]) -> BatchReport | None:
        attempt = 0
        while batch and not self.stopping:
            try:
                if self.feed_stale:
                    self._catch_up_once()
                report = self._handle(batch)
                self._commit(batch)
                self.health.running()
                self._log(report)
                return report
            except Exception as exc:
                service = outage_of(exc)
                if service is None:
                    raise
                self._wait(service, exc, attempt)
                attempt += 1
                batch = [m for m in batch if (m.topic, m.partition) not in self.moved]
                self.moved.clear()
        return None

    def _handle(self, batch: list[Inbound]) -> BatchReport:
        """Handle events and receipts; a failure that is not an outage is narrowed to its record."""
        receipts = [m for m in batch if m.topic == self.names.receipts]
        events = [m for m in batch if m.topic != self.names.receipts]
        report = self._split(events, self.handler.handle) if events else BatchReport()
        if receipts and self.receipts is not None:
            report.add(self._split(receipts, self._record_receipts))
        return report

    def _record_receipts(self, batch: list[Inbound]) -> BatchReport:
        r = self.receipts.handle(batch)
        self.handler.dead_letters(DeadLetter(msg, error, reason) for msg, error, reason in r.refused)
        return BatchReport(receipts=r.receipts, dead_letters=len(r.refused))

    def _split(self, batch: list[Inbound], handle: Callable[[list[Inbound]], BatchReport]) -> BatchReport:
        try:
            return handle(batch)
        except Exception as exc:
            if outage_of(exc) is not None:
                raise
            if len(batch) == 1:
                [msg] = batch
                log.error("record_unprocessable", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                          error=type(exc).__name__)
                self.handler.dead_letters(
                    [DeadLetter(msg, "Unprocessable", f"could not be processed: {type(exc).__name__}")])
                return BatchReport(events=1, dead_letters=1)
            mid = len(batch) // 2
            report = self._split(batch[:mid], handle)
            report.add(self._split(batch[mid:], handle))
            return report

    def _commit(self, batch: Sequence[Inbound]) -> None:
        ends: dict[tuple[str, int], int] = {}
        for m in batch:
            ends[(m.topic, m.partition)] = max(ends.get((m.topic, m.partition), -1), m.offset + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            err = exc.args[0]
            if isinstance(err, KafkaError) and err.code() in _MOVED_ERRORS:
                # The partitions moved: their new owner replays from the last commit (I7, I8).
                log.warning("commit_dropped", reason=err.name())
                return
            raise

    def _catch_up(self) -> None:
        attempt = 0
        while not self.stopping:
            try:
                self._catch_up_once()
                return
            except Exception as exc:
                if outage_of(exc) is None:
                    raise
                self._wait("broker", exc, attempt)
                attempt += 1

    def _catch_up_once(self) -> None:
        read = self.feed.catch_up(self.feed_timeout_s)
        self.feed_stale = False
        log.info("agreements_caught_up", read=read, known=len(self.feed.agreements.by_key()))

    def _wait(self, service: str, exc: BaseException, attempt: int) -> None:
        delay = backoff(attempt, self.max_backoff_s)
        error = type(exc).__name__
        self.health.waiting(service, error)
        # The reason is the exception's class: its text may quote a record's values (I6).
        log.warning("waiting", service=service, error=error, retry_in_s=delay, attempt=attempt + 1)
        self._idle(delay)

    def _idle(self, seconds: float) -> None:
        """Sleep while serving the group (heartbeats, rebalances); records fetched meanwhile are read again later."""
        end = time.monotonic() + seconds
        while not self.stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            msgs = self.consumer.consume(self.batch_size, timeout=min(left, 0.5))
            first: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is None:
                    tp = (m.topic(), m.partition())
                    first[tp] = min(first.get(tp, m.offset()), m.offset())
            for (topic, partition), offset in first.items():
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException:
                    pass  # no longer ours: its new owner reads it

    def _tick(self) -> None:
        now = time.monotonic()
        due = [t for t in self.timers if now - t[3] >= t[1]]
        if not due:
            return
        if self.lease is not None and not self._guarded(self.lease.held, name="control_lease"):
            for timer in due:
                timer[3] = now  # another worker runs them; ask again at the next interval
            return
        for timer in due:
            name, _interval, fn, _last = timer
            more = self._guarded(fn, name=name)
            timer[3] = 0.0 if more is True else now

    def _guarded(self, fn: Callable[[], Any], name: str = "agreements_feed") -> Any:
        """Run control-plane work; an outage or a failure is logged and retried on the next tick."""
        try:
            return fn()
        except Exception as exc:
            down = outage_of(exc)
            if down is not None:
                self.health.waiting(down, type(exc).__name__)
                log.warning(f"{name}_waiting", service=down, error=type(exc).__name__)
            else:
                log.error(f"{name}_failed", error=type(exc).__name__)
            return None

    def _log(self, report: BatchReport) -> None:
        log.info(
            "batch",
            events=report.events,
            dead_letters=report.dead_letters,
            appended=report.appended,
            redelivered=report.redelivered,
            receipts=report.receipts,
            disclosed=sum(n for (_, o, _), n in report.outcomes.items() if o == "DISCLOSED"),
            withheld=sum(n for (_, o, _), n in report.outcomes.items() if o == "WITHHELD"),
        )

    def close(self, leave_group: bool = True) -> None:
        """Close the feed and the lease; the consumer too (leaving the group) when ``leave_group``.

        Not leaving: the caller keeps the consumer alive until the process ends (its
        destructor would leave the group), and the group notices after the session timeout.
        """
        closers = ([self.consumer.close] if leave_group else []) + [self.feed.close]
        closers += [self.lease.release] if self.lease else []
        for close in closers:
            try:
                close()
            except Exception as exc:  # closing during an outage must not turn a stop into a crash
                log.warning("close_failed", error=type(exc).__name__)


def run_processor(settings: Any) -> int:
    """The composition root of ``accord run processor``: wire the parts, wait for the services, loop.

    1. load the agreements and partners; refuse to start without a pseudonym key when one is needed;
    2. open the database as the application role, waiting while it is unreachable;
    3. build the feed, the handler, the receipts recorder and the control-plane timers;
    4. read the agreements feed to its end, then subscribe and loop until SIGTERM or SIGINT.
    """
    from accord import kafka
    from accord.checkpointer import Checkpointer, signer_from_settings
    from accord.connection_guard import guard, psycopg_connect_args
    from accord.control_lease import lease_for
    from accord.database import engine_for, require_app_role
    from accord.health import serve
    from accord.receipts import ReceiptRecorder
    from accord.sweeper import RetractionSweeper
    from agreements import IdentifierTreatment, load_dir
    from agreements.partners import load_partners
    from agreements.recipient_schemas import recipient_catalogue

    # 1.
    agreements = load_dir(settings.agreements_dir)
    pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
    if not pseudonym_key and any(a.identifier_treatment is IdentifierTreatment.PSEUDONYMISED for a in agreements):
        raise ValueError("an agreement pseudonymises identifiers; set ACCORD_PSEUDONYM_KEY")
    partner_classes = load_partners(settings.partners_file)
    names = TopicNames(settings.topic_prefix)
    health = Health()
    if settings.health_port:
        serve(health, settings.api_host, settings.health_port)

    stop = {"now": False}
    loop: SharingLoop | None = None

    def on_signal(_signum: int, _frame: Any) -> None:
        stop["now"] = True
        if loop is not None:
            loop.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # 2.
    engine = engine_for(settings)
    if engine.dialect.name == "postgresql":
        guard(engine, settings.database_timeout_s)
    attempt = 0
    while True:
        try:
            # The bus appends only: refuse to run as the ledger's owner, a superuser, or a
            # role that could UPDATE, DELETE or TRUNCATE it (PostgreSQL; SQLite is dev-only).
            require_app_role(engine)
            break
        except (OperationalError, InterfaceError) as exc:
            if stop["now"]:
                return 0
            delay = backoff(attempt)
            health.waiting("database", type(exc).__name__)
            log.warning("waiting", service="database", error=type(exc).__name__, retry_in_s=delay)
            time.sleep(delay)
            attempt += 1

    # 3.
    agreement_set = AgreementSet(agreements, recipient_catalogue(agreements))
    producer = kafka.producer(settings)
    handler = BatchHandler(
        agreement_set, engine, producer, names, partner_classes, pseudonym_key,
        Limits(settings.max_event_bytes, settings.max_string_bytes),
    )
    sweeper = RetractionSweeper(engine, agreement_set, kafka.producer(settings), names, partner_classes)
    timers: list[tuple[str, float, Callable[[], Any]]] = [
        ("retraction_sweep", settings.retraction_interval_s, sweeper.sweep)
    ]
    signer = signer_from_settings(settings)
    if signer is None:
        log.warning("ledger_checkpoints_off",
                    reason="no signing key: set ACCORD_LEDGER_SIGNING_KEY or run `accord ledger keygen`")
    else:
        checkpointer = Checkpointer(engine, signer, settings.ledger_origin, kafka.producer(settings), names,
                                    settings.checkpoint_every_entries, settings.checkpoint_interval_s)
        timers.append(("checkpoint", min(settings.checkpoint_interval_s, 1.0), checkpointer.tick))
    consumer = kafka.consumer(settings, settings.processor_group, **{"fetch.wait.max.ms": settings.fetch_wait_max_ms})
    loop = SharingLoop(
        consumer,
        FeedFollower(settings, agreement_set),
        handler,
        names,
        health,
        batch_size=settings.batch_size,
        batch_window_s=settings.batch_window_s,
        receipts=ReceiptRecorder(engine),
        timers=timers,
        lease=lease_for(engine, psycopg_connect_args(settings.database_timeout_s)),
    )
    loop.stopping = stop["now"]
    log.info("processor_starting", group=settings.processor_group, agreements=len(agreements))
    # Everything built so far (modules, compiled codecs, agreements) lives as long as the
    # process: moved out of the collector's view, so full collections do not walk it again;
    # and a batch allocates tens of thousands of short-lived objects, so the youngest
    # generation is collected per 20,000 allocations, not 700. Measured (make bench, PostgreSQL,
    # 1 worker): 89 -> 77 CPU us/event, 8.1k -> 9.1k events/s.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    # 4.
    try:
        loop.run()
    finally:
        loop.close(leave_group=settings.leave_group_on_stop)
        if not settings.leave_group_on_stop:
            LINGERING.append(consumer)  # destroying it would send LeaveGroup; the process exit drops it
        producer.flush(10)
        log.info("processor_stopped")
    return 0


# Consumers kept until the process ends without leaving their group (ACCORD_LEAVE_GROUP_ON_STOP);
# `accord run` ends such a process with os._exit, so no destructor sends LeaveGroup.
LINGERING: list[Consumer] = []
