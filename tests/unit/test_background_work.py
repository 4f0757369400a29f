"""BackgroundWork: ledger-only control-plane work runs only while this worker leads, chunk by chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy.exc import OperationalError

from accord.processor.background import BackgroundWork


class Chunks:
    """Work that has ``n`` chunks waiting; records each call; can run a hook at a given call."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.calls = 0
        self.hooks: dict[int, object] = {}
        self.called = threading.Condition()

    def __call__(self) -> bool:
        with self.called:
            self.calls += 1
            hook = self.hooks.get(self.calls)
            self.called.notify_all()
        if callable(hook):
            hook()
        if self.left > 0:
            self.left -= 1
        return self.left > 0

    def wait_for(self, calls: int, timeout: float = 10.0) -> None:
        with self.called:
            assert self.called.wait_for(lambda: self.calls >= calls, timeout), f"{self.calls} calls, not {calls}"


@contextmanager
def _running(work: Chunks, **kw: float) -> Iterator[BackgroundWork]:
    bg = BackgroundWork("test_work", kw.pop("interval_s", 0.01), work, **kw)
    bg.start()
    try:
        yield bg
    finally:
        bg.stop(timeout_s=5)


def test_it_does_nothing_until_the_loop_says_this_worker_leads() -> None:
    work = Chunks(3)
    with _running(work) as bg:
        time.sleep(0.2)  # twenty intervals
        assert work.calls == 0
        bg.lead(True)
        work.wait_for(3)  # all three chunks, one after another
    assert work.left == 0


def test_losing_the_lease_stops_it_after_the_chunk_in_hand() -> None:
    work = Chunks(100)
    with _running(work, interval_s=3600) as bg:  # no second run but the one that lead() wakes
        work.hooks[3] = lambda: bg.lead(False)
        bg.lead(True)
        work.wait_for(3)
        time.sleep(0.2)
        assert work.calls == 3, "it went on after the lease was lost"
        bg.lead(True)  # leading again: it resumes at once, not after the interval
        work.wait_for(10)


def test_an_outage_is_waited_out_and_the_work_resumes() -> None:
    work = Chunks(2)

    def outage() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    work.hooks[1] = outage
    with _running(work, max_backoff_s=0.05) as bg:
        bg.lead(True)
        work.wait_for(3)  # the failed call, then both chunks
    assert work.left == 0


def test_stop_ends_the_thread_between_chunks() -> None:
    work = Chunks(1_000_000)
    with _running(work, busy=0.5) as bg:
        bg.lead(True)
        work.wait_for(5)
    assert bg._thread is not None and not bg._thread.is_alive()
    assert work.left > 0, "it ran to the end instead of stopping"


@pytest.mark.parametrize("busy", [0.0, -0.5, 1.5])
def test_busy_is_a_share_of_the_time(busy: float) -> None:
    with pytest.raises(ValueError, match="busy"):
        BackgroundWork("test_work", 1.0, lambda: False, busy=busy)
