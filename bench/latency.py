"""Latency from an event's publish to its partner record, at steady offered loads.

With the processor(s) running and caught up on empty topics:

1. a partner-side consumer (a thread of this process) subscribes to every partner
   topic and notes the monotonic time each record arrives, by its key (the
   disclosure id);
2. a warm-up of a few hundred events, so connections, caches and the first
   decisions are behind us;
3. for each offered load: events are produced at that steady rate (a token
   bucket: event k is due at start + k / rate; the publish time is taken just
   before ``produce``, on the same monotonic clock as the receive time), then the
   bench waits until the group has committed them and the last partner records
   have arrived;
4. the ledger maps each disclosure id to its event, so each partner record's
   latency is its receive time minus its event's publish time. One sample per
   partner record (an event sent to two partners gives two). Each sample is also
   split at the partner record's timestamp, which the processor's producer sets when
   it produces it (wall clock, milliseconds): publish -> produced is the broker's way
   in, the wait for a batch and the processor's work; produced -> partner is the
   broker's way out to the partner's consumer. And, given the processors' health
   ports, the load's share of ``accord_record_age_seconds`` (how long each batch's
   oldest record had waited when a processor took it from its consumer): what of
   publish -> produced passed before the processor had the record.

Nothing in the processor is changed: its batch window (ACCORD_BATCH_WINDOW_S, the
longest ``consume`` waits to fill a batch of ACCORD_BATCH_SIZE) is part of what is
measured, and below a load that fills a batch within the window it is a floor
under the latency of every event.
"""

from __future__ import annotations

import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from accord.dev.drain import wait_for_group
from bench.backlog import Encoded, position
from bench.cpu import CpuMeter
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames


@dataclass(frozen=True)
class Stage:
    load: float  # offered, events/s
    achieved: float  # what the token bucket actually managed
    events: int
    samples: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cores: dict[str, float] = field(default_factory=dict)  # CPU cores used while it was published and drained
    # The same samples split at the partner record's CreateTime (the processor's produce() call,
    # wall clock, ms): publish -> produce (broker in, the batch, decisions, ledger) and produce -> partner.
    p99_in_ms: float = float("nan")
    p99_out_ms: float = float("nan")
    # accord_record_age_seconds over the load, as the upper bounds (ms) of the buckets holding
    # its p50 and p99: the oldest record of each batch, when a processor took it (nan: not read).
    age_p50_ms: float = float("nan")
    age_p99_ms: float = float("nan")


Buckets = dict[float, float]  # a histogram's upper bound (s) -> observations at or under it


def record_ages(ports: Sequence[int]) -> Buckets:
    """accord_record_age_seconds of the processors on these health ports, buckets summed."""
    total: Buckets = {}
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text_ = r.read().decode()
        for family in text_string_to_metric_families(text_):
            for s in family.samples:
                if s.name == "accord_record_age_seconds_bucket":
                    le = float(s.labels["le"])
                    total[le] = total.get(le, 0.0) + s.value
    return total


def bucket_quantile(before: Buckets, after: Buckets, q: float) -> float:
    """The upper bound, in ms, of the bucket holding quantile ``q`` of what was observed between the two reads."""
    delta = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    if not delta or delta[-1][1] <= 0:
        return float("nan")
    wanted = q * delta[-1][1]
    return 1000 * next(le for le, n in delta if n >= wanted)


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


class PartnerClock:
    """1. Receives partner records in a thread and notes when each arrived."""

    def __init__(self, settings: Settings, topics: list[str]) -> None:
        self.consumer = kafka.consumer(
            settings,
            f"{settings.topic_prefix}latency-{uuid.uuid4().hex[:6]}",
            **{"fetch.wait.max.ms": 10, "fetch.min.bytes": 1},
        )
        self.assigned = threading.Event()
        self.consumer.subscribe(topics, on_assign=lambda _c, ps: self.assigned.set() if ps else None)
        self.arrived: dict[bytes, int] = {}
        self.made: dict[bytes, tuple[int, int]] = {}  # key -> (CreateTime ms, wall ns on arrival)
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="partner-clock", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # poll() returns as soon as a record is there (consume(n) would wait to fill n).
        while not self.stopping:
            m = self.consumer.poll(0.05)
            if m is None or m.error() is not None:
                continue
            key = m.key()
            if key is not None and key not in self.arrived:
                self.arrived[key] = time.monotonic_ns()
                self.made[key] = (m.timestamp()[1], time.time_ns())

    def count(self) -> int:
        return len(self.arrived)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(5)
        self.consumer.close()


class SteadyPublisher:
    """3. Produces events at a steady rate and notes each one's publish time."""

    def __init__(self, settings: Settings, **overrides: object) -> None:
        self.names = TopicNames(settings.topic_prefix)
        self.producer = kafka.producer(settings, **overrides)
        self.sent: dict[str, int] = {}  # event id -> monotonic ns just before produce
        self.sent_wall: dict[str, int] = {}  # event id -> wall ns just before produce
        self.ends: dict[tuple[str, int], int] = {}
        self.failed: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(err.name())
            return
        tp, offset = position(msg)
        self.ends[tp] = max(self.ends.get(tp, 0), offset + 1)

    def run(self, events: Sequence[Encoded], rate: float) -> float:
        """Publish ``events`` at ``rate`` per second; returns the rate achieved."""
        start = time.perf_counter()
        for k, e in enumerate(events):
            wait = start + k / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self.sent[e.event_id] = time.monotonic_ns()
            self.sent_wall[e.event_id] = time.time_ns()
            while True:
                try:
                    self.producer.produce(
                        self.names.event(e.event_type),
                        key=e.key,
                        value=e.value,
                        headers=list(e.headers),
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self.producer.poll(0.01)
            self.producer.poll(0)
        elapsed = time.perf_counter() - start
        if self.producer.flush(30) or self.failed:
            raise RuntimeError(f"latency events not delivered: {self.failed[:3]}")
        return len(events) / elapsed if elapsed > 0 else float("inf")


def ledger_keys(ledger: Engine) -> Callable[[], dict[bytes, str]]:
    """4. partner record key (disclosure id) -> event id, from the ledger."""

    def resolve() -> dict[bytes, str]:
        with ledger.connect() as conn:
            return {
                d.encode(): e
                for d, e in conn.execute(
                    text("SELECT disclosure_id, event_id FROM ledger_entries WHERE outcome = 'DISCLOSED'")
                )
            }

    return resolve


def measure(
    settings: Settings,
    resolve: Callable[[], dict[bytes, str]],
    partner_topics: list[str],
    events: Sequence[Encoded],
    loads: Sequence[tuple[float, float]],
    warmup: int = 300,
    progress: Callable[[str], None] = print,
    meter: CpuMeter | None = None,
    source: dict[str, object] | None = None,
    ages: Callable[[], Buckets] | None = None,
) -> list[Stage]:
    """Steps 1-4 for ``loads`` as (events/s, seconds); the processor(s) must be running and settled.

    ``meter`` notes the CPU each component used while a load was published and drained;
    ``source`` is librdkafka settings for the publisher only (the source systems' producers);
    ``ages`` reads the processors' accord_record_age_seconds (``record_ages``), before and after each load.
    """
    clock = PartnerClock(settings, partner_topics)
    publisher = SteadyPublisher(settings, **(source or {}))
    try:
        if not clock.assigned.wait(30):
            raise RuntimeError("the partner-side consumer got no partitions within 30 s")
        # 2.
        cursor = 0
        stages: list[tuple[float, float, list[str], dict[str, float], tuple[float, float]]] = []
        plan = [(200.0, warmup / 200.0, True)] + [(load, seconds, False) for load, seconds in loads]
        for load, seconds, is_warmup in plan:
            n = int(load * seconds)
            chunk = events[cursor : cursor + n]
            if len(chunk) < n:
                raise ValueError(f"not enough events for {load:.0f}/s for {seconds:.0f} s: make more")
            cursor += n
            # 3.
            metered = None if is_warmup else meter
            if metered is not None:
                metered.start(time.perf_counter())
            read_ages = None if is_warmup else ages
            aged = read_ages() if read_ages is not None else None
            achieved = publisher.run(chunk, load)
            wait_for_group(settings, settings.processor_group, dict(publisher.ends), timeout=300)
            settle_until = time.monotonic() + 0.5
            last = -1
            while time.monotonic() < settle_until or clock.count() != last:
                last = clock.count()
                time.sleep(0.2)
            cores = metered.stop(time.perf_counter()).cores if metered is not None else {}
            age = (float("nan"), float("nan"))
            if read_ages is not None and aged is not None:
                now = read_ages()
                age = (bucket_quantile(aged, now, 0.50), bucket_quantile(aged, now, 0.99))
            if not is_warmup:
                stages.append((load, achieved, [e.event_id for e in chunk], cores, age))
                progress(
                    f"  {load:,.0f}/s for {seconds:.0f} s published and drained; "
                    f"{clock.count():,} partner records received so far"
                )
        # 4.
        event_of = resolve()
        by_event: dict[str, list[tuple[float, float, float]]] = {}  # (whole, in, out) per partner record
        for key, arrived in clock.arrived.items():
            event_id = event_of.get(key)
            if event_id is not None and event_id in publisher.sent:
                made_ms, arrived_wall = clock.made[key]
                by_event.setdefault(event_id, []).append(
                    (
                        (arrived - publisher.sent[event_id]) / 1e6,
                        made_ms - publisher.sent_wall[event_id] / 1e6,
                        arrived_wall / 1e6 - made_ms,
                    )
                )
        out = []
        for load, achieved, ids, cores, (age_p50, age_p99) in stages:
            parts = [t for i in ids for t in by_event.get(i, ())]
            samples = sorted(t[0] for t in parts)
            out.append(
                Stage(
                    load,
                    achieved,
                    len(ids),
                    len(samples),
                    quantile(samples, 0.50),
                    quantile(samples, 0.99),
                    samples[-1] if samples else float("nan"),
                    cores,
                    quantile(sorted(t[1] for t in parts), 0.99),
                    quantile(sorted(t[2] for t in parts), 0.99),
                    age_p50,
                    age_p99,
                )
            )
        return out
    finally:
        clock.close()


def relay_key(event_id: bytes, i: int) -> bytes:
    """The key of a relayed record: its event id and which of the event's out topics it went to."""
    return event_id + b"|%d" % i


class Relay:
    """The processor's Kafka loop with nothing in it: the latency floor of its settings on this broker.

    A thread consumes from the event topics as the processor does (``consume(batch_size,
    timeout=window)``, the processor's consumer configuration unless ``overrides`` say
    otherwise), produces each record to the topics ``route`` gives for it (its event
    topic and event id), keyed by :func:`relay_key`, flushes, and commits the batch: the
    publish -> partner path without decoding, deciding or a ledger. Routed as a pipeline
    run's ledger disclosed each event, it makes the same records on the same partitions.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Sequence[str],
        route: Callable[[str, bytes], Sequence[str]],
        batch_size: int,
        window_s: float,
        **overrides: object,
    ) -> None:
        self.consumer = kafka.consumer(settings, settings.processor_group, **overrides)
        self.producer = kafka.producer(settings)
        self.assigned = threading.Event()
        self.consumer.subscribe(list(topics), on_assign=lambda _c, ps: self.assigned.set() if ps else None)
        self.route = route
        self.batch_size, self.window_s = batch_size, window_s
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from confluent_kafka import TopicPartition

        while not self.stopping:
            msgs = [m for m in self.consumer.consume(self.batch_size, timeout=self.window_s) if m.error() is None]
            if not msgs:
                continue
            ends: dict[tuple[str, int], int] = {}
            for m in msgs:
                raw = dict(m.headers() or []).get(header.EVENT_ID)
                event_id = raw.encode() if isinstance(raw, str) else raw or b""
                for i, target in enumerate(self.route(m.topic() or "", event_id)):
                    self.producer.produce(target, key=relay_key(event_id, i), value=m.value())
                tp, offset = position(m)
                ends[tp] = max(ends.get(tp, -1), offset + 1)
            self.producer.flush(30)
            self.consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in ends.items()], asynchronous=False)

    def close(self) -> None:
        self.stopping = True
        self.thread.join(10)
        self.consumer.close()
