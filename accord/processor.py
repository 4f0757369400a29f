"""The sharing processor: a faust-streaming app around a batch handler.

Per batch (never per event: faust's per-event machinery is the bottleneck):
decode every event, read the consent history of every subject in one query,
decide with the pure ``accord.sharing.decide``, append every decision to the
ledger in one transaction, and only then produce the disclosures (I1). Input
that cannot be read goes to the dead-letter topic with a reason (I2). A crash
anywhere replays the batch; the ledger's idempotent append and the stable
disclosure ids make that safe (I7).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from confluent_kafka import KafkaError, Producer
from sqlalchemy import Engine

import consent
from accord.sharing import Context, Decision, Outcome, decide, subject_key
from accord.topics import EVENT_TYPES, TopicNames
from accord.agreement_feed import AgreementSet
from agreements.recipient_schemas import projection_name
from ledger import EntryDraft, append
from schemas.serde import SerdeError

log = structlog.get_logger("accord.processor")

EXIT_BATCH_FAILED = 70  # EX_SOFTWARE: a batch could not be completed; restart to replay it


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
    outcomes: Counter = field(default_factory=Counter)


class DeliveryFailed(RuntimeError):
    pass


def _draft(d: Decision, decided_at: datetime) -> EntryDraft:
    return EntryDraft(
        disclosure_id=d.disclosure_id,
        event_id=d.event_id,
        event_type=d.event_type,
        provider=d.provider,
        recipient=d.recipient,
        agreement_id=d.agreement.id,
        agreement_version=d.agreement.version,
        purpose=d.agreement.purpose.value,
        legal_basis=d.agreement.legal_basis,
        outcome=d.outcome.value,
        reason=d.reason,
        fields=d.fields,
        consent_mode=d.agreement.consent_mode.value,
        consent_version=d.consent_version,
        subject_key=d.subject_key,
        decided_at=decided_at,
    )


class BatchHandler:
    """The imperative shell for one batch; synchronous so it can run off the event loop."""

    def __init__(
        self,
        agreements: AgreementSet,
        engine: Engine,
        producer: Producer,
        names: TopicNames,
        partner_classes: Mapping[str, str] | None = None,
        pseudonym_key: bytes = b"",
    ) -> None:
        self.agreements = agreements
        self.partner_classes = dict(partner_classes or {})
        self.pseudonym_key = pseudonym_key
        self.catalogue = agreements.catalogue
        self.engine = engine
        self.producer = producer
        self.names = names

    def _decode(self, msg: Inbound) -> tuple[str, dict[str, Any]]:
        event_type = self.names.event_type_of(msg.topic)
        if msg.value is None:
            raise SerdeError("empty message (no value)")
        name, record = self.catalogue.decode(msg.value)
        if name != event_type:
            raise SerdeError(f"a {name} record on the {event_type} topic")
        return event_type, record

    def handle(self, batch: Sequence[Inbound]) -> BatchReport:
        report = BatchReport(events=len(batch))
        decoded: list[tuple[str, dict[str, Any]]] = []
        dead: list[tuple[Inbound, Exception]] = []
        for msg in batch:
            try:
                decoded.append(self._decode(msg))
            except (SerdeError, ValueError, KeyError) as exc:
                dead.append((msg, exc))

        now = datetime.now(UTC)
        # The ledger stores and hashes milliseconds, so decide at that precision.
        decided_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
        context = Context(decided_at, self.partner_classes, self.pseudonym_key)
        # Consent is read after the batch is in hand, so any change recorded
        # before these events were processed applies to them (I5).
        histories = consent.history(self.engine, (subject_key(t, r) for t, r in decoded))
        decisions: list[Decision] = []
        agreements = self.agreements.current()  # one view for the whole batch
        for event_type, record in decoded:
            key = subject_key(event_type, record)
            decisions.extend(decide(event_type, record, agreements, histories.get(key, ()), context))

        # I1: the ledger commit happens before anything reaches a partner topic.
        appended = append(self.engine, [_draft(d, decided_at) for d in decisions]) if decisions else []
        report.appended = sum(1 for a in appended if a.new)
        seq_of = {a.disclosure_id: a.seq for a in appended}

        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            if err is not None:
                errors.append(err.str())

        encoded: dict[int, bytes] = {}  # recipients of one agreement share one projection
        for d in decisions:
            report.outcomes[(d.recipient, d.outcome.value, d.reason or "")] += 1
            if d.outcome is not Outcome.DISCLOSED:
                continue
            payload = encoded.get(id(d.projected))
            if payload is None:
                # A projection of a record that just decoded is valid by construction.
                payload = self.catalogue.encode(
                    projection_name(d.agreement, d.event_type), d.projected, validated=True
                )
                encoded[id(d.projected)] = payload
            self.producer.produce(
                self.names.partner(d.recipient, d.event_type),
                key=d.disclosure_id.encode(),
                value=payload,
                headers=[
                    ("accord.disclosure_id", d.disclosure_id.encode()),
                    ("accord.agreement", d.agreement.key.encode()),
                    ("accord.event_type", d.event_type.encode()),
                    ("accord.ledger_seq", str(seq_of[d.disclosure_id]).encode()),
                ],
                on_delivery=on_delivery,
            )
            self.producer.poll(0)
        for msg, exc in dead:
            reason = str(exc)
            self.producer.produce(
                self.names.dead_letter,
                key=msg.key,
                value=msg.value,
                headers=[
                    ("accord.error", type(exc).__name__.encode()),
                    ("accord.reason", reason.encode()),
                    ("accord.source_topic", msg.topic.encode()),
                    ("accord.source_partition", str(msg.partition).encode()),
                    ("accord.source_offset", str(msg.offset).encode()),
                ],
                on_delivery=on_delivery,
            )
            # Reasons name the problem, never the content (I6).
            log.warning("dead_letter", topic=msg.topic, partition=msg.partition, offset=msg.offset,
                        error=type(exc).__name__, reason=reason)
        report.dead_letters = len(dead)
        remaining = self.producer.flush(30)
        if remaining or errors:
            # Raising makes faust stop without acking the batch; the replay is idempotent.
            raise DeliveryFailed(f"{remaining} undelivered, errors: {errors[:3]}")
        return report


def _exit_on_failure(what: str, exc: Exception, **counts: int) -> None:
    # Exit rather than let faust restart the agent: a restarted agent would
    # carry on past unfinished work until the next restart. Exiting leaves the
    # committed offsets (and cursors) before it, so the supervisor's restart
    # replays it, idempotently.
    log.error(f"{what}_failed_exiting", error=type(exc).__name__, **counts)
    sys.stderr.flush()
    os._exit(EXIT_BATCH_FAILED)


async def inbound_batches(stream: Any, settings: Any) -> AsyncIterator[list[Inbound]]:
    """A faust stream as batches of plain messages: every agent works per batch, never per event."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_window_s):
        yield [
            Inbound(e.message.topic, e.message.partition, e.message.offset, e.message.key, e.message.value)
            for e in events
        ]


def build_app(
    settings: Any,
    handler_factory: Any,
    sweeper_factory: Any = None,
    agreement_set: AgreementSet | None = None,
    checkpointer_factory: Any = None,
) -> Any:
    """The faust app: an agent over the event topics taking batches, the retraction sweep and ledger checkpoints."""
    import faust

    names = TopicNames(settings.topic_prefix)
    app = faust.App(
        settings.processor_group,
        broker=f"kafka://{settings.bootstrap_servers}",
        value_serializer="raw",
        key_serializer="raw",
        # Topics are created by `accord topics create`; faust must not invent them.
        topic_allow_declare=False,
        topic_disable_leader=True,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_commit_interval=0.5,
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        store="memory://",
        datadir=str(settings.state_dir / "faust"),
    )
    topic = app.topic(*[names.event(t) for t in EVENT_TYPES], key_type=bytes, value_type=bytes)
    handler: BatchHandler | None = None

    @app.agent(topic)
    async def share(stream: Any) -> None:
        nonlocal handler
        loop = asyncio.get_running_loop()
        if handler is None:
            handler = handler_factory()
        async for batch in inbound_batches(stream, settings):
            try:
                report = await loop.run_in_executor(None, handler.handle, batch)
            except Exception as exc:
                _exit_on_failure("batch", exc, events=len(batch))
            log.info(
                "batch",
                events=report.events,
                dead_letters=report.dead_letters,
                appended=report.appended,
                disclosed=sum(n for (_, o, _), n in report.outcomes.items() if o == "DISCLOSED"),
                withheld=sum(n for (_, o, _), n in report.outcomes.items() if o == "WITHHELD"),
            )

    if agreement_set is not None:

        @app.agent(app.topic(names.agreements, key_type=bytes, value_type=bytes))
        async def follow_agreements(stream: Any) -> None:
            async for event in stream.events():
                try:
                    agreement = agreement_set.apply(event.message.value)
                except ValueError as exc:
                    # A bad publication is refused, not fatal: the previous versions stay in force.
                    log.error("agreement_refused", offset=event.message.offset, error=str(exc).splitlines()[0])
                    continue
                log.info("agreement_applied", agreement=agreement.key, status=agreement.status.value)

    if sweeper_factory is not None:
        sweeper = None

        @app.timer(interval=settings.retraction_interval_s)
        async def sweep_retractions() -> None:
            nonlocal sweeper
            if sweeper is None:
                sweeper = sweeper_factory()
            try:
                await asyncio.get_running_loop().run_in_executor(None, sweeper.sweep)
            except Exception as exc:
                _exit_on_failure("retraction_sweep", exc)

    if checkpointer_factory is not None:
        checkpointer = None

        # Ticks at most every second; the checkpointer decides (every N entries or T seconds).
        @app.timer(interval=min(settings.checkpoint_interval_s, 1.0))
        async def checkpoint_ledger() -> None:
            nonlocal checkpointer
            if checkpointer is None:
                checkpointer = checkpointer_factory()
            try:
                await asyncio.get_running_loop().run_in_executor(None, checkpointer.tick)
            except Exception as exc:
                _exit_on_failure("checkpoint", exc)

    return app
