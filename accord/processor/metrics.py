"""The processor's Prometheus metrics: one registry per processor, served on its health port.

Every metric is listed, with its labels and an example alert, in docs/metrics.md. Why
it is built this way:

- one :class:`ProcessorMetrics` (and one ``CollectorRegistry``) per processor, not
  prometheus-client's global registry: tests run several loops in one process, and
  each must count only its own;
- the hot path counts per batch (``Counter.inc(n)`` once per label set), never per
  event in a Python loop of its own;
- what only the control-plane worker knows (retraction sweep, checkpoints) is exported
  by the worker that holds the control-plane lease, and by no other, so an alert over
  several workers sees one current value, never a stale one from a former holder;
- consumer lag is computed from the high watermark the consumer saw in fetch responses
  (``get_watermark_offsets(cached=True)``), never from ListOffsets, which the embedded
  broker answers wrongly;
- labels never carry personal data: event types, outcomes, recipients, agreement
  keys, error kinds, topic names and partitions only.
"""

from __future__ import annotations

import math
import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from accord.processor.health import Health

# Seconds: a batch takes milliseconds to seconds (a flush may wait up to 30 s).
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RECORDS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000)
# Seconds a record waited before the processor took it: milliseconds when it keeps up, hours behind a backlog.
# Finer from 50 ms to 1 s, where a stream that keeps up sits (and where a latency promise is kept or broken).
_AGE = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.75, 1.0),
    *(2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
STATES = ("starting", "running", "waiting", "stopped")
# The steps of one batch, in order (accord_batch_stage_seconds).
STAGES = ("read", "look_up", "decide", "append", "deliver", "commit")


class ControlPlane:
    """What the control plane last saw; read at scrape time, written by the loop's thread.

    Each field is replaced whole (one attribute store), so a scrape never sees half an update.
    """

    def __init__(self) -> None:
        self.leader = True  # a loop without a lease runs the control plane alone
        self.sweep_at: float | None = None  # wall time of the last completed sweep
        self.sweep_lag_s = 0.0
        self.sweep_pending: Mapping[str, int] = {}
        self.checkpoint_at: float | None = None  # wall time the newest checkpoint was made
        self.checkpoint_size: int | None = None
        self.checkpoint_pending: int | None = None


class _Collector(Collector):
    """The gauges read from state at scrape time: lag, health, the control plane."""

    def __init__(self, metrics: ProcessorMetrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        lag = GaugeMetricFamily(
            "accord_consumer_lag_records",
            "Records on a partition not yet processed: the high watermark from the last fetch response minus "
            "the processor's position",
            labels=["topic", "partition"],
        )
        for (topic, partition), n in sorted(m.lag.items()):
            lag.add_metric([topic, str(partition)], n)
        yield lag
        if m.health is not None:
            state = m.health.snapshot()["state"]
            g = GaugeMetricFamily(
                "accord_processor_state", "1 for the processor's current state, 0 for the others", labels=["state"]
            )
            for s in STATES:
                g.add_metric([s], 1.0 if s == state else 0.0)
            yield g
        cp = m.control
        yield GaugeMetricFamily(
            "accord_control_plane_leader",
            "1 while this worker holds the control-plane lease (runs the retraction sweep and checkpoints)",
            value=1.0 if cp.leader else 0.0,
        )
        if not cp.leader:
            return
        if cp.sweep_at is not None:
            yield GaugeMetricFamily(
                "accord_retraction_sweep_lag_seconds",
                "Age of the oldest consent change the retraction sweep has not handled yet (0 when caught up)",
                value=cp.sweep_lag_s,
            )
            pending = GaugeMetricFamily(
                "accord_retraction_sweep_pending",
                "Work the retraction sweep has left, by step: consent records (consent), ledger entries "
                "(agreements, notices)",
                labels=["step"],
            )
            for step, n in sorted(cp.sweep_pending.items()):
                pending.add_metric([step], n)
            yield pending
            yield GaugeMetricFamily(
                "accord_retraction_sweep_last_run_timestamp_seconds",
                "Unix time the last retraction sweep completed",
                value=cp.sweep_at,
            )
        if cp.checkpoint_pending is not None:
            yield GaugeMetricFamily(
                "accord_checkpoint_age_seconds",
                "Seconds since the newest signed ledger checkpoint was made (NaN: none yet)",
                value=math.nan if cp.checkpoint_at is None else max(time.time() - cp.checkpoint_at, 0.0),
            )
            yield GaugeMetricFamily(
                "accord_checkpoint_tree_size",
                "Ledger entries covered by the newest signed checkpoint",
                value=float(cp.checkpoint_size or 0),
            )
            yield GaugeMetricFamily(
                "accord_checkpoint_pending_entries",
                "Ledger entries not yet covered by a signed checkpoint",
                value=float(cp.checkpoint_pending),
            )


class ProcessorMetrics:
    """Every metric one processor exports, in its own registry (see the module docstring)."""

    def __init__(self, health: Health | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health = health
        self.lag: Mapping[tuple[str, int], int] = {}
        self.control = ControlPlane()
        r = self.registry
        self.events = Counter(
            "accord_events_consumed",
            "Event records the processor took from its event topics and finished (decided or dead-lettered)",
            ["event_type"],
            registry=r,
        )
        self.decisions = Counter(
            "accord_decisions",
            "Decisions this process appended to the ledger (new entries only: DISCLOSED, WITHHELD, NOT_COVERED)",
            ["outcome", "recipient", "agreement"],
            registry=r,
        )
        self.retractions = Counter(
            "accord_retractions",
            "RETRACTED entries this process appended to the ledger (withdrawn consent, an ended agreement)",
            ["recipient", "agreement"],
            registry=r,
        )
        self.receipts = Counter(
            "accord_receipts",
            "Partners' receipts taken from the receipts topic: recorded (a new RECEIVED entry), duplicate, refused",
            ["result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "accord_dead_letters",
            "Records written to the dead-letter topic, by the kind of problem (its accord.error header)",
            ["reason"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "accord_batch_seconds",
            "Time to handle one batch and commit its offsets (decide, ledger, deliver, dead letters)",
            buckets=_SECONDS,
            registry=r,
        )
        self.batch_records = Histogram(
            "accord_batch_records", "Records in a handled batch", buckets=_RECORDS, registry=r
        )
        self.record_age = Histogram(
            "accord_record_age_seconds",
            "Age of each batch's oldest record when the processor took it from the consumer: now minus the "
            "record's timestamp (set by its producer's clock)",
            buckets=_AGE,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "accord_batch_stage_seconds",
            "Time of one step of a batch: read (decode, validate), look_up (the consent history; replays "
            "are found in the append), decide, append (the ledger transaction), deliver (produce and wait for the "
            "broker), commit (the offsets)",
            ["stage"],
            buckets=_SECONDS,
            registry=r,
        )
        # Resolved once: the hot path observes each stage per batch without a label look-up.
        self.stage = {name: self.stage_seconds.labels(name) for name in STAGES}
        self.waits = Counter(
            "accord_outage_waits",
            "Waits for an unreachable service (each backoff of the loop), by service",
            ["service"],
            registry=r,
        )
        self.agreements = Counter(
            "accord_agreement_versions",
            "Agreement versions read from the agreements feed: applied, or refused (bad or conflicting)",
            ["result"],
            registry=r,
        )
        r.register(_Collector(self))

    # -- what the loop, the handler and the control plane call ---------------------

    def consumed(self, topic_counts: Mapping[str, int], event_type_of: Mapping[str, str]) -> None:
        """One handled batch's event records, counted per topic (``event_type_of`` maps each topic)."""
        for topic, n in topic_counts.items():
            event_type = event_type_of.get(topic)
            if event_type is not None:
                self.events.labels(event_type).inc(n)

    def decided(self, tally: Tally[tuple[str, str, str, int]]) -> None:
        """(outcome, recipient, agreement id, version) -> new ledger entries of one batch."""
        for (outcome, recipient, agreement_id, version), n in tally.items():
            self.decisions.labels(outcome, recipient, agreement_label(agreement_id, version)).inc(n)

    def retracted(self, tally: Tally[tuple[str, str, int]]) -> None:
        """(recipient, agreement id, version) -> new RETRACTED entries of one sweep step."""
        for (recipient, agreement_id, version), n in tally.items():
            self.retractions.labels(recipient, agreement_label(agreement_id, version)).inc(n)

    def dead_lettered(self, reasons: Iterable[str]) -> None:
        for reason, n in Tally(reasons).items():
            self.dead_letters.labels(reason).inc(n)

    def set_lag(self, lag: Mapping[tuple[str, int], int]) -> None:
        self.lag = dict(lag)  # replaced whole: a scrape reads one snapshot


def agreement_label(agreement_id: str | None, version: int | None) -> str:
    """An entry's agreement as a label: ``id@vN``, or "" for an entry under none (NOT_COVERED)."""
    return f"{agreement_id}@v{version}" if agreement_id else ""


__all__ = ["STAGES", "STATES", "ControlPlane", "ProcessorMetrics", "agreement_label"]
