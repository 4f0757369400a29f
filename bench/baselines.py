"""The two baselines the pipeline is measured against, in the bench's own process.

raw: confluent-kafka consume(batch) -> produce of the same bytes, nothing else. The
ceiling of any Kafka-to-Kafka service in Python on this machine and broker.

floor: the I/O the pipeline cannot avoid, and nothing else. Per batch of
``batch_size`` records (the processor's own batch size and window):

1. consume the batch;
2. decode every record with the catalogue (schemas/serde.py), as the processor must;
3. COPY as many rows per event as the pipeline's ledger got per event (of that
   event type), in one transaction, into a plain PostgreSQL table shaped like the
   ledger (no indexes, no triggers, no lock, no head read, no look-ups); the rows
   are the pipeline's own ledger rows, read back, hashes precomputed;
4. produce as many records per event as the pipeline sent to partners per event
   (of that type), to that type's partner topics, with headers of the same size,
   and flush (the processor must have them acknowledged before it commits);
5. commit the batch's offsets, synchronously.

No decisions, no consent reads, no hashing, no validation. Both time from the end of
their first batch to the last record, as the pipeline is timed from its first commit.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import cycle
from typing import Any

import psycopg
from confluent_kafka import Message, TopicPartition
from sqlalchemy import Engine, text

from bench.backlog import position
from bench.cpu import CpuMeter, Usage
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from ledger import init_ledger
from schemas.serde import Catalogue


@dataclass(frozen=True)
class Timed:
    events: int
    seconds: float
    cpu: Usage | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass(frozen=True)
class PerEvent:
    """What the pipeline did per event of one type: ledger rows and partner records."""

    rows: float
    produces: float


def _produce(
    producer: Any, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
) -> None:
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)


def _value(msg: Message) -> bytes:
    """A backlog record's bytes: every synthetic event has a value."""
    value = msg.value()
    assert value is not None
    return value


def raw_copy(
    settings: Settings,
    ends: Mapping[tuple[str, int], int],
    out_topic: str,
    batch_size: int,
    min_seconds: float = 2.0,
    min_passes: int = 3,
    cpu_groups: dict[str, Callable[[], list[int]]] | None = None,
) -> Timed:
    """Consume every record and produce its bytes unchanged, in passes over the backlog.

    One pass of 40,000 records takes a fraction of a second, too short to time, so the
    partitions are assigned from offset 0 again until ``min_seconds`` of passes are timed;
    each pass is timed from the end of its first batch, like everything else here.
    """
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}raw-{uuid.uuid4().hex[:6]}")
    producer = kafka.producer(settings)
    total = sum(ends.values())
    timed_events, timed_seconds, passes = 0, 0.0, 0
    meter = CpuMeter(cpu_groups or {})  # over every pass, gaps included: CPU per event, not per second
    meter.start(time.perf_counter())
    try:
        begun = time.perf_counter()
        # Each pass costs a re-assignment (~0.5 s on Tansu) besides its timed part: bound the wall time too.
        while passes < min_passes or (timed_seconds < min_seconds and time.perf_counter() - begun < 20):
            consumer.assign([TopicPartition(t, p, 0) for (t, p) in ends])
            seen, first, started = 0, 0, 0.0
            while seen < total:
                msgs = consumer.consume(batch_size, timeout=1.0)
                for msg in msgs:
                    if msg.error():
                        continue
                    _produce(producer, out_topic, msg.key(), msg.value())
                    seen += 1
                producer.poll(0)
                if msgs and not started:
                    first, started = seen, time.perf_counter()
            producer.flush(60)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
            timed_events += total - first
            timed_seconds += time.perf_counter() - started
            passes += 1
        return Timed(timed_events, timed_seconds, meter.stop(time.perf_counter(), passes * total))
    finally:
        consumer.close()


class _Spread:
    """Turns a fractional count per event into whole counts whose running sum stays exact."""

    def __init__(self, per_event: Mapping[str, float]) -> None:
        self.per_event = dict(per_event)
        self.owed = {k: 0.0 for k in per_event}

    def take(self, kind: str) -> int:
        self.owed[kind] += self.per_event.get(kind, 0.0)
        n = int(self.owed[kind] + 1e-9)
        self.owed[kind] -= n
        return n


def io_floor(
    settings: Settings,
    topics: list[str],
    total: int,
    per_event: Mapping[str, PerEvent],
    partner_topics: Mapping[str, Sequence[str]],
    engine: Engine,
    columns: Sequence[str],
    rows: Sequence[tuple],
    batch_size: int,
    batch_window_s: float,
    cpu_groups: dict[str, Callable[[], list[int]]] | None = None,
) -> tuple[Timed, int, int]:
    """Decode, COPY and produce as the pipeline's I/O does; (timing, rows copied, records produced)."""
    init_ledger(engine)  # only so that the plain table can copy the ledger's columns
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE floor_entries (LIKE ledger_entries)"))  # columns only: a plain table
    catalogue = Catalogue.default()
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}floor-{uuid.uuid4().hex[:6]}")
    producer = kafka.producer(settings)
    consumer.subscribe(topics)
    row_spread = _Spread({t: p.rows for t, p in per_event.items()})
    produce_spread = _Spread({t: p.produces for t, p in per_event.items()})
    targets = {t: cycle(ts) for t, ts in partner_topics.items()}
    source = cycle(rows)
    # Four headers the size of the processor's (disclosure id, agreement key, event type, ledger seq).
    headers_of = {
        t: [
            (header.DISCLOSURE_ID, b"0" * 64),
            (header.AGREEMENT, b"x" * 32 + b"@v1"),
            (header.EVENT_TYPE, t.encode()),
            (header.LEDGER_SEQ, b"1234567"),
        ]
        for t in per_event
    }
    copy_sql = f"COPY floor_entries ({', '.join(columns)}) FROM STDIN"
    raw = engine.raw_connection()
    pg = raw.driver_connection
    assert isinstance(pg, psycopg.Connection)  # the engine's driver is psycopg 3
    row = pg.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    backend = row[0]
    pg.commit()
    meter = CpuMeter({**(cpu_groups or {}), "postgres": lambda: [backend]})
    seen, copied, produced, first, started = 0, 0, 0, 0, 0.0
    try:
        while seen < total:
            # 1.
            msgs = [m for m in consumer.consume(batch_size, timeout=batch_window_s) if m.error() is None]
            if not msgs:
                continue
            # 2.
            decoded = [(m, catalogue.decode(_value(m))[0]) for m in msgs]
            # 3.
            with pg.cursor() as cur, cur.copy(copy_sql) as copy:
                for _m, event_type in decoded:
                    for _ in range(row_spread.take(event_type)):
                        copy.write_row(next(source))
                        copied += 1
            pg.commit()
            # 4.
            for m, event_type in decoded:
                for _ in range(produce_spread.take(event_type)):
                    _produce(producer, next(targets[event_type]), b"0" * 64, m.value(), headers_of[event_type])
                    produced += 1
            producer.poll(0)
            if producer.flush(30):
                raise RuntimeError("floor: records not acknowledged within 30 s")
            # 5.
            ends: dict[tuple[str, int], int] = {}
            for m in msgs:
                tp, offset = position(m)
                ends[tp] = max(ends.get(tp, -1), offset + 1)
            consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)
            seen += len(msgs)
            if not started:
                first, started = seen, time.perf_counter()
                meter.start(started)
        now = time.perf_counter()
        return Timed(total - first, now - started, meter.stop(now, total - first)), copied, produced
    finally:
        raw.close()
        consumer.close()
