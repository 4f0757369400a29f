"""Benchmark: raw confluent-kafka consume->produce vs the Accord pipeline, same records.

Both run in this process's run on the same broker and the same encoded events,
so the ratio compares like with like on this machine. Measure only: nothing here
asserts a time.

    python bench/pipeline.py [--events N]

The Accord side is the real processor (faust, decide, ledger append, produce).
Its ledger is ACCORD_LEDGER_URL if set, otherwise a fresh SQLite file; the
faust start-up and group join are excluded (timing starts at its first commit).
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from accord import devstack, kafka  # noqa: E402
from accord.database import engine_for, init_database  # noqa: E402
from accord.drain import committed  # noqa: E402
from accord.settings import Settings  # noqa: E402
from accord.topics import TopicNames, TopicSpec, create_topics  # noqa: E402
from agreements import load_dir, recipients_by_type  # noqa: E402
from producers import Publisher  # noqa: E402
from producers.synthetic import build_scenario  # noqa: E402


def raw_copy(settings: Settings, topics: list[str], out_topic: str, total: int) -> float:
    """Consume every record and produce its bytes unchanged; events per second."""
    consumer = kafka.consumer(settings, f"bench-raw-{uuid.uuid4().hex[:6]}")
    producer = kafka.producer(settings)
    consumer.subscribe(topics)
    seen = 0
    started = None
    while seen < total:
        for msg in consumer.consume(1000, timeout=1.0):
            if msg.error():
                continue
            if started is None:
                started = time.perf_counter()
            while True:
                try:
                    producer.produce(out_topic, key=msg.key(), value=msg.value())
                    break
                except BufferError:
                    producer.poll(0.05)
            seen += 1
        producer.poll(0)
    producer.flush()
    consumer.commit(asynchronous=False)
    elapsed = time.perf_counter() - started
    consumer.close()
    return total / elapsed


def accord_pipeline(settings: Settings, end_offsets: dict[tuple[str, int], int], total: int) -> float:
    env = {**os.environ, "ACCORD_LOG_LEVEL": "WARNING", "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "ACCORD_TOPIC_PREFIX": settings.topic_prefix, "ACCORD_LEDGER_URL": settings.resolved_ledger_url,
           "ACCORD_PROCESSOR_GROUP": settings.processor_group, "ACCORD_STATE_DIR": str(settings.state_dir),
           "ACCORD_SESSION_TIMEOUT_MS": "2000", "ACCORD_HEARTBEAT_INTERVAL_MS": "500",
           "ACCORD_PSEUDONYM_KEY": os.environ.get("ACCORD_PSEUDONYM_KEY") or secrets.token_hex(32)}
    proc = subprocess.Popen([sys.executable, "-m", "accord.cli", "run", "processor"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        partitions = list(end_offsets)
        first_done, started = 0, None
        while True:
            seen = committed(settings, settings.processor_group, partitions)
            done = sum(seen.values())
            if started is None and done > 0:
                first_done, started = done, time.perf_counter()
            if done >= total:
                return (total - first_done) / (time.perf_counter() - started)
            if proc.poll() is not None:
                raise RuntimeError("processor exited early")
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(15)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    base = Settings()
    started_broker = False
    if not devstack.broker_answers(base.bootstrap_servers):
        devstack.up(Settings(state_dir=state))
        started_broker = True
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    settings = Settings(topic_prefix=prefix, state_dir=state, processor_group=f"{prefix}processor",
                        ledger_url=os.environ.get("ACCORD_LEDGER_URL", f"sqlite:///{state / 'ledger.db'}"))
    names = TopicNames(prefix)
    agreements = load_dir(settings.agreements_dir)
    create_topics(kafka.admin(settings), names.catalogue(recipients_by_type(agreements)) + [TopicSpec(f"{prefix}raw.out", 1, {})])
    init_database(engine_for(settings))

    scenario = build_scenario(n_events=args.events, seed=1, n_malformed=0)
    publisher = Publisher(settings)
    for e in scenario.events:
        publisher.publish(e.event_type, e.record)
    report = publisher.flush()
    total = report.delivered
    topics = sorted({t for t, _ in report.end_offsets})
    print(f"published {total} events to {len(topics)} topics")

    raw = raw_copy(settings, topics, f"{prefix}raw.out", total)
    print(f"raw confluent-kafka consume->produce: {raw:,.0f} events/s")
    pipeline = accord_pipeline(settings, report.end_offsets, total)
    print(f"accord pipeline (decode, decide, ledger, produce): {pipeline:,.0f} events/s "
          f"(ledger: {settings.resolved_ledger_url.split(':')[0]})")
    print(f"ratio accord/raw: {pipeline / raw:.3f}")
    if started_broker:
        devstack.down(Settings(state_dir=state))
    return 0


if __name__ == "__main__":
    sys.exit(main())
