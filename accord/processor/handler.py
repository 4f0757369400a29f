"""One batch, start to finish: decode, decide, record in the ledger, deliver, dead-letter.

``BatchHandler.handle`` is the sharing loop's step 3, in the order I1, I7 and I8 need:

1. read each record (decode, validate; what cannot be read becomes a dead letter);
2. look up the consent history of the batch's subjects, in one query;
3. decide every event (the pure core, ``accord.sharing``) and append the decisions to
   the ledger in one transaction, which first looks the batch's events up under the
   ledger's lock and leaves out every one already recorded (a replay: of a restart, of
   the batch before, of another worker): that one is replayed instead (I8);
4. deliver what the ledger says was disclosed, the replayed entries included, and wait
   for the broker to confirm it;
5. dead-letter what could not be read, decided or delivered, with the reason.

``handle`` does all five at once. The loop runs them as ``prepare`` (1-3), ``send`` (4,
and producing 5) and ``settle`` (waiting for the broker, then the dead letters), so it
can decide the next batch while the broker confirms this one (accord/processor/loop.py).
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any, cast

import structlog
from confluent_kafka import KafkaError, KafkaException, Message
from sqlalchemy import Engine

import consent
from accord.processor.agreement_feed import AgreementSet
from accord.processor.metrics import ProcessorMetrics
from accord.processor.outage import Outage
from accord.sharing.decide import (
    Context,
    Decision,
    Outcome,
    Sharing,
    disclosure_id,
    other_subjects,
    projection_for,
    subject_key,
)
from accord.sharing.retraction import ENDED
from agreements.model import Agreement, has_begun
from agreements.recipient_schemas import projection_name
from bus import headers as header
from bus.kafka import Producing, note_refusals
from bus.topics import TopicNames
from consent.model import version
from ledger import EntryDraft, append_decisions, event_entries
from ledger.entry import StoredEntry
from schemas.serde import SerdeError
from schemas.validation import Limits, event_problems, size_problem

log = structlog.get_logger("accord.processor")

# A ledger entry's labels on accord_decisions_total (outcome, recipient, agreement id, version).
_DECISION_LABELS = attrgetter("outcome", "recipient", "agreement_id", "agreement_version")


# Delivery errors that belong to one record: retrying cannot help, so it is dead-lettered.
_PER_RECORD_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in (
        "MSG_SIZE_TOO_LARGE",
        "_MSG_SIZE_TOO_LARGE",
        "INVALID_RECORD",
        "CORRUPT_MESSAGE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_MSG",
        "_INVALID_ARG",
        "INVALID_MSG_SIZE",
    )
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
    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def add(self, other: BatchReport) -> None:
        self.events += other.events
        self.dead_letters += other.dead_letters
        self.appended += other.appended
        self.redelivered += other.redelivered
        self.receipts += other.receipts
        self.outcomes.update(other.outcomes)


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


@dataclass
class Prepared:
    """A batch read, looked up and decided (steps 1 to 3): what ``send`` appends and delivers.

    Whether an event is a replay is known only under the ledger's lock, in ``send``; so a
    copy of an event id with other content, and an event that could not be decided, wait
    for it: a replay of a recorded event is delivered from the ledger, whatever else.
    """

    report: BatchReport
    events: dict[str, Event]  # each event id's first copy in the batch, by id
    drafts: list[EntryDraft]  # their ledger entries, in order
    decided: list[tuple[Event, Decision]]
    dead: list[DeadLetter]
    replay: _ReplayView
    others: dict[str, list[Event]] = field(default_factory=dict)  # later copies with other content, by id
    undecidable: list[tuple[Event, str]] = field(default_factory=list)  # decide() failed: the error's class


@dataclass
class Sending:
    """A batch in the ledger whose disclosures are produced but not yet confirmed by the broker."""

    report: BatchReport
    deliveries: list[Delivery]
    dead: list[DeadLetter]  # produced by ``settle``, after the disclosures
    errors: dict[int, KafkaError] = field(default_factory=dict)  # delivery index -> the broker's refusal
    producing_s: float = 0.0


@dataclass(frozen=True)
class _ReplayView:
    """The agreements as one batch sees them, for redelivering recorded entries."""

    by_key: Mapping[str, Agreement]  # every version known, by id@vN
    ended: Mapping[str, int]  # per agreement id, its highest version that suspended or revoked it
    context: Context


def _not_covered(event: Event, consent_version: int, decided_at: datetime) -> EntryDraft:
    """The entry of an event no agreement in force covers: recorded, shared with nobody (I2)."""
    return EntryDraft.not_covered(
        disclosure_id=disclosure_id(event.event_id, "", "", 0),
        event_id=event.event_id,
        event_type=event.event_type,
        provider=event.record["envelope"]["source_agency"],
        subject_key=event.subject_key,
        consent_version=consent_version,
        decided_at=decided_at,
        event_digest=event.digest,
        subjects=event.subjects,
    )


class BatchHandler:
    """The imperative shell for one batch of event records.

    ``handle`` in five steps:

    1. read: decode and validate each record; one that cannot be read or is implausible
       is a dead letter (I2). Copies of one event id are told apart by their digest;
    2. read the consent history of the batch's subjects (I5);
    3. decide the batch's first copy of each event id; an event that no agreement covers
       gets a NOT_COVERED entry;
    4. append every decision in one transaction, BEFORE anything is produced (I1). Under
       the ledger's lock, it first looks up the batch's event ids and leaves out every
       event already recorded: a replay (after a restart, or of this handler's batch
       before, or of another worker that had the partition), whose entries decide what
       is delivered, never this batch's decision (I8). Each copy of a replayed event is
       checked against the recorded content, and one with other content is a
       conflicting duplicate, dead-lettered naming the recorded one; of an event not
       recorded, a later copy with other content is the conflicting one, and an event
       that could not be decided is dead-lettered;
    5. produce the disclosures (new and replayed), wait for the broker to take them,
       then produce the dead letters and wait again. A record the broker refuses for
       itself (too large, invalid) is dead-lettered; any other failure is an outage and
       the whole batch is retried.

    Steps 1-3 are ``prepare``, 4 and the producing of 5 ``send``, the waits ``settle``.
    """

    def __init__(
        self,
        agreements: AgreementSet,
        engine: Engine,
        producer: Producing,
        names: TopicNames,
        partner_classes: Mapping[str, str] | None = None,
        pseudonym_key: bytes = b"",
        limits: Limits = Limits(),
        flush_timeout_s: float = 30.0,
        *,
        metrics: ProcessorMetrics | None = None,
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
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
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
            # An invalid identifier is never used to look up consent (fail closed: docs/architecture.md).
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
        """The whole batch, steps 1 to 5, waiting for the broker before it returns."""
        return self.settle(self.send(self.prepare(batch)))

    def prepare(self, batch: Sequence[Inbound]) -> Prepared:
        """Steps 1 to 3: read, look up and decide. Reads the ledger and consent, writes nothing."""
        report = BatchReport(events=len(batch))
        stage = self.metrics.stage  # each step's time (accord_batch_stage_seconds)
        clock = time.perf_counter
        began = clock()
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
        at = clock()
        read_s = at - began
        stage["read"].observe(read_s)

        # 2. the consent history of the batch's subjects. Whether an event is already recorded
        # is asked once, under the ledger's lock (send): a replay's decision here is left out.
        events: dict[str, Event] = {}
        others: dict[str, list[Event]] = {}
        for event_id, versions in copies.items():
            first, *rest = versions.values()
            events[event_id] = first
            if rest:
                others[event_id] = rest
        with self.engine.connect() as reads:
            histories = consent.history(reads, {e.subject_key for e in events.values()})
        looked_up = clock() - at
        stage["look_up"].observe(looked_up)

        # 3. decide each event id's first copy
        agreements = self.agreements.current(context.today)  # one view for the whole batch
        sharing = Sharing.of(agreements)  # compiled once per set of agreements (cached)
        by_key = self.agreements.by_key()
        ended: dict[str, int] = {}
        for a in by_key.values():
            if a.status in ENDED and has_begun(a, context.today):
                ended[a.id] = max(ended.get(a.id, 0), a.version)
        replay = _ReplayView(by_key, ended, context)
        drafts: list[EntryDraft] = []
        decided: list[tuple[Event, Decision]] = []
        undecidable: list[tuple[Event, str]] = []
        for event in events.values():
            consents = histories.get(event.subject_key, ())
            try:
                decisions = sharing.decide(event.event_type, event.record, consents, context, key=event.subject_key)
            except Exception as exc:  # noqa: BLE001 - pure code failing on one record must not stop the bus (I10): dead-lettered in send unless it is a replay
                undecidable.append((event, type(exc).__name__))
                continue
            if not decisions:
                drafts.append(_not_covered(event, version(consents), decided_at))
            for d in decisions:
                drafts.append(d.entry(decided_at, event.digest, event.subjects))
                decided.append((event, d))
        stage["decide"].observe(clock() - began - read_s - looked_up)  # the rest of steps 2 and 3
        return Prepared(report, events, drafts, decided, dead, replay, others, undecidable)

    def send(self, prepared: Prepared) -> Sending:
        """Step 4, and step 5 up to the wait: append, then produce every disclosure (I1).

        Returns before the broker has confirmed anything; ``settle`` waits for it.
        """
        p = prepared
        report, dead = p.report, p.dead
        deliveries: list[Delivery] = []
        clock = time.perf_counter
        # 4. the ledger first (I1). An event already recorded (before a restart, by the batch
        # before this one, by a worker that had its partition while this one was paused) is
        # left out under the ledger's lock, and replayed: the ledger decides what it delivers,
        # not this batch's decision (I8).
        at = clock()
        kept, appended, recorded_before = append_decisions(self.engine, p.drafts, p.events)
        decided = [(e, d) for e, d in p.decided if e.event_id not in recorded_before] if recorded_before else p.decided
        appended_at = clock()
        self.metrics.stage["append"].observe(appended_at - at)
        report.appended = sum(1 for a in appended if a.new)
        if appended:
            # What reached the ledger, counted per batch, so the counts can equal the ledger's
            # own; tallied in C (map, attrgetter) when every entry is new, as it almost always is.
            new = kept if report.appended == len(kept) else [d for d, a in zip(kept, appended, strict=True) if a.new]
            self.metrics.decided(Counter(map(_DECISION_LABELS, new)))
        seq_of = {a.disclosure_id: a.seq for a in appended}
        fresh = {a.disclosure_id for a in appended if a.new}
        raced = {d.event_id for d, a in zip(kept, appended, strict=True) if not a.new} | recorded_before
        for event, d in decided:
            report.outcomes[(d.recipient, d.outcome._value_, d.reason or "")] += 1
            if d.outcome is Outcome.DISCLOSED and event.event_id not in raced and d.projected is not None:
                deliveries.append(
                    Delivery(
                        d.disclosure_id,
                        d.recipient,
                        d.event_type,
                        d.agreement,
                        d.projected,
                        seq_of[d.disclosure_id],
                        event.msg,
                    )
                )
        if raced:  # every copy of a recorded event, against the recorded content
            for event_id, stored in event_entries(self.engine, sorted(raced)).items():
                for event in (p.events[event_id], *p.others.get(event_id, ())):
                    self._replay(event, stored, p.replay, deliveries, dead)
        for event_id, rest in p.others.items():
            if event_id not in raced:
                first = p.events[event_id].msg
                dead.extend(
                    DeadLetter(
                        other.msg,
                        "ConflictingDuplicate",
                        f"event id {event_id} reused with different content: the first is at "
                        f"{first.topic}[{first.partition}]@{first.offset} in this batch",
                    )
                    for other in rest
                )
        dead.extend(
            DeadLetter(event.msg, "Undecidable", f"could not be decided: {error}")
            for event, error in p.undecidable
            if event.event_id not in raced
        )

        # 5. deliver (the wait is settle's)
        report.redelivered = len(deliveries) - sum(1 for d in deliveries if d.disclosure_id in fresh)
        sending = Sending(report, deliveries, dead)
        dead.extend(self._produce_all(deliveries, sending.errors))
        sending.producing_s = clock() - appended_at
        return sending

    def settle(self, sending: Sending) -> BatchReport:
        """The rest of step 5: wait for the broker to take the disclosures, then the dead letters.

        A disclosure the broker refused for itself becomes a dead letter; any other failure
        is an Outage, and the batch must be done again (the ledger makes that a replay).
        """
        at = time.perf_counter()
        self._flush(sending.errors, "disclosures")
        dead = sending.dead
        for i, err in sorted(sending.errors.items()):
            dead.append(self._undeliverable(sending.deliveries[i], err.name()))
        self.dead_letters(dead)
        sending.report.dead_letters = len(dead)
        self.metrics.stage["deliver"].observe(sending.producing_s + time.perf_counter() - at)
        return sending.report

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
            dead.append(
                DeadLetter(
                    event.msg,
                    "ConflictingDuplicate",
                    f"event id {event.event_id} reused with different content: the first is "
                    f"recorded at ledger seq {first}; nothing of this one was shared",
                )
            )
            return
        retracted = {e.draft.refers_to for e in stored if e.draft.outcome == "RETRACTED"}
        for entry in stored:
            d = entry.draft
            if d.outcome != Outcome.DISCLOSED.value or d.disclosure_id in retracted:
                continue  # a WITHHELD entry delivers nothing, whatever consent says now (I8)
            agreement = view.by_key.get(f"{d.agreement_id}@v{d.agreement_version}")
            if agreement is None or view.ended.get(d.agreement_id, 0) > d.agreement_version:
                continue  # ended since (also if reinstated after): the sweep retracts it; nothing more is sent
            projected = projection_for(event.event_type, event.record, agreement, d.fields, d.recipient, view.context)
            deliveries.append(
                Delivery(d.disclosure_id, d.recipient, d.event_type, agreement, projected, entry.seq, event.msg)
            )

    # -- step 5 -----------------------------------------------------------------

    def _produce_all(self, deliveries: Sequence[Delivery], errors: dict[int, KafkaError]) -> list[DeadLetter]:
        """Produce every delivery; the records refused at once come back, the broker's answers go to ``errors``."""
        refused: list[DeadLetter] = []
        encoded: dict[int, bytes] = {}  # recipients of one agreement share one projection
        for i, d in enumerate(deliveries):
            payload = encoded.get(id(d.projected))
            if payload is None:
                # A projection of a record that just decoded is valid by construction.
                payload = self.catalogue.encode(projection_name(d.agreement, d.event_type), d.projected, validated=True)
                encoded[id(d.projected)] = payload

            def on_delivery(err: KafkaError | None, _msg: Message, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            headers = [
                (header.DISCLOSURE_ID, d.disclosure_id.encode()),
                (header.AGREEMENT, d.agreement.key.encode()),
                (header.EVENT_TYPE, d.event_type.encode()),
                (header.LEDGER_SEQ, str(d.seq).encode()),
            ]
            topic = self.names.partner(d.recipient, d.event_type)
            refusal = self._produce(topic, d.disclosure_id.encode(), payload, headers, on_delivery)
            if refusal is not None:
                refused.append(self._undeliverable(d, refusal))
        return refused

    def _undeliverable(self, d: Delivery, error: str) -> DeadLetter:
        log.error("disclosure_undeliverable", disclosure_id=d.disclosure_id, recipient=d.recipient, error=error)
        return DeadLetter(
            d.source,
            "Undeliverable",
            f"disclosure {d.disclosure_id} (ledger seq {d.seq}) to {d.recipient} was refused by the broker: {error}",
        )

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> str | None:
        """produce(), waiting while the local queue is full; a per-record refusal is returned, not raised.

        Delivery reports are served by the flush that ends each step, not per record.
        """
        # The stub types headers as a list of the wider (str, str | bytes | None); list is invariant,
        # and produce() only reads them.
        wide = cast(list[tuple[str, str | bytes | None]], headers)
        while True:
            try:
                self.producer.produce(topic, key=key, value=value, headers=wide, on_delivery=on_delivery)
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
        note_refusals(self.producer, errors.values())  # a fenced producer is renewed at the next send
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
                (header.ERROR, d.error.encode()),
                (header.REASON, d.reason.encode()),
                (header.SOURCE_TOPIC, msg.topic.encode()),
                (header.SOURCE_PARTITION, str(msg.partition).encode()),
                (header.SOURCE_OFFSET, str(msg.offset).encode()),
            ]
            # A record too large to keep is not copied: it stays at its offset on the source topic.
            value = msg.value if msg.value is not None and len(msg.value) <= self.limits.max_event_bytes else None
            if value is None and msg.value is not None:
                headers.append((header.VALUE_OMITTED, str(len(msg.value)).encode()))

            def on_delivery(err: KafkaError | None, _msg: Message, i: int = i) -> None:
                if err is not None:
                    errors[i] = err

            if self._produce(self.names.dead_letter, msg.key, value, headers, on_delivery) is not None:
                self._produce(self.names.dead_letter, None, None, headers, on_delivery)
            # Reasons name the problem, never the content (I6).
            log.warning(
                "dead_letter",
                topic=msg.topic,
                partition=msg.partition,
                offset=msg.offset,
                error=d.error,
                reason=d.reason,
            )
        self._flush(errors, "dead letters")
        # Counted once on the topic: what the broker took now (a refused one is counted when resent).
        self.metrics.dead_lettered(d.error for i, d in enumerate(dead) if i not in errors)
        if errors:  # the broker refused a dead letter for itself: send its headers alone
            again = [replace(d, msg=replace(d.msg, key=None, value=None)) for i, d in enumerate(dead) if i in errors]
            self.dead_letters(again)
