"""``accord run processor --workers N``: N processor processes in one consumer group.

One CPython process decides at most one core's worth of events; several processes in
the same consumer group share the event partitions exactly as several machines do on
Apache Kafka, and the ledger's writer lock keeps its order and chain whole with any
number of writers. This supervisor is deliberately small:

1. start N children, each a plain ``accord run processor`` (child i's health check, if
   one is configured, listens on ``ACCORD_HEALTH_PORT + i``);
2. wait; a child that dies on its own (a crash, SIGKILL, the OOM killer) is started
   again after a backoff (1 s doubling to 30 s while it keeps dying within a minute),
   and the others never notice beyond a rebalance. A child that exits with 2 refused its
   settings: the same settings would be refused again, so everything stops with 2;
3. on SIGTERM or SIGINT, pass it to every child and wait up to ``stop_timeout_s`` for
   each to finish its batch and close, then SIGKILL what is left.

A supervisor that dies without step 3 (kill -9, the OOM killer) takes its children
with it: each is started with Linux's parent-death signal set to SIGTERM, so it stops
as after step 3 instead of running on unsupervised, where a new supervisor would start
N more beside them and their health ports would answer for it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import structlog

log = structlog.get_logger("accord.workers")

CONFIG_ERROR = 2


@dataclass
class _Child:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float = 0.0
    delay_s: float = 1.0


def _command() -> list[str]:
    return [sys.executable, "-m", "accord.cli", "run", "processor"]


def _env(index: int, health_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env["ACCORD_WORKER_INDEX"] = str(index)
    if health_port:
        env["ACCORD_HEALTH_PORT"] = str(health_port + index)
    return env


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _stop_with(supervisor: int) -> Callable[[], None] | None:
    """A Popen ``preexec_fn``: SIGTERM the child when ``supervisor`` dies (Linux); None where prctl is missing."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)

    def set_parent_death_signal() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before the signal was set: stop now
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


def run_workers(n: int, health_port: int = 0, stop_timeout_s: float = 40.0) -> int:
    """Supervise ``n`` processor processes until told to stop; see the module docstring."""
    children = [_Child(i) for i in range(n)]
    stopping = {"now": False}

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    die_with_me = _stop_with(os.getpid())

    def start(child: _Child) -> None:
        # preexec_fn is safe here: the supervisor runs no threads that could hold a lock across the fork.
        child.proc = subprocess.Popen(_command(), env=_env(child.index, health_port), preexec_fn=die_with_me)
        child.started = time.monotonic()
        log.info("worker_started", worker=child.index, pid=child.proc.pid)

    # 1.
    for child in children:
        start(child)
    log.info("workers_running", workers=n)
    # 2.
    code = 0
    while not stopping["now"]:
        time.sleep(0.2)
        now = time.monotonic()
        for child in children:
            if child.proc is None:
                if now >= child.restart_at and not stopping["now"]:
                    start(child)
                continue
            rc = child.proc.poll()
            if rc is None:
                continue
            child.proc = None
            if rc == CONFIG_ERROR:
                log.error("worker_refused_settings", worker=child.index)
                stopping["now"], code = True, CONFIG_ERROR
                break
            lived = now - child.started
            child.delay_s = 1.0 if lived > 60 else min(child.delay_s * 2, 30.0)
            child.restart_at = now + child.delay_s
            log.warning("worker_exited", worker=child.index, returncode=rc, restart_in_s=child.delay_s)
    # 3.
    running = [c.proc for c in children if c.proc is not None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + stop_timeout_s
    for proc in running:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("worker_killed", pid=proc.pid, reason=f"still running {stop_timeout_s:.0f}s after SIGTERM")
            proc.kill()
            proc.wait()
    log.info("workers_stopped", workers=n)
    return code
