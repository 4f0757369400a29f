"""Measurement: what a RenewingProducer costs per produce() on the event path.

    python bench/producer_watch.py [--records 200000] [--rounds 5]

The processor's event producer is a RenewingProducer that does not watch its delivery
reports (the handler hands it the refusals it collected, after each flush); the control
plane's watch theirs, a closure per record. Each round produces ``--records`` records of
the event path's shape (a 300-byte value, a 36-byte key, four headers, a per-record
callback as the handler makes one) into the local queue of a producer whose broker does
not exist, so only the Python and librdkafka enqueue work is timed, for: a plain
confluent producer (the baseline), a RenewingProducer without watching, and one with.
Printed: the best round's µs per produce, and its ratio to the baseline of the same
round (designs taken in a different order each round). Measure only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import KafkaError, Message, Producer

from bus.kafka import Producing, RenewingProducer

CONFIG = {
    "bootstrap.servers": "127.0.0.1:9",  # nothing listens: records stay in the local queue
    "enable.idempotence": True,
    "queue.buffering.max.messages": 2_000_000,
    "queue.buffering.max.kbytes": 4_000_000,
    "message.timeout.ms": 600_000,
    "log_level": 0,
}


def _plain() -> Producing:
    return Producer(CONFIG)


def _renewing(watch: bool) -> Callable[[], Producing]:
    return lambda: RenewingProducer(lambda: Producer(CONFIG), watch_reports=watch)


DESIGNS: dict[str, Callable[[], Producing]] = {
    "plain confluent producer (baseline)": _plain,
    "RenewingProducer, refusals noted after flush": _renewing(False),
    "RenewingProducer, each report watched": _renewing(True),
}


def _round(make: Callable[[], Producing], records: int) -> float:
    """µs per produce() for ``records`` records into a fresh producer's queue."""
    producer = make()
    value, key = b"v" * 300, b"k" * 36
    headers = [("accord.disclosure_id", key), ("accord.agreement", b"a@v1"), ("accord.event_type", b"custody")]
    headers.append(("accord.ledger_seq", b"123456"))
    errors: dict[int, KafkaError] = {}
    started = time.perf_counter()
    for i in range(records):

        def on_delivery(err: KafkaError | None, _msg: Message, i: int = i) -> None:
            if err is not None:
                errors[i] = err

        producer.produce("bench", value=value, key=key, headers=headers, on_delivery=on_delivery)  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    inner: Any = getattr(producer, "_producer", producer)
    inner.purge(in_queue=True, in_flight=True, blocking=False)
    return elapsed / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    best: dict[str, float] = {}
    ratios: dict[str, list[float]] = {name: [] for name in DESIGNS}
    baseline = next(iter(DESIGNS))
    for _ in range(args.rounds):
        order = list(DESIGNS)
        random.shuffle(order)
        this = {name: _round(DESIGNS[name], args.records) for name in order}
        for name, us in this.items():
            best[name] = min(best.get(name, us), us)
            ratios[name].append(us / this[baseline])
    print(f"{args.records:,} produces per round, {args.rounds} rounds; µs per produce (best round), ratio to baseline")
    for name in DESIGNS:
        r = sorted(ratios[name])
        print(f"  {name:48} {best[name]:6.2f} µs   ratio min {r[0]:.2f} median {r[len(r) // 2]:.2f} max {r[-1]:.2f}")


if __name__ == "__main__":
    main()
