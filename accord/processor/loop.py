"""The sharing processor: a confluent-kafka batch loop, with the control plane beside it.

One pass of the loop (``SharingLoop.run_once``), in this order:

1. agreements: apply what is new on the feed; after the start and after every
   rebalance, read it to its end before deciding anything (I9);
2. consume: wait up to ``batch_window_s`` for the first record, then take whatever else
   has already arrived, up to ``batch_size`` records (events and receipts). A batch is
   never held back to fill up, so a quiet stream is not delayed by the window;
3. handle the batch (``BatchHandler``: read, look up, decide; ledger; deliver; dead letters);
4. commit the batch's offsets;
5. run the control plane when due: the retraction sweep and ledger checkpoints, in the
   one worker that holds the control-plane lease (accord/processor/control_lease.py). A timer
   whose work returns True has more waiting and runs again on the next pass, so a
   large job (sending a suspended agreement's retraction notices) goes in bounded chunks
   between batches. Work that writes only the ledger (retracting what an ended agreement
   owes) runs on a thread of its own while this worker holds the lease
   (accord/processor/background.py); the loop tells it at each tick.

Steps 3 and 4 overlap with the next batch (``_complete``): while batch N is appended to
the ledger and produced (``send``, on one sender thread) and the broker confirms it, the
loop takes batch N+1 and reads, looks up and decides it (``prepare``, which writes
nothing), then

a. waits for batch N's send to end and the broker to take it (``settle``), and commits
   N's offsets;
b. hands N+1 to the sender thread: append its decisions to the ledger, then produce its
   disclosures (``send``);

and N+1 is settled the same way by the batch after it, or at once when nothing more is
waiting. The sender thread mostly waits on PostgreSQL and the broker, which frees the
GIL for ``prepare``. So nothing is produced before its ledger entry is committed (I1),
no offset is committed before the broker took its batch's records (I7), and batches
reach the broker in order. A batch is settled before anything else happens: the control plane's work (a
retraction must follow its disclosure onto the partner's topic), a rebalance, a stop,
a batch of receipts; and a batch that fails to settle is done again from its records,
which the ledger turns into a replay (I8).

After each pass the loop refreshes what the health port reports (accord/processor/health.py,
accord/processor/metrics.py): consumer lag per partition, at most every ``lag_interval_s``,
from the high watermark of the consumer's last fetch response; and, when no batch has
proved the services reachable for ``probe_interval_s``, it asks each service once (the
``probes``), so ``/readyz`` tells an outage, and its end, even when no record arrives.

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

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import attrgetter
from typing import Protocol, TypeVar

import structlog
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, KafkaException, Message, TopicPartition

from accord.processor.agreement_feed import AgreementConflict, AgreementSet
from accord.processor.background import BackgroundWork
from accord.processor.control_lease import Lease
from accord.processor.handler import BatchReport, DeadLetter, Inbound, Prepared, Sending
from accord.processor.health import Health
from accord.processor.metrics import ProcessorMetrics
from accord.processor.outage import backoff, outage_of, safe_detail
from accord.processor.receipts import ReceiptReport
from bus.topics import EVENT_TYPES, TopicNames

log = structlog.get_logger("accord.processor")

# Commit failures that mean "the partitions moved": the new owner replays, nothing to wait for.
_MOVED_ERRORS = frozenset(
    getattr(KafkaError, name)
    for name in (
        "ILLEGAL_GENERATION",
        "UNKNOWN_MEMBER_ID",
        "REBALANCE_IN_PROGRESS",
        "_ASSIGNMENT_LOST",
        "FENCED_INSTANCE_ID",
        "_NO_OFFSET",
    )
    if hasattr(KafkaError, name)
)


T = TypeVar("T")
_TOPIC = attrgetter("topic")


# The loop's collaborators, as it uses them: app.py wires the real ones (BatchHandler,
# ReceiptRecorder, FeedFollower, the sweeper's and checkpointer's ticks); a test can give its own.


class Handler(Protocol):
    """Step 3 for event records: decide, ledger, deliver (BatchHandler); and the dead-letter topic."""

    def handle(self, batch: Sequence[Inbound]) -> BatchReport: ...

    def prepare(self, batch: Sequence[Inbound]) -> Prepared: ...

    def send(self, prepared: Prepared) -> Sending: ...

    def settle(self, sending: Sending) -> BatchReport: ...

    def dead_letters(self, dead: Iterable[DeadLetter]) -> None: ...


class Receipts(Protocol):
    """Step 3 for receipt records: check and record them (ReceiptRecorder); the loop dead-letters the refused."""

    def handle(self, batch: Sequence[Inbound]) -> ReceiptReport: ...


class Feed(Protocol):
    """The agreements feed (FeedFollower): what is new, or everything up to its end (I9)."""

    agreements: AgreementSet

    def poll(self) -> int: ...

    def catch_up(self, timeout_s: float) -> int: ...

    def close(self) -> None: ...


# A control-plane timer: (name, interval in seconds, work), and optionally a question asked
# once the interval has passed: is there anything to do? (No: the batch in flight is not
# settled for it.) Work that returns True has more waiting and runs again on the next
# pass; anything else waits for the next interval.
Timer = tuple[str, float, Callable[[], object]] | tuple[str, float, Callable[[], object], Callable[[], bool]]


@dataclass(frozen=True)
class _Pending:
    """A batch sent (in the ledger, its disclosures produced) but not yet settled and committed."""

    batch: list[Inbound]
    sending: Future[Sending]  # send() on the sender thread: the ledger append, then the produce
    started: float  # perf_counter when the batch began


@dataclass
class _TimerState:
    name: str
    interval_s: float
    work: Callable[[], object]
    wanted: Callable[[], bool] | None = None  # None: always, once the interval has passed
    last: float = 0.0  # monotonic time of the last run; 0.0: due at the next pass


def _inbound(msg: Message) -> Inbound:
    """A consumed record (one without an error, so its topic, partition and offset are set)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None
    return Inbound(topic, partition, offset, msg.key(), msg.value())


class SharingLoop:
    """The processor's loop: owns the consumer, the feed, the waits and the control-plane timers."""

    def __init__(
        self,
        consumer: Consumer,
        feed: Feed,
        handler: Handler,
        names: TopicNames,
        health: Health,
        *,
        batch_size: int = 500,
        batch_window_s: float = 0.2,
        receipts: Receipts | None = None,
        timers: Sequence[Timer] = (),
        background: Sequence[BackgroundWork] = (),
        lease: Lease | None = None,
        feed_timeout_s: float = 10.0,
        max_backoff_s: float = 10.0,
        metrics: ProcessorMetrics | None = None,
        probes: Mapping[str, Callable[[], object]] | None = None,
        probe_interval_s: float = 2.0,
        lag_interval_s: float = 1.0,
        overlap: bool = True,
        sender: Executor | None = None,
        lease_check_s: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.feed = feed
        self.handler = handler
        self.names = names
        self.health = health
        self.batch_size = batch_size
        self.batch_window_s = batch_window_s
        self.receipts = receipts
        self.timers = [_TimerState(*timer) for timer in timers]
        self.background = list(background)  # ledger-only control-plane work, on threads of its own
        self.lease = lease  # None: this loop runs the control plane alone (tests, one worker)
        self.lease_check_s = lease_check_s
        self._leader = False  # what the lease last said
        self._lease_at = -lease_check_s  # monotonic time it was last asked (never yet)
        self.feed_timeout_s = feed_timeout_s
        self.max_backoff_s = max_backoff_s
        self.metrics = metrics if metrics is not None else ProcessorMetrics(health)
        # A worker with a lease leads only once it holds it: until its first tick it reports 0,
        # so N starting workers never all claim the control plane.
        self.metrics.control.leader = lease is None
        self.probes = dict(probes or {})  # service -> a check that raises while it is unreachable
        self.probe_interval_s = probe_interval_s
        self.lag_interval_s = lag_interval_s
        self.overlap = overlap  # decide the next batch while the broker confirms this one (the module's a, b)
        self._stopping = False
        self.feed_stale = True
        self.moved: set[tuple[str, int]] = set()
        self._event_types = {names.event(t): t for t in EVENT_TYPES}
        self._committed: dict[tuple[str, int], int] = {}  # the offsets this loop committed
        self._proven_at = time.monotonic()  # the services last answered (a batch, or the probes)
        self._lag_at = 0.0
        self._pending: _Pending | None = None
        # One thread, so batches reach the ledger and the broker in order; its work is always
        # joined (settled) before the next batch is sent, before the control plane, a rebalance or a stop.
        # (A test may give an executor that runs send at once, to read the calls in a fixed order.)
        self._sender = sender or ThreadPoolExecutor(max_workers=1, thread_name_prefix="accord-send")

    @property
    def stopping(self) -> bool:
        return self._stopping

    @stopping.setter
    def stopping(self, value: bool) -> None:
        # Set from a signal handler: a plain store, no lock (Health's lock may be held right now).
        self._stopping = value
        self.health.stop_requested = value

    # confluent-kafka calls these from inside consume()
    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.moved.update((p.topic, p.partition) for p in partitions)
        self._forget(partitions)
        self.feed_stale = True
        log.info("partitions_assigned", partitions=len(partitions))

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._settle_quietly("partitions_revoked")  # commit what is done while the partitions are ours
        self._commit_all((p.topic, p.partition) for p in partitions)
        self.moved.update((p.topic, p.partition) for p in partitions)
        self._forget(partitions)
        log.info("partitions_revoked", partitions=len(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Another worker may have committed these meanwhile: our own last commit no longer tells their lag."""
        for p in partitions:
            self._committed.pop((p.topic, p.partition), None)

    def topics(self) -> list[str]:
        return [self.names.event(t) for t in EVENT_TYPES] + [self.names.receipts]

    def start(self) -> None:
        """Catch up with the agreements feed before subscribing: no decision before it (I9)."""
        self._catch_up()
        self.consumer.subscribe(self.topics(), on_assign=self.on_assign, on_revoke=self.on_revoke)
        for work in self.background:
            work.start()  # idle until the first tick finds this worker holds the lease
        self.health.running()

    def run(self) -> None:
        try:
            self.start()
            while not self.stopping:
                self.run_once()
        finally:
            self._settle_quietly("stopping")
            self._commit_all()
            self.health.stopped()

    def run_once(self) -> BatchReport | None:
        self.health.beat()
        # 1. agreements
        self._guarded(self.feed.poll)
        # 2. consume; a batch in flight is settled at once if nothing else is waiting
        report = None
        first = self.consumer.poll(0 if self._pending is not None else self.batch_window_s)
        if first is None and self._pending is not None:
            report = self._settle_pending()
            first = self.consumer.poll(self.batch_window_s)  # returns at the first record
        msgs = [] if first is None else [first]
        if first is not None and self.batch_size > 1:
            msgs += self.consumer.consume(self.batch_size - 1, timeout=0)
        self.moved.clear()  # what consume returned belongs to the assignment it ends with
        batch: list[Inbound] = []
        oldest_ms = 0  # the batch's oldest record timestamp, ms since the epoch (0: none known)
        for m in msgs:
            err = m.error()
            if err is None:
                batch.append(_inbound(m))
                kind, ms = m.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE and (ms < oldest_ms or not oldest_ms):
                    oldest_ms = ms
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer_error", error=err.name())
                if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT):
                    self.health.waiting("broker", err.name())
        if oldest_ms:
            self.metrics.record_age.observe(max(time.time() - oldest_ms / 1000, 0.0))
        if batch:
            # 3. handle, 4. commit: retried through outages until done or dropped by a rebalance
            report = self._complete(batch) or report
        # 5. control plane
        self._tick()
        self._refresh_lag()
        if self.probes and time.monotonic() - self._proven_at >= self.probe_interval_s:
            self._probe()
        return report

    def _complete(self, batch: list[Inbound]) -> BatchReport | None:
        """Steps 3 and 4 overlapped with the previous batch (the module's a and b); the report of the one settled.

        Anything unusual (receipts, a failure of any kind, the feed to catch up) settles
        what is in flight and does the batch the careful way, ``_complete_now``.
        """
        if not self.overlap or self.feed_stale or any(m.topic == self.names.receipts for m in batch):
            report = self._settle_pending()
            return self._complete_now(batch) or report
        started = time.perf_counter()
        try:
            prepared = self.handler.prepare(batch)
        except Exception:  # noqa: BLE001 - not lost: done again below, where an outage waits and a bad record is found
            report = self._settle_pending()
            return self._complete_now(batch) or report
        # a. the batch before
        report = self._settle_pending()
        if any((m.topic, m.partition) in self.moved for m in batch):
            # A rebalance came while the batch before settled: decide again what is still ours.
            batch = [m for m in batch if (m.topic, m.partition) not in self.moved]
            self.moved.clear()
            return self._complete_now(batch) or report
        # b. this batch, on the sender thread: its ledger append and produce run while this
        # thread takes and prepares the next one (the waits on PostgreSQL leave the GIL free)
        self._pending = _Pending(batch, self._sender.submit(self.handler.send, prepared), started)
        return report

    def _settle_pending(self) -> BatchReport | None:
        """Wait for the broker to take the batch in flight, commit its offsets; do it again if it fails."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        try:
            report = self.handler.settle(pending.sending.result())
            self._finish(pending.batch, report, pending.started)
            return report
        except Exception:  # noqa: BLE001 - send or settle failed: the batch is done again from its records (a replay of what reached the ledger); waits if it is an outage
            return self._complete_now(pending.batch)

    def _settle_quietly(self, why: str) -> None:
        """Settle without waiting for an outage to end (a rebalance, a stop): what fails is replayed later."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            self._finish(pending.batch, self.handler.settle(pending.sending.result()), pending.started)
        except Exception as exc:  # noqa: BLE001 - left uncommitted: its partitions' next owner replays it (I7, I8)
            log.warning("batch_left_for_replay", reason=why, error=type(exc).__name__, records=len(pending.batch))

    def _finish(self, batch: list[Inbound], report: BatchReport, started: float) -> None:
        handled = time.perf_counter()
        self._commit(batch)
        self.metrics.stage["commit"].observe(time.perf_counter() - handled)
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_records.observe(len(batch))
        self.metrics.consumed(Tally(map(_TOPIC, batch)), self._event_types)
        self._proven_at = time.monotonic()
        self.health.running()
        self._log(report)

    def _complete_now(self, batch: list[Inbound]) -> BatchReport | None:
        """Steps 3 and 4 start to finish, retried through outages until done or dropped by a rebalance."""
        attempt = 0
        while batch and not self.stopping:
            try:
                if self.feed_stale:
                    self._catch_up_once()
                started = time.perf_counter()
                report = self._handle(batch)
                self._finish(batch, report, started)
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
        assert self.receipts is not None  # _handle sends receipts here only when there is a recorder
        r = self.receipts.handle(batch)
        self.handler.dead_letters(DeadLetter(msg, error, reason) for msg, error, reason in r.refused)
        counted = self.metrics.receipts
        counted.labels("recorded").inc(r.recorded)
        counted.labels("refused").inc(len(r.refused))
        counted.labels("duplicate").inc(r.receipts - r.recorded - len(r.refused))
        return BatchReport(receipts=r.receipts, dead_letters=len(r.refused))

    def _split(self, batch: list[Inbound], handle: Callable[[list[Inbound]], BatchReport]) -> BatchReport:
        try:
            return handle(batch)
        except Exception as exc:
            if outage_of(exc) is not None:
                raise
            if len(batch) == 1:
                [msg] = batch
                log.error(
                    "record_unprocessable",
                    topic=msg.topic,
                    partition=msg.partition,
                    offset=msg.offset,
                    error=type(exc).__name__,
                )
                self.handler.dead_letters(
                    [DeadLetter(msg, "Unprocessable", f"could not be processed: {type(exc).__name__}")]
                )
                return BatchReport(events=1, dead_letters=1)
            mid = len(batch) // 2
            report = self._split(batch[:mid], handle)
            report.add(self._split(batch[mid:], handle))
            return report

    def _commit(self, batch: Sequence[Inbound]) -> None:
        """Commit a settled batch's offsets without waiting for the answer.

        Safe because offsets only ever move forward past settled records: a commit lost
        with an outage or a crash is covered by the partition's next one, or replayed by
        the next owner (I7, I8). What this loop committed is committed again, waiting,
        before it gives partitions up or stops (``_commit_all``), so a clean handover
        replays nothing.
        """
        ends: dict[tuple[str, int], int] = {}
        for m in batch:
            ends[(m.topic, m.partition)] = max(ends.get((m.topic, m.partition), -1), m.offset + 1)
        self._commit_offsets(ends, asynchronous=True)

    def _commit_all(self, partitions: Iterable[tuple[str, int]] | None = None) -> None:
        """Commit again, waiting, what this loop committed (of ``partitions``, or all); a failure is logged."""
        wanted = (
            self._committed
            if partitions is None
            else {tp: self._committed[tp] for tp in partitions if tp in self._committed}
        )
        if not wanted:
            return
        try:
            self._commit_offsets(dict(wanted), asynchronous=False)
        except Exception as exc:  # noqa: BLE001 - what is not committed is replayed by the next owner (I7, I8)
            log.warning("final_commit_failed", error=type(exc).__name__)

    def _commit_offsets(self, ends: dict[tuple[str, int], int], asynchronous: bool) -> None:
        offsets = [TopicPartition(t, p, o) for (t, p), o in ends.items()]
        try:
            if asynchronous:
                self.consumer.commit(offsets=offsets, asynchronous=True)
            else:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            self._committed.update(ends)
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
        self.metrics.waits.labels(service).inc()
        # Never the exception's own text: it may quote a record's values (I6).
        log.warning(
            "waiting", service=service, error=error, detail=safe_detail(exc), retry_in_s=delay, attempt=attempt + 1
        )
        self._idle(delay)

    def _idle(self, seconds: float) -> None:
        """Sleep while serving the group (heartbeats, rebalances); records fetched meanwhile are read again later."""
        end = time.monotonic() + seconds
        while not self.stopping:
            self.health.beat()
            self._refresh_lag()
            left = end - time.monotonic()
            if left <= 0:
                return
            msgs = self.consumer.consume(self.batch_size, timeout=min(left, 0.5))
            first: dict[tuple[str, int], int] = {}
            for m in msgs:
                if m.error() is None:
                    read = _inbound(m)
                    tp = (read.topic, read.partition)
                    first[tp] = min(first.get(tp, read.offset), read.offset)
            for (topic, partition), offset in first.items():
                try:
                    self.consumer.seek(TopicPartition(topic, partition, offset))
                except KafkaException:
                    pass  # no longer ours: its new owner reads it

    def _tick(self) -> None:
        now = time.monotonic()
        due = [t for t in self.timers if now - t.last >= t.interval_s and (t.wanted is None or t.wanted())]
        if not due:
            return
        # A timer may be due often: the lease is asked at most every lease_check_s.
        if self.lease is None:
            leader = True
        elif now - self._lease_at >= self.lease_check_s:
            leader = self._leader = self._guarded(self.lease.held, name="control_lease") is True
            self._lease_at = now
        else:
            leader = self._leader
        self.metrics.control.leader = leader
        for work in self.background:
            work.lead(leader)
        if not leader:
            for timer in due:
                timer.last = now  # another worker runs them; ask again at the next interval
            return
        self._settle_pending()  # a retraction must reach the partner after the disclosure it retracts
        for timer in due:
            more = self._guarded(timer.work, name=timer.name)
            timer.last = 0.0 if more is True else now

    def _guarded(self, fn: Callable[[], T], name: str = "agreements_feed") -> T | None:
        """Run control-plane work; an outage or a failure is logged and retried on the next tick."""
        try:
            return fn()
        except AgreementConflict:
            raise  # not weather to wait out: this processor's own agreements disagree with the feed, it stops
        except Exception as exc:  # noqa: BLE001 - control-plane work only (no record passes here); logged, retried next tick
            down = outage_of(exc)
            if down is not None:
                self.health.waiting(down, type(exc).__name__)
                log.warning(f"{name}_waiting", service=down, error=type(exc).__name__, detail=safe_detail(exc))
            else:
                log.error(f"{name}_failed", error=type(exc).__name__)
            return None

    def _refresh_lag(self) -> None:
        """Consumer lag per assigned partition: the high watermark of the last fetch response minus our position.

        Never ListOffsets (wrong on the embedded broker): ``cached=True`` reads what fetch
        responses said, without a request. A partition not fetched yet, or with no position
        (nothing read, or committed by this loop since it was assigned), is left out until
        it has both.
        """
        now = time.monotonic()
        if now - self._lag_at < self.lag_interval_s:
            return
        self._lag_at = now
        lag: dict[tuple[str, int], int] = {}
        try:
            for tp in self.consumer.position(self.consumer.assignment()):
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = tp.offset if tp.offset >= 0 else self._committed.get((tp.topic, tp.partition), -1)
                if high >= 0 and position >= 0:
                    lag[(tp.topic, tp.partition)] = max(high - position, 0)
        except (KafkaException, RuntimeError) as exc:
            log.debug("lag_unknown", error=type(exc).__name__)
            return
        self.metrics.set_lag(lag)

    def _probe(self) -> None:
        """Ask each service once; ready again only if they answer and nothing failed meanwhile."""
        asked = time.monotonic()
        for service, check in self.probes.items():
            try:
                check()
            except Exception as exc:  # noqa: BLE001 - a probe's failure is the answer, never a crash
                if self.health.waiting(service, type(exc).__name__):
                    log.warning("waiting", service=service, error=type(exc).__name__, probe=True)
                self._proven_at = asked  # ask again after the interval
                return
        self._proven_at = asked
        if asked - self.health.failed_at >= self.probe_interval_s:
            self.health.running()

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
        self._sender.shutdown(wait=True)
        for work in self.background:
            work.stop()  # before the lease goes: the next holder must not find it still appending
        closers = ([self.consumer.close] if leave_group else []) + [self.feed.close]
        closers += [self.lease.release] if self.lease else []
        for close in closers:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing during an outage must not turn a stop into a crash
                log.warning("close_failed", error=type(exc).__name__)
