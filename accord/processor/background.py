"""Control-plane work that writes only the ledger, on a thread of its own while this worker leads.

Why: retracting a suspended agreement's 100k disclosures reads and appends the ledger for
tens of seconds. As a timer on the loop's thread, every batch of events waited behind a
chunk of it (measured: a stream's p99 went from 30 to about 220 ms while 90k were retracted). Work
that produces nothing has no order to keep with the loop's deliveries, so it can run
beside them: the ledger's writer lock serialises its appends with the batches'.

Only work that produces nothing belongs here. A retraction notice must follow its
disclosure onto the partner's topic, so producing the notices stays on the loop (it
settles its batch in flight first); this thread only reads them from the ledger and
encodes them (accord/processor/sweeper.py).

``BackgroundWork`` runs one piece of work (``work() -> bool``, True while more is
waiting) in this order:

1. wait until the loop says this worker holds the control-plane lease (``lead``), then
   for the interval since the last run (not at all when it has just become the holder:
   whatever the last holder left is waiting), or less if told to stop;
2. run the work once; while it returns True, run it again at once (each run is one
   bounded chunk, so a stop or a lost lease is seen between chunks);
3. an outage of the database or any other failure is logged, and the work waits a
   backoff before it tries again (like the loop's own timers, nothing is lost: the work
   resumes from its cursors in the database).

The loop tells it whether this worker leads at every control-plane tick, and stops it
before it gives the lease up. A worker that lost the lease without noticing may still
finish a chunk; the work is idempotent (stable retraction ids, cursors that only move
forward), as accord/processor/control_lease.py requires of everything the lease guards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from accord.processor.outage import backoff, outage_of, safe_detail

log = structlog.get_logger("accord.processor")


class BackgroundWork:
    """One ledger-only control-plane job on a daemon thread (see the module docstring)."""

    def __init__(
        self,
        name: str,
        interval_s: float,
        work: Callable[[], bool],
        *,
        busy: float = 1.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        if not 0 < busy <= 1:
            raise ValueError(f"busy must be in (0, 1], not {busy}")
        self.name = name
        self.interval_s = interval_s
        self.work = work
        self.busy = busy  # the share of the time it may work while more is waiting; it rests the rest
        self.max_backoff_s = max_backoff_s
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by lead() and stop(), so a wait ends at once
        self._thread: threading.Thread | None = None
        self._now = False  # run without waiting for the interval (set when this worker becomes leader)

    def lead(self, leading: bool) -> None:
        """Whether this worker holds the control-plane lease, as the loop last found it."""
        if leading and not self._leading.is_set():
            self._now = True  # newly leading: what the last holder left is waiting, start at once
            self._leading.set()
            self._wake.set()
        elif not leading:
            self._leading.clear()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"accord-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop after the chunk in hand (its writes committed or rolled back, never half done)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning(f"{self.name}_still_running", waited_s=timeout_s)

    def _sleep(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _run(self) -> None:
        last = 0.0
        failures = 0
        while not self._stop.is_set():
            # 1.
            if not self._leading.is_set():
                self._sleep(self.interval_s)
                continue
            due_in = last + self.interval_s - time.monotonic()
            if due_in > 0 and not self._now:
                self._sleep(due_in)
                continue
            self._now = False
            # 2.
            try:
                while True:
                    began = time.monotonic()
                    if not self.work() or not self._leading.is_set() or self._stop.is_set():
                        break
                    # rest in proportion to the chunk, so the database and the cores are left
                    # to the event stream for the rest of the time (none at busy 1.0)
                    self._stop.wait((time.monotonic() - began) * (1 - self.busy) / self.busy)
                failures = 0
            # 3.
            except Exception as exc:  # noqa: BLE001 - ledger-only control-plane work: logged, resumed from its cursors
                down = outage_of(exc)
                if down is not None:
                    log.warning(f"{self.name}_waiting", service=down, error=type(exc).__name__, detail=safe_detail(exc))
                else:
                    log.error(f"{self.name}_failed", error=type(exc).__name__)
                self._sleep(backoff(failures, self.max_backoff_s))
                failures += 1
            last = time.monotonic()


__all__ = ["BackgroundWork"]
