"""Dead letters by kind, for the dashboard: read from the Kafka topic, the only place they are kept.

What the processor could not read, decide or deliver goes to ``<prefix>accord.deadletter``
with an ``accord.error`` header (the kind, e.g. ``UnreadableRecord``) and an
``accord.reason`` (one line, never personal data); nothing of it reaches the ledger. So
the dashboard reads the topic's headers, never its values: partition by partition
(one, as created), at most the last ``max_records`` records and for at most
``timeout_s``, until it is idle (two empty polls, about 0.6 s), counting those whose
broker timestamp falls in the period. Without a
broker the page says it could not count them. A result is kept for ``cache_s``
per period, so a reload does not read the topic again.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames

POLL_S = 0.3
IDLE_POLLS = 2  # empty polls in a row that end a partition


@dataclass(frozen=True)
class DeadLetters:
    topic: str
    by_kind: tuple[tuple[str, int], ...]  # (error kind, count), most first
    read: int  # records looked at
    truncated: bool  # older records than those read exist
    error: str | None = None  # why they could not be counted

    @property
    def total(self) -> int:
        return sum(n for _, n in self.by_kind)


def count(
    settings: Settings, start: datetime, until: datetime, *, max_records: int = 10_000, timeout_s: float = 3.0
) -> DeadLetters:
    """Dead letters with a timestamp in [start, until), by kind."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

    topic = TopicNames(settings.topic_prefix).dead_letter
    consumer = kafka.consumer(
        settings,
        f"accord-web-deadletters-{uuid.uuid4().hex[:8]}",
        **{"enable.auto.commit": False, "fetch.wait.max.ms": settings.fetch_wait_max_ms},
    )
    kinds: Counter[str] = Counter()
    read, truncated = 0, False
    deadline = time.monotonic() + timeout_s
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s)
        partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
        if not partitions or meta.topics[topic].error is not None:
            return DeadLetters(topic, (), 0, False, None)
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            # The high watermark is a hint only: the embedded broker (Tansu) reports one offset per
            # record batch there, so the partition is read until it is idle, not up to it.
            first = max(low, high - max_records)
            truncated = truncated or first > low
            consumer.assign([TopicPartition(topic, p, first if first > low else OFFSET_BEGINNING)])
            idle, taken = 0, 0
            while idle < IDLE_POLLS and taken < max_records:
                if time.monotonic() > deadline:
                    return DeadLetters(
                        topic, tuple(kinds.most_common()), read, True, "only part of the topic could be read in time"
                    )
                msg = consumer.poll(POLL_S)
                if msg is None:
                    idle += 1
                    continue
                idle = 0
                if msg.error():
                    continue
                read, taken = read + 1, taken + 1
                _kind, stamp = msg.timestamp()
                when = datetime.fromtimestamp(stamp / 1000, UTC)
                if start <= when < until:
                    kinds[_header(msg.headers(), header.ERROR) or "(no kind given)"] += 1
            truncated = truncated or taken >= max_records
    except KafkaException as exc:
        return DeadLetters(topic, (), read, False, f"the broker could not be asked ({exc.args[0].name()})")
    finally:
        consumer.close()
    return DeadLetters(topic, tuple(kinds.most_common()), read, truncated)


def _header(headers: Any, name: str) -> str | None:
    for key, value in headers or ():
        if key == name and isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")[:200]
    return None


class DeadLetterCache:
    """Results per period for ``cache_s`` seconds (the dashboard is reloaded more often than letters die)."""

    def __init__(self, settings: Settings, cache_s: float = 30.0) -> None:
        self.settings, self.cache_s = settings, cache_s
        self._kept: dict[tuple[datetime, datetime], tuple[float, DeadLetters]] = {}

    def get(self, start: datetime, until: datetime, **kw: Any) -> DeadLetters:
        now = time.monotonic()
        kept = self._kept.get((start, until))
        if kept is not None and now - kept[0] < self.cache_s:
            return kept[1]
        found = count(self.settings, start, until, **kw)
        self._kept = {k: v for k, v in self._kept.items() if now - v[0] < self.cache_s}
        self._kept[(start, until)] = (now, found)
        return found


__all__ = ["DeadLetterCache", "DeadLetters", "count"]
