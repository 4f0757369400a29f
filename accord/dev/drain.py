"""Wait until a consumer group has committed past given offsets.

Lag from ListOffsets is wrong on the embedded broker, so "drained" is measured
against the end offsets the publisher saw in its delivery reports.
"""

from __future__ import annotations

import time

from confluent_kafka import TopicPartition

from bus import kafka
from bus.settings import Settings


def committed(settings: Settings, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    probe = kafka.consumer(settings, group)
    try:
        got = probe.committed([TopicPartition(t, p) for t, p in partitions], timeout=10)
    finally:
        probe.close()
    return {(tp.topic, tp.partition): max(tp.offset, 0) for tp in got}


def wait_for_group(
    settings: Settings, group: str, targets: dict[tuple[str, int], int], timeout: float = 120.0
) -> dict[tuple[str, int], int]:
    """Block until ``group`` has committed at least ``targets``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    partitions = list(targets)
    while True:
        seen = committed(settings, group, partitions)
        if all(seen.get(tp, 0) >= end for tp, end in targets.items()):
            return seen
        if time.monotonic() > deadline:
            behind = {
                f"{t}[{p}]": f"{seen.get((t, p), 0)}/{end}"
                for (t, p), end in targets.items()
                if seen.get((t, p), 0) < end
            }
            raise TimeoutError(f"group {group} did not catch up within {timeout:.0f}s: {behind}")
        time.sleep(0.25)
