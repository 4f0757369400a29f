"""Run the real processor as N workers in one consumer group, and time it on a backlog.

``accord run processor --workers N`` is used when the CLI has it; otherwise N separate
``accord run processor`` processes with the same environment (the same thing: N
members of one group). Their JSON logs go to files the bench reads for two things:

1. when the group is settled: after the last ``partitions_revoked``, N
   ``partitions_assigned`` lines (eager rebalancing revokes everything and then
   assigns every member, so N assignments after the last revocation means every
   member has its share); with one worker, its first assignment;
2. what went wrong, if a worker exits early (its last log lines go into the error).

Timing (``drain_backlog``) starts at the first committed offset seen after the
group has settled and ends when the group has committed every published offset
(accord/drain.committed), so start-up, group join and rebalances are left out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from accord.dev.drain import committed
from bench.cpu import CpuMeter, Usage, descendants
from bench.pg_waits import PgWaits
from bus.settings import Settings

CLI = [sys.executable, "-m", "accord.cli"]


@lru_cache(maxsize=1)
def cli_has_workers_flag() -> bool:
    out = subprocess.run([*CLI, "run", "processor", "--help"], capture_output=True, text=True, timeout=60)
    return "--workers" in out.stdout


class WorkerFailed(RuntimeError):
    pass


class Workers:
    """N processor workers in one group; a context manager that stops them (SIGTERM, then SIGKILL)."""

    def __init__(self, n: int, env: dict[str, str], log_dir: Path, name: str) -> None:
        self.n = n
        self.env = env
        self.log_dir = log_dir
        self.name = name
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.flag = n > 1 and cli_has_workers_flag()

    def __enter__(self) -> Workers:
        commands = (
            [[*CLI, "run", "processor", "--workers", str(self.n)]]
            if self.flag
            else [[*CLI, "run", "processor"] for _ in range(self.n)]
        )
        for i, cmd in enumerate(commands):
            path = self.log_dir / f"{self.name}.{i}.log"
            self.logs.append(path)
            with path.open("wb") as log:
                # Own session: stop() can reach the supervisor's children too, and only them.
                self.procs.append(
                    subprocess.Popen(
                        cmd,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 45  # the supervisor gives its children 40 s
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the session this bench started for it
                p.wait(5)

    @property
    def description(self) -> str:
        how = f"--workers {self.n}" if self.flag else (f"{self.n} processes" if self.n > 1 else "1 process")
        return f"accord run processor ({how})"

    def lines(self) -> list[dict]:
        out = []
        for path in self.logs:
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("{"):
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass
        return out

    def tail(self, n: int = 30) -> str:
        chunks = []
        for path in self.logs:
            try:
                chunks.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-n:]))
            except OSError:
                pass
        return "\n".join(chunks)

    def check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                raise WorkerFailed(f"a worker exited early (code {p.returncode}):\n{self.tail()}")
        exited = [line for line in self.lines() if line.get("event") == "worker_exited"]
        if exited:  # the --workers supervisor restarts a child that died: a crash all the same
            raise WorkerFailed(f"a worker died and was restarted by the supervisor ({exited[0]}):\n{self.tail()}")

    def no_dead_letters(self) -> None:
        """Every synthetic event is valid: a dead letter means the processor failed, not the data."""
        dead = [line for line in self.lines() if line.get("event") in ("dead_letter", "record_unprocessable")]
        if dead:
            kinds = sorted({str(line.get("error")) for line in dead})
            raise WorkerFailed(f"{len(dead)} records dead-lettered ({', '.join(kinds)}); first: {dead[0]}")

    def pids(self) -> list[int]:
        """Every process of the group (the supervisor and its children, with --workers)."""
        return [d for p in self.procs if p.poll() is None for d in descendants(p.pid)]

    def settled(self) -> bool:
        # 1. (lines of several files are put in time order first)
        assigned = 0
        for line in sorted(self.lines(), key=lambda d: str(d.get("timestamp", ""))):
            event = line.get("event")
            if event == "partitions_revoked":
                assigned = 0
            elif event == "partitions_assigned" and line.get("partitions", 0) > 0:
                assigned += 1
        return assigned >= self.n

    def wait_settled(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.settled():
            self.check_alive()
            if time.monotonic() > deadline:
                raise WorkerFailed(
                    f"the group did not settle with {self.n} members within {timeout:.0f}s:\n{self.tail()}"
                )
            time.sleep(0.05)

    def count(self, event: str) -> int:
        return sum(1 for line in self.lines() if line.get("event") == event)


def processor_env(settings: Settings, ledger_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of ``accord run processor`` for one run: its prefix, group, ledger, state folder."""
    env = {
        **os.environ,
        "ACCORD_LOG_FORMAT": "json",
        "ACCORD_LOG_LEVEL": "INFO",
        "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
        "ACCORD_LEDGER_URL": ledger_url,
        "ACCORD_LEDGER_OWNER_URL": "",
        "ACCORD_PROCESSOR_GROUP": settings.processor_group,
        "ACCORD_STATE_DIR": str(settings.state_dir),
        "ACCORD_SESSION_TIMEOUT_MS": "2000",
        "ACCORD_HEARTBEAT_INTERVAL_MS": "500",
        "ACCORD_HEALTH_PORT": "0",
        "ACCORD_PSEUDONYM_KEY": settings.pseudonym_key.get_secret_value(),
    }
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class Drained:
    events: int  # events inside the timed window
    seconds: float
    before_window: int  # committed before the group settled (not timed)
    cpu: Usage | None = None
    waits: str | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


def drain_backlog(
    settings: Settings,
    workers: Workers,
    ends: dict[tuple[str, int], int],
    timeout: float = 300.0,
    meter: CpuMeter | None = None,
    waits: PgWaits | None = None,
) -> Drained:
    """Settle the group, then time it from its first commit to every offset in ``ends`` committed."""
    total = sum(ends.values())
    partitions = list(ends)
    workers.wait_settled()
    deadline = time.monotonic() + timeout
    first, started = 0, 0.0
    while True:
        done = sum(min(v, ends[tp]) for tp, v in committed(settings, settings.processor_group, partitions).items())
        now = time.perf_counter()
        if not started and done > 0:
            first, started = done, now
            if meter is not None:
                meter.start(now)
            if waits is not None:
                waits.start()
        if done >= total:
            if first >= total:
                raise WorkerFailed("the backlog was drained before the group settled: publish more events")
            return Drained(
                total - first,
                now - started,
                first,
                meter.stop(now, total - first) if meter is not None else None,
                waits.stop() if waits is not None else None,
            )
        workers.check_alive()
        if time.monotonic() > deadline:
            raise WorkerFailed(f"stuck at {done}/{total} committed after {timeout:.0f}s:\n{workers.tail()}")
        time.sleep(0.05)
