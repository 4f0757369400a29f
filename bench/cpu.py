"""Where the CPU went during a timed window: processor, PostgreSQL, broker, the bench itself.

A rate means little on a 2-core machine without knowing whether the cores were full,
and whether a second worker had a core to run on. Linux only (/proc); elsewhere every
figure is simply absent. CPU time is read from /proc/<pid>/stat (utime + stime) at the
start and the end of the window; the machine's total from /proc/stat (which includes
whatever else the machine was doing: other people's tests, for one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (the ``--workers`` supervisor's children)."""
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [pid]
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def _machine() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class Usage:
    """Cores used on average over the window, per component; ``machine`` is all CPUs' busy share."""

    cores: dict[str, float]
    machine_busy: float | None
    cpu_seconds: dict[str, float]
    events: int = 0  # events handled inside the window, for the cost per event

    def per_event_us(self, name: str) -> float | None:
        if name not in self.cpu_seconds or not self.events:
            return None
        return self.cpu_seconds[name] / self.events * 1e6

    def describe(self) -> str:
        parts = [f"{name} {c:.2f}" for name, c in self.cores.items()]
        busy = f"; machine {self.machine_busy:.0%} busy" if self.machine_busy is not None else ""
        return "CPU cores used: " + ", ".join(parts) + busy


class CpuMeter:
    """Samples the named groups of processes at start() and stop()."""

    def __init__(self, groups: Mapping[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.first: dict[str, dict[int, int]] = {}
        self.machine: tuple[int, int] | None = None
        self.wall = 0.0

    def _sample(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        for name, pids in self.groups.items():
            seen = {}
            for pid in pids():
                t = _ticks(pid)
                if t is not None:
                    seen[pid] = t
            out[name] = seen
        return out

    def start(self, now: float) -> None:
        self.first, self.machine, self.wall = self._sample(), _machine(), now

    def stop(self, now: float, events: int = 0) -> Usage:
        last, machine = self._sample(), _machine()
        seconds = max(1e-9, now - self.wall)
        used = {}
        for name, ticks in last.items():
            before = self.first.get(name, {})
            # A process that started inside the window counts from zero.
            used[name] = sum(t - before.get(pid, 0) for pid, t in ticks.items()) / TICK
        busy = None
        if self.machine and machine and machine[1] > self.machine[1]:
            busy = (machine[0] - self.machine[0]) / (machine[1] - self.machine[1])
        return Usage({k: v / seconds for k, v in used.items()}, busy, used, events)
