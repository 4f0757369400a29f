"""Making and publishing the ledger's signed checkpoints (the shell around ledger.checkpoint).

The processor ticks a :class:`Checkpointer` on a timer: a checkpoint is made when the
ledger grew by ``checkpoint_every_entries`` since the newest checkpoint, or when it grew
at all and ``checkpoint_interval_s`` passed. Each is stored, then published to
``accord.ledger.checkpoints`` (key: the tree size) for partners and auditors to keep.
The first tick re-publishes the newest stored checkpoint, so one stored by a run that
crashed before publishing still goes out (consumers key copies by tree size).

Without a signing key (``ACCORD_LEDGER_SIGNING_KEY``, or ``<state_dir>/ledger-signing.key``
from ``accord ledger keygen``) there are no checkpoints: the processor says so once at
start and shares as before.

Each tick also tells the processor's metrics the newest checkpoint's age and size and
how many entries no checkpoint covers yet (docs/metrics.md), from the queries the tick
makes anyway.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import structlog
from confluent_kafka import KafkaError, Message
from sqlalchemy import Engine

from accord.processor.metrics import ProcessorMetrics
from bus import headers as header
from bus.errors import flush_or_raise
from bus.kafka import Producing
from bus.settings import Settings
from bus.topics import TopicNames
from ledger.checkpoint import (
    CheckpointRefused,
    StoredCheckpoint,
    latest_checkpoint,
    ledger_size,
    make_checkpoint,
    signer_from_settings,
    verifier_from_settings,
)
from ledger.note import NoteSigner

__all__ = [
    "Checkpointer",
    "publish_checkpoint",
    "read_published_notes",
    "signer_from_settings",
    "verifier_from_settings",
]

log = structlog.get_logger("accord.checkpointer")


def publish_checkpoint(producer: Producing, names: TopicNames, checkpoint: StoredCheckpoint, origin: str) -> None:
    """Produce the checkpoint's note to the checkpoints topic and wait for it; NotDelivered otherwise."""
    errors: list[str] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err.str())

    producer.produce(
        names.ledger_checkpoints,
        key=str(checkpoint.tree_size).encode(),
        value=checkpoint.note.encode(),
        headers=[(header.ORIGIN, origin.encode()), (header.TREE_SIZE, str(checkpoint.tree_size).encode())],
        on_delivery=on_delivery,
    )
    flush_or_raise(producer, f"checkpoint {checkpoint.tree_size}", errors)


def read_published_notes(settings: Settings, names: TopicNames, timeout_s: float = 30.0) -> list[str]:
    """Every checkpoint note on the checkpoints topic, read from the start with a throwaway group.

    Reads until the end of every partition (the fetch high watermark, which the embedded
    broker reports rightly); TimeoutError if that takes longer than ``timeout_s``.
    """
    from bus import kafka

    consumer = kafka.consumer(
        settings, f"{names.prefix}accord-verify-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}
    )
    notes: list[str] = []
    try:
        consumer.subscribe([names.ledger_checkpoints])
        ended: set[int] = set()
        deadline = time.monotonic() + timeout_s
        while not consumer.assignment() or ended != {p.partition for p in consumer.assignment()}:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {names.ledger_checkpoints} to its end in {timeout_s:.0f} s")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err, partition, value = msg.error(), msg.partition(), msg.value()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF and partition is not None:
                    ended.add(partition)
                    continue
                raise RuntimeError(err.str())
            if value is None:
                raise RuntimeError(f"a record without a note on {names.ledger_checkpoints}")
            notes.append(value.decode("utf-8"))
    finally:
        consumer.close()
    return notes


class Checkpointer:
    """Makes a checkpoint when due and publishes it (see the module docstring); ``tick`` is the loop's timer work."""

    def __init__(
        self,
        engine: Engine,
        signer: NoteSigner,
        origin: str,
        producer: Producing,
        names: TopicNames,
        every_entries: int,
        interval_s: float,
        *,
        metrics: ProcessorMetrics | None = None,
    ) -> None:
        self.engine = engine
        self.signer = signer
        self.origin = origin
        self.producer = producer
        self.names = names
        self.every_entries = every_entries
        self.interval = timedelta(seconds=interval_s)
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
        self._republished = False
        self._refused: str | None = None

    def due(self, now: datetime) -> bool:
        latest = latest_checkpoint(self.engine)
        last_size = latest.tree_size if latest else 0
        grown = ledger_size(self.engine) - last_size
        self._observed(latest, max(grown, 0))
        if grown <= 0:
            return False
        return latest is None or grown >= self.every_entries or now - latest.created_at >= self.interval

    def tick(self, now: datetime | None = None) -> StoredCheckpoint | None:
        """One timer tick: republish once, then checkpoint if due. Returns the new checkpoint, if any."""
        now = now or datetime.now(UTC)
        if not self._republished:
            log.info(
                "ledger_checkpoints_on",
                origin=self.origin,
                public_key=self.signer.verifier.vkey,
                every_entries=self.every_entries,
                interval_s=self.interval.total_seconds(),
            )
            latest = latest_checkpoint(self.engine)
            if latest is not None:
                publish_checkpoint(self.producer, self.names, latest, self.origin)
            self._republished = True
        if not self.due(now):
            return None
        try:
            made = make_checkpoint(self.engine, self.signer, self.origin, now=now)
        except CheckpointRefused as exc:
            # Nothing is signed over a history that disagrees with the last checkpoint. Said
            # once per problem (it names an entry number, never its contents); sharing goes on.
            if str(exc) != self._refused:
                log.error("checkpoint_refused", problem=str(exc), seq=exc.seq)
                self._refused = str(exc)
            return None
        self._refused = None
        if made is not None:
            publish_checkpoint(self.producer, self.names, made, self.origin)
            log.info("checkpoint", tree_size=made.tree_size)
            self._observed(made, 0)
        return made

    def _observed(self, latest: StoredCheckpoint | None, pending: int) -> None:
        control = self.metrics.control
        if latest is not None:
            made_at = latest.created_at
            control.checkpoint_at = (made_at if made_at.tzinfo else made_at.replace(tzinfo=UTC)).timestamp()
            control.checkpoint_size = latest.tree_size
        control.checkpoint_pending = pending
