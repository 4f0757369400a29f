"""The processor's memory over a long stream, and while it retracts a suspended agreement.

    python bench/processor_memory.py [--events 1000000] [--chunk 50000] [--control-s S]

Measure only; nothing here asserts. In one run:

1. one embedded broker and a PostgreSQL ledger with owner and app roles (bench/roles.py);
   one ``accord run processor`` as the app role;
2. distinct synthetic events (a seed per chunk) are published chunk by chunk while the
   processor runs; after each chunk is committed, the processor's resident memory
   (VmRSS) is read;
3. after 20 s idle, RSS again (is memory given back or kept?);
4. the agreement with the most disclosures is suspended, while events keep coming at
   200/s: RSS is sampled every 0.25 s until every disclosure under it is retracted, and
   the stream's publish -> partner latency (p50/p99) is measured before and during the
   retraction, and in 5 s windows during it (bench/latency.py's partner clock and steady
   publisher).

With ``--control-s S`` nothing is suspended: the same stream runs for S seconds, so
its latency windows show what the embedded broker's own drift adds over that time
(its fetches cost more as partitions fill).

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from sqlalchemy import text

from accord.dev import devstack
from accord.dev.drain import committed
from accord.processor.agreement_feed import publish_agreements
from agreements import Status, load_dir
from bench.backlog import create_bus_topics, encode_scenario, partner_topics, publish
from bench.latency import PartnerClock, SteadyPublisher, ledger_keys, quantile
from bench.pipeline import free_port
from bench.roles import role_database
from bench.workers import Workers, processor_env
from bus.settings import Settings
from bus.topics import TopicNames

PSEUDONYM_KEY = "bench-only-pseudonym-key-0123456789abcdef"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_committed(
    settings: Settings, ends: dict[tuple[str, int], int], workers: Workers, timeout: float = 900
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = committed(settings, settings.processor_group, list(ends))
        if all(seen.get(tp, 0) >= end for tp, end in ends.items()):
            return
        workers.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError("the processor did not catch up")
        time.sleep(0.2)


def latency_ms(
    clock: PartnerClock, sent: dict[str, int], keys: dict[bytes, str], since_ns: int, until_ns: int
) -> tuple[float, float, int]:
    samples = sorted(
        (t - sent[keys[k]]) / 1e6
        for k, t in list(clock.arrived.items())
        if k in keys and keys[k] in sent and since_ns <= sent[keys[k]] < until_ns
    )
    return quantile(samples, 0.5), quantile(samples, 0.99), len(samples)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=50_000)
    parser.add_argument(
        "--control-s",
        type=float,
        default=0.0,
        help="suspend nothing: stream as long as this, to tell what the broker's own drift adds",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="accord-bench-memory-"))
    broker = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", state_dir=root / "broker")
    devstack.up(broker)
    try:
        with role_database() as db:
            prefix = f"mem{uuid.uuid4().hex[:6]}."
            settings = broker.model_copy(
                update={
                    "topic_prefix": prefix,
                    "processor_group": f"{prefix}processor",
                    "state_dir": root / "state",
                    "pseudonym_key": SecretStr(PSEUDONYM_KEY),
                }
            )
            create_bus_topics(settings)
            rows: list[tuple[str, str]] = []
            with Workers(1, processor_env(settings, db.app_url), root, "memory") as workers:
                workers.wait_settled()
                [pid] = workers.pids()
                # 2.
                done = 0
                while done < args.events:
                    n = min(args.chunk, args.events - done)
                    ends = publish(settings, encode_scenario(settings, n, seed=1000 + done))
                    wait_committed(settings, ends, workers)
                    done += n
                    mb = rss_mb(pid)
                    print(f"{done:>9,} events: RSS {mb:6.1f} MB", flush=True)
                    rows.append((f"after {done:,} events", f"{mb:.1f}"))
                # 3.
                time.sleep(20)
                rows.append(("20 s idle after the stream", f"{rss_mb(pid):.1f}"))
                # 4.
                with db.admin.connect() as conn:
                    agreement_id, disclosed = conn.execute(
                        text(
                            "SELECT agreement_id, count(*) FROM ledger_entries WHERE outcome = 'DISCLOSED' "
                            "GROUP BY agreement_id ORDER BY count(*) DESC LIMIT 1"
                        )
                    ).one()
                current = next(a for a in load_dir(settings.agreements_dir) if a.id == agreement_id)
                every = [t for ts in partner_topics(settings).values() for t in ts]
                clock = PartnerClock(settings, every)
                # A second clock on the partner topics the notices do not go to: on the embedded
                # broker a fetch costs more the more batches a partition holds (docs/architecture.md),
                # so a clock that also reads the topics filling with 90k notices slows itself down.
                names = TopicNames(settings.topic_prefix)
                noticed = {names.partner(r, t) for r in current.recipients for t in current.event_types}
                quiet = PartnerClock(settings, [t for t in every if t not in noticed])
                clock.assigned.wait(30)
                quiet.assigned.wait(30)
                # The clock reads the partner topics from their start: let it reach their end
                # first, or the new records' arrival times would include its catch-up.
                seen = -1
                while clock.count() + quiet.count() != seen:
                    seen = clock.count() + quiet.count()
                    time.sleep(2)
                steady = rss_mb(pid)
                stream = SteadyPublisher(settings)
                live = encode_scenario(settings, 40_000, seed=7)
                streaming = threading.Thread(target=stream.run, args=(live, 200.0), daemon=True)
                streaming.start()
                time.sleep(10)  # latency before the suspension
                suspended_at = time.monotonic_ns()
                if not args.control_s:
                    publish_agreements(
                        settings,
                        [current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})],
                    )
                peak, started = 0.0, time.monotonic()
                while args.control_s:  # no suspension: the same stream for as long, as the control
                    peak = max(peak, rss_mb(pid))
                    if time.monotonic() - started > args.control_s:
                        break
                    time.sleep(0.25)
                counted = 0.0
                while not args.control_s:
                    peak = max(peak, rss_mb(pid))
                    if time.monotonic() - counted < 2.0:
                        time.sleep(0.25)
                        continue
                    # The count scans the whole ledger: every 2 s, not with every RSS sample,
                    # or on a 1,000,000-event ledger the bench's own query takes a core.
                    counted = time.monotonic()
                    with db.admin.connect() as conn:
                        retracted = conn.execute(
                            text(
                                "SELECT count(*) FROM ledger_entries WHERE outcome = 'RETRACTED' AND agreement_id = :a"
                            ),
                            {"a": agreement_id},
                        ).scalar_one()
                    if retracted >= disclosed or time.monotonic() - started > 1200:
                        break
                    workers.check_alive()
                    time.sleep(0.25)
                retraction_s = time.monotonic() - started
                retracted_at = time.monotonic_ns()
                stream_stop = time.monotonic()
                while streaming.is_alive() and time.monotonic() - stream_stop < 1:
                    time.sleep(0.1)
                time.sleep(3)  # let the last partner records arrive
                keys = ledger_keys(db.admin)()
                before = latency_ms(clock, stream.sent, keys, 0, suspended_at)
                during = latency_ms(clock, stream.sent, keys, suspended_at, retracted_at)
                elsewhere = latency_ms(quiet, stream.sent, keys, suspended_at, retracted_at)
                windows = [
                    (
                        i * 5,
                        latency_ms(clock, stream.sent, keys, start, min(start + 5_000_000_000, retracted_at)),
                        latency_ms(quiet, stream.sent, keys, start, min(start + 5_000_000_000, retracted_at)),
                    )
                    for i, start in enumerate(range(suspended_at, retracted_at, 5_000_000_000))
                ]
                quiet_before = latency_ms(quiet, stream.sent, keys, 0, suspended_at)
                clock.close()
                quiet.close()
                rows.append(
                    (
                        (
                            f"the same stream, nothing suspended (the control, {retraction_s:.0f} s): peak"
                            if args.control_s
                            else f"retracting {disclosed:,} disclosures of {agreement_id} ({retraction_s:.0f} s): peak"
                        ),
                        f"{peak:.1f}",
                    )
                )
                rows.append(
                    ("peak during retraction minus steady state (just before the suspension)", f"{peak - steady:+.1f}")
                )
            print("\n| processor, PostgreSQL ledger as the app role | RSS MB |\n| --- | --- |")
            for what, shown in rows:
                print(f"| {what} | {shown} |")
            print("\n| stream at 200 events/s | p50 ms | p99 ms | samples |\n| --- | --- | --- | --- |")
            print(f"| before the suspension | {before[0]:.0f} | {before[1]:.0f} | {before[2]} |")
            print(
                f"| {'after, nothing suspended' if args.control_s else f'while {disclosed:,} disclosures are retracted'}"
                f" | {during[0]:.0f} | {during[1]:.0f} | {during[2]} |"
            )
            print(
                f"| before, on the partner topics the notices do not go to | {quiet_before[0]:.0f} | "
                f"{quiet_before[1]:.0f} | {quiet_before[2]} |"
            )
            print(f"| while retracted, on those topics | {elsewhere[0]:.0f} | {elsewhere[1]:.0f} | {elsewhere[2]} |")
            print(
                "\n| seconds after the suspension | p50 / p99 ms, all partner topics | p50 / p99 ms, "
                "topics without notices |\n| --- | --- | --- |"
            )
            for at, every_topic, without in windows:
                print(
                    f"| {at}-{at + 5} | {every_topic[0]:.0f} / {every_topic[1]:.0f} | {without[0]:.0f} / {without[1]:.0f} |"
                )
    finally:
        devstack.down(broker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
