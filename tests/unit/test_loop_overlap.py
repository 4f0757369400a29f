"""The loop's overlap of one batch's broker wait with the next batch's decisions, on fakes.

The order is the invariants' (accord/processor/loop.py, a and b): a batch is sent (ledger,
then produce) only after the batch before it was settled (the broker took it) and its
offsets committed; offsets are committed only for a settled batch; and a batch in flight is
settled before the control plane works, before partitions are given up and before the loop
stops. A failure to settle does the batch again from its records. Each test reads the
sequence of calls the fakes saw, so any step out of its place fails it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from accord.processor.handler import BatchReport, DeadLetter, Inbound, Prepared, Sending
from accord.processor.health import Health
from accord.processor.loop import SharingLoop
from accord.processor.outage import Outage
from bus.topics import TopicNames

NAMES = TopicNames("p.")
TOPIC = NAMES.event("custody")


class Record:
    """What consume() returns, as much of confluent_kafka.Message as the loop reads."""

    def __init__(self, offset: int, topic: str = TOPIC) -> None:
        self._offset, self._topic = offset, topic

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"k"

    def value(self) -> bytes:
        return b"v"

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)  # TIMESTAMP_NOT_AVAILABLE


class Consumer:
    """Hands out scripted batches: poll() the first record, consume() the rest; None once between batches."""

    def __init__(self, calls: list[str], batches: Iterable[Sequence[int] | None]) -> None:
        self.calls = calls
        self.rounds = [None if b is None else [Record(o) for o in b] for b in batches]
        self.current: list[Record] = []

    def poll(self, _timeout: float) -> Record | None:
        if not self.rounds:
            return None
        batch = self.rounds.pop(0)
        if batch is None:
            return None
        self.current = batch[1:]
        return batch[0]

    def consume(self, _n: int, timeout: float = 0) -> list[Record]:
        out, self.current = self.current, []
        return out

    def commit(self, offsets: list[TopicPartition], asynchronous: bool = True) -> None:
        self.calls.append(f"commit {max(o.offset for o in offsets)}" + ("" if asynchronous else " waiting"))

    def subscribe(self, _topics: list[str], **_kw: Any) -> None:
        pass

    def assignment(self) -> list[TopicPartition]:
        return []

    def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        return parts


class Agreements:
    def by_key(self) -> dict[str, object]:
        return {}


class Feed:
    agreements = Agreements()

    def poll(self) -> int:
        return 0

    def catch_up(self, _timeout_s: float) -> int:
        return 0

    def close(self) -> None:
        pass


def _name(batch: Sequence[Inbound]) -> str:
    first, last = batch[0].offset, batch[-1].offset
    return f"{first}-{last}" if last != first else str(first)


class Handler:
    """Records each call by its batch's offsets; fails where a test asks it to."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls
        self.fail_settle: set[str] = set()
        self.fail_prepare: set[str] = set()
        self.batch_of: dict[int, str] = {}
        self.while_settling: list[Callable[[], object]] = []  # what happens while the broker confirms

    def prepare(self, batch: Sequence[Inbound]) -> Prepared:
        name = _name(batch)
        self.calls.append(f"prepare {name}")
        if name in self.fail_prepare:
            self.fail_prepare.discard(name)
            raise Outage("database", "cut")
        report = BatchReport(events=len(batch))
        self.batch_of[id(report)] = name  # the report travels through send and settle: it names the batch
        return Prepared(report, {}, [], [], [], None)  # type: ignore[arg-type]  # no replay view needed

    def send(self, prepared: Prepared) -> Sending:
        self.calls.append(f"send {self.batch_of[id(prepared.report)]}")
        return Sending(prepared.report, [], [])

    def settle(self, sending: Sending) -> BatchReport:
        name = self.batch_of[id(sending.report)]
        self.calls.append(f"settle {name}")
        for happen in self.while_settling:
            happen()
        if name in self.fail_settle:
            self.fail_settle.discard(name)
            raise Outage("broker", "not acknowledged")
        return sending.report

    def handle(self, batch: Sequence[Inbound]) -> BatchReport:
        self.calls.append(f"handle {_name(batch)}")
        return BatchReport(events=len(batch))

    def dead_letters(self, dead: Iterable[DeadLetter]) -> None:
        pass


class AtOnce(Executor):
    """Runs each send as it is handed over, so a test reads the calls in one fixed order."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        done: Future[Any] = Future()
        try:
            done.set_result(fn(*args, **kwargs))
        except Exception as exc:
            done.set_exception(exc)
        return done


def _loop(
    batches: Iterable[Sequence[int] | None], handler: Handler | None = None, **kw: Any
) -> tuple[SharingLoop, Handler, list[str]]:
    calls: list[str] = [] if handler is None else handler.calls
    handler = handler or Handler(calls)
    kw.setdefault("sender", AtOnce())
    loop = SharingLoop(
        Consumer(calls, batches),  # type: ignore[arg-type]
        Feed(),  # type: ignore[arg-type]  # the loop reads only by_key() of its agreements
        handler,
        NAMES,
        Health(),
        batch_size=10,
        max_backoff_s=0.01,
        lag_interval_s=3600,
        **kw,
    )
    loop.start()  # the feed caught up: until then every batch is done whole
    return loop, handler, calls


def _passes(loop: SharingLoop, n: int) -> None:
    for _ in range(n):
        loop.run_once()


def test_the_next_batch_is_decided_before_this_one_settles_and_sent_only_after_its_commit() -> None:
    loop, _, calls = _loop([[0, 1, 2], [3, 4], [5]])
    _passes(loop, 4)
    assert calls == [
        "prepare 0-2",
        "send 0-2",
        "prepare 3-4",  # decided while the broker confirms 0-2
        "settle 0-2",
        "commit 3",
        "send 3-4",
        "prepare 5",
        "settle 3-4",
        "commit 5",
        "send 5",
        "settle 5",  # nothing more waiting: settled at once
        "commit 6",
    ]


def test_without_overlap_each_batch_is_done_whole() -> None:
    loop, _, calls = _loop([[0, 1], [2]], overlap=False)
    _passes(loop, 2)
    assert calls == ["handle 0-1", "commit 2", "handle 2", "commit 3"]


def test_a_batch_that_fails_to_settle_is_done_again_before_the_next_is_sent() -> None:
    loop, handler, calls = _loop([[0, 1], [2, 3]])
    handler.fail_settle.add("0-1")
    _passes(loop, 3)
    assert calls == [
        "prepare 0-1",
        "send 0-1",
        "prepare 2-3",
        "settle 0-1",  # the broker did not take it: nothing committed
        "handle 0-1",  # done again (the ledger replays it), then committed
        "commit 2",
        "send 2-3",
        "settle 2-3",
        "commit 4",
    ]


def test_a_batch_that_cannot_be_decided_yet_waits_after_the_one_in_flight_is_committed() -> None:
    loop, handler, calls = _loop([[0], [1, 2]])
    handler.fail_prepare.add("1-2")
    _passes(loop, 2)
    assert calls == [
        "prepare 0",
        "send 0",
        "prepare 1-2",  # the database is cut
        "settle 0",
        "commit 1",
        "handle 1-2",  # the careful way: waits for the outage, finds a bad record
        "commit 3",
    ]


def test_the_control_plane_runs_only_with_nothing_in_flight() -> None:
    calls: list[str] = []
    loop, _, _ = _loop([[0, 1], [2]], Handler(calls), timers=[("sweep", 0.0, lambda: calls.append("sweep"))])
    _passes(loop, 2)
    assert calls == [
        "prepare 0-1",
        "send 0-1",
        "settle 0-1",  # due: settled first, so a retraction follows its disclosure
        "commit 2",
        "sweep",
        "prepare 2",
        "send 2",
        "settle 2",
        "commit 3",
        "sweep",
    ]


def test_a_timer_with_nothing_to_do_leaves_the_batch_in_flight_alone() -> None:
    ready: list[bool] = [False]
    calls: list[str] = []
    timer = ("notices", 0.0, lambda: calls.append("notices"), lambda: ready[0])
    loop, _, _ = _loop([[0, 1], [2], [3]], Handler(calls), timers=[timer])
    for i in range(3):
        ready[0] = i == 1  # notices are ready after the second batch only
        loop.run_once()
    assert calls == [
        "prepare 0-1",
        "send 0-1",
        "prepare 2",  # nothing to send: batch 0-1 stays in flight while 2 is decided
        "settle 0-1",
        "commit 2",
        "send 2",
        "settle 2",  # notices ready: settled first, so a retraction follows its disclosure
        "commit 3",
        "notices",
        "prepare 3",
        "send 3",
    ]


@pytest.mark.parametrize("how", ["stop", "revoke"])
def test_a_stop_or_a_rebalance_settles_and_commits_what_is_in_flight(how: str) -> None:
    loop, _, calls = _loop([[0, 1], [2]])
    loop.run_once()
    assert calls[-1] == "send 0-1"
    if how == "stop":
        loop.stopping = True
        loop.run()
    else:
        loop.on_revoke(loop.consumer, [TopicPartition(TOPIC, 0)])
    # Settled, committed; then committed again, waiting for the answer, before it goes.
    assert calls[-3:] == ["settle 0-1", "commit 2", "commit 2 waiting"]


def test_a_rebalance_that_cannot_settle_leaves_the_batch_uncommitted_for_replay() -> None:
    loop, handler, calls = _loop([[0, 1]])
    loop.run_once()
    handler.fail_settle.add("0-1")
    loop.on_revoke(loop.consumer, [TopicPartition(TOPIC, 0)])
    assert calls == ["prepare 0-1", "send 0-1", "settle 0-1"]  # no commit, no retry while rebalancing


def test_a_stop_commits_every_partition_it_committed_again_waiting() -> None:
    loop, _, calls = _loop([[0, 1], None, [2]])
    for _ in range(3):
        loop.run_once()
    loop.stopping = True
    loop.run()
    assert [c for c in calls if c.startswith("commit")] == ["commit 2", "commit 3", "commit 3 waiting"]


def test_a_batch_decided_before_a_rebalance_is_not_sent_for_partitions_gone_meanwhile() -> None:
    loop, handler, calls = _loop([[0, 1], [2, 3]])
    loop.run_once()
    handler.while_settling.append(lambda: loop.moved.add((TOPIC, 0)))  # partition 0 moves meanwhile
    loop.run_once()
    # 2-3 was decided, but its partition went while 0-1 settled: its new owner reads it.
    assert calls == ["prepare 0-1", "send 0-1", "prepare 2-3", "settle 0-1", "commit 2"]


class SlowSender(Handler):
    """A send that takes its time (a ledger append waiting on PostgreSQL): it ends only once the
    next batch has been prepared, or after 2 s ("alone": nothing was prepared meanwhile)."""

    def __init__(self, calls: list[str]) -> None:
        super().__init__(calls)
        self.prepares = 0
        self.index: dict[str, int] = {}
        self.changed = threading.Condition()

    def prepare(self, batch: Sequence[Inbound]) -> Prepared:
        prepared = super().prepare(batch)
        with self.changed:
            self.prepares += 1
            self.index[_name(batch)] = self.prepares
            self.changed.notify_all()
        return prepared

    def send(self, prepared: Prepared) -> Sending:
        mine = self.index[self.batch_of[id(prepared.report)]]
        with self.changed:
            if not self.changed.wait_for(lambda: self.prepares > mine, timeout=2):
                self.calls.append("alone")
        return super().send(prepared)


def test_the_sender_thread_appends_and_produces_a_batch_while_the_next_one_is_prepared() -> None:
    calls: list[str] = []
    loop, _, _ = _loop([[0, 1, 2], [3, 4], [5]], SlowSender(calls), sender=None)  # the real sender thread
    try:
        _passes(loop, 4)
    finally:
        loop.close(leave_group=False)
    # Each send ended only after the next batch was prepared, so they ran at once; and the next
    # was sent only once the one before had settled and its offsets were committed.
    assert calls == [
        "prepare 0-2",
        "prepare 3-4",
        "send 0-2",
        "settle 0-2",
        "commit 3",
        "prepare 5",
        "send 3-4",
        "settle 3-4",
        "commit 5",
        "alone",  # nothing more to prepare: it waited its 2 s, and still settled before the commit
        "send 5",
        "settle 5",
        "commit 6",
    ]
