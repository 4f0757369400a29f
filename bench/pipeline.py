"""Benchmark: the Accord pipeline against raw Kafka and against its own I/O floor, same run.

    python bench/pipeline.py [--events 40000] [--no-latency]      (make bench)

Everything runs in one invocation, on one broker (a fresh embedded Tansu on a free
port unless ACCORD_BOOTSTRAP_SERVERS is set) and the same encoded records, so every
ratio compares like with like on this machine at this moment. Measure only: nothing
here asserts a time. The steps, each with its own topic prefix, group and ledger:

1. encode the synthetic scenario once (the publishing SDK's checks and encoding);
2. raw: confluent-kafka consume -> produce of the same bytes (bench/baselines.py);
3. the pipeline on PostgreSQL, 1 worker: the real ``accord run processor``,
   connected as an APP role of a fresh schema that an OWNER role set up
   (bench/roles.py), timed on a published backlog from its first commit to its
   last (bench/workers.py). Its ledger says how many rows and partner records an
   event makes, per event type;
4. the I/O floor: decode, COPY that many of the pipeline's own ledger rows and
   produce that many records per event, commit offsets; no decisions, no hashing;
5. the pipeline on PostgreSQL with 2 workers (``accord run processor --workers 2``,
   one group), then on SQLite with 1 and 2 workers. Steps 2-5 run ``--rounds``
   times, interleaved, and the best try of each is reported (every try is shown):
   other work on the machine moves a single try by as much as 2x;
6. latency, publish -> partner record, at steady offered loads on PostgreSQL with
   1 and 2 workers (bench/latency.py), with the cores each part used and how old
   each batch's oldest record was when a worker took it (its accord_record_age_seconds); the headline
   load once more with the source producers at ``--source-linger-ms`` (the embedded
   broker's CPU follows the number of record batches it serves, so this shows its
   share); then the same path through the processor's Kafka loop with nothing in it,
   with its consume settings and without their waits, to one topic and then fanned out
   as the pipeline's disclosures are (each event to the partners its ledger gave it). The
   fanned-out loop runs the 1-worker sweep's loads in the same order on its own topics:
   the embedded broker's fetch lists every batch a partition holds, so its latency grows
   as a run goes on, and a load compares fairly only with the same load after the same
   ones. The difference, load by load, is what the processor adds;
7. markdown tables, for the README.

Each throughput run also says where the CPU went (bench/cpu.py: processor, PostgreSQL
backends of the app role, broker, per event) and what the app role's sessions were
doing (bench/pg_waits.py), so a rate can be told apart from a busy machine. A run in
which the processor dead-letters anything, or a worker dies, counts as failed.

The processor runs with its default batch settings (ACCORD_BATCH_SIZE,
ACCORD_BATCH_WINDOW_S), which the floor uses too; ledger checkpoints are off
(no signing key in the bench's state folder).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import secrets
import shutil
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr
from sqlalchemy import Engine, create_engine, select, text

from accord.dev import devstack
from bench import backlog, baselines, latency
from bench.baselines import PerEvent
from bench.cpu import CpuMeter, Usage
from bench.latency import Stage
from bench.pg_waits import PgWaits
from bench.roles import RoleDatabase, role_database, scratch_schema
from bench.workers import Drained, Workers, drain_backlog, processor_env
from bus.settings import Settings
from bus.topics import EVENT_PARTITIONS, EVENT_TYPES, TopicNames, TopicSpec
from ledger import LedgerEntry


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Run:
    label: str
    rate: float | None = None
    detail: str = ""
    cpu: Usage | None = None
    failure: str | None = None

    def cost(self) -> str:
        """CPU per event, µs: the Python side (processor or bench), PostgreSQL, the broker."""
        if self.cpu is None:
            return "-"
        python = self.cpu.per_event_us("processor") or self.cpu.per_event_us("bench")
        parts = [python, self.cpu.per_event_us("postgres"), self.cpu.per_event_us("broker")]
        return " / ".join("-" if p is None else f"{p:.0f}" for p in parts)


@dataclass
class LatencyRun:
    """One latency measurement: its loads' stages, or why it failed.

    ``workers`` labels the table's row; ``sweep`` says its loads ascend from the lowest,
    so it tells the highest load with p99 under 100 ms (the source-linger run is one load).
    """

    workers: str
    stages: list[Stage] = field(default_factory=list)
    failure: str | None = None
    sweep: bool = True


@dataclass
class LedgerShape:
    """What the pipeline's ledger holds after a run: rows and disclosures per event type."""

    events: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    disclosed: dict[str, int] = field(default_factory=dict)

    @property
    def per_event(self) -> dict[str, PerEvent]:
        return {t: PerEvent(self.rows.get(t, 0) / n, self.disclosed.get(t, 0) / n) for t, n in self.events.items() if n}

    def ratio(self, of: dict[str, int]) -> float:
        return sum(of.values()) / max(1, sum(self.events.values()))


def ledger_shape(engine: Engine) -> LedgerShape:
    shape = LedgerShape()
    with engine.connect() as conn:
        for event_type, events, rows, disclosed in conn.execute(
            text(
                "SELECT event_type, COUNT(DISTINCT event_id), COUNT(*), "
                "SUM(CASE WHEN outcome = 'DISCLOSED' THEN 1 ELSE 0 END) FROM ledger_entries GROUP BY event_type"
            )
        ):
            shape.events[event_type], shape.rows[event_type], shape.disclosed[event_type] = events, rows, int(disclosed)
    return shape


class Bench:
    def __init__(self, base: Settings, root: Path, events: list[backlog.Encoded], n_backlog: int) -> None:
        self.base = base
        self.root = root
        self.events = events
        self.backlog = events[:n_backlog]
        self.pseudonym_key = os.environ.get("ACCORD_PSEUDONYM_KEY") or secrets.token_hex(32)
        self.broker_pid: int | None = None
        # event id -> the partners its 1-worker latency sweep disclosed it to (relay_latency follows it)
        self.disclosed_to: dict[str, list[str]] | None = None

    def fresh(self, name: str) -> Settings:
        """Settings of one run: its own prefix, group and state folder."""
        prefix = f"bench{uuid.uuid4().hex[:6]}.{name}."
        state = self.root / prefix.rstrip(".")
        state.mkdir(parents=True)
        return self.base.model_copy(
            update={
                "topic_prefix": prefix,
                "processor_group": f"{prefix}processor",
                "state_dir": state,
                "pseudonym_key": SecretStr(self.pseudonym_key),
                "ledger_signing_key": SecretStr(""),
            }
        )

    def event_topics(self, settings: Settings) -> list[str]:
        names = TopicNames(settings.topic_prefix)
        return [names.event(t) for t in EVENT_TYPES]

    def publish_backlog(self, settings: Settings, extra: Sequence[TopicSpec] = ()) -> dict[tuple[str, int], int]:
        backlog.create_bus_topics(settings, list(extra))
        started = time.perf_counter()
        ends = backlog.publish(settings, self.backlog)
        log(
            f"  published {sum(ends.values()):,} events to {len(ends)} partitions in "
            f"{time.perf_counter() - started:.1f} s"
        )
        return ends

    @contextmanager
    def ledger(
        self, settings: Settings, backend: str
    ) -> Iterator[tuple[str, Engine, Callable[[], list[int]], PgWaits | None]]:
        """(the URL the processor connects with, an engine the bench reads results through, its server
        pids, a sampler of its sessions)."""
        if backend == "postgresql":
            with role_database() as db:
                yield db.app_url, db.admin, backends_of(db), PgWaits(db.admin, db.app_role)
        else:
            url = f"sqlite:///{settings.state_dir / 'ledger.db'}"
            engine = create_engine(url)
            try:
                yield url, engine, list, None
            finally:
                engine.dispose()

    def cpu_groups(self) -> dict[str, Callable[[], list[int]]]:
        groups: dict[str, Callable[[], list[int]]] = {"bench": lambda: [os.getpid()]}
        broker_pid = self.broker_pid  # set once, before the first run
        if broker_pid is not None:
            groups["broker"] = lambda: [broker_pid]
        return groups

    def meter(self, workers: Workers, database: Callable[[], list[int]]) -> CpuMeter:
        groups: dict[str, Callable[[], list[int]]] = {"processor": workers.pids}
        if database is not list:
            groups["postgres"] = database
        return CpuMeter({**groups, **self.cpu_groups()})

    def pipeline(
        self, backend: str, workers: int, keep: Callable[[Engine], None] | None = None
    ) -> tuple[Drained, LedgerShape, str]:
        settings = self.fresh(f"{backend[:2]}{workers}")
        ends = self.publish_backlog(settings)
        with self.ledger(settings, backend) as (url, engine, database, waits):
            with Workers(workers, processor_env(settings, url), settings.state_dir, "processor") as group:
                drained = drain_backlog(settings, group, ends, meter=self.meter(group, database), waits=waits)
                group.no_dead_letters()
                how = group.description
                rebalances = group.count("partitions_revoked")
            shape = ledger_shape(engine)
            if keep is not None:
                keep(engine)
        if sum(shape.events.values()) != len(self.backlog):
            raise RuntimeError(f"the ledger records {sum(shape.events.values())} events of {len(self.backlog)}")
        detail = (
            f"{how}; timed {drained.events:,} events in {drained.seconds:.1f} s "
            f"({drained.before_window:,} committed before the group settled; {rebalances} revocations)"
            + (f"\n    {drained.waits}" if drained.waits else "")
        )
        return drained, shape, detail

    def latency(
        self,
        workers: int,
        loads: list[tuple[float, float]],
        env: dict[str, str] | None = None,
        source: dict[str, object] | None = None,
    ) -> list[Stage]:
        settings = self.fresh(f"lat{workers}")
        backlog.create_bus_topics(settings)
        partner_topics = [t for ts in backlog.partner_topics(settings).values() for t in ts]
        # Worker i serves its /metrics on ACCORD_HEALTH_PORT + i: read for each load's record ages.
        health = free_ports(workers)
        extra = {"ACCORD_HEALTH_PORT": str(health), **(env or {})}
        ports = [health + i for i in range(workers)]
        with (
            role_database() as db,
            Workers(workers, processor_env(settings, db.app_url, extra), settings.state_dir, "processor") as group,
        ):
            group.wait_settled()
            group.check_alive()
            meter = CpuMeter({"processor": group.pids, "postgres": backends_of(db), **self.cpu_groups()})
            stages = latency.measure(
                settings,
                latency.ledger_keys(db.admin),
                partner_topics,
                self.events,
                loads,
                progress=log,
                meter=meter,
                source=source,
                ages=(lambda: latency.record_ages(ports)) if extra["ACCORD_HEALTH_PORT"] == str(health) else None,
            )
            group.check_alive()
            group.no_dead_letters()
            if workers == 1 and source is None:  # the sweep the fanned-out Kafka loop alone follows
                self.disclosed_to = disclosures(db.admin)
            return stages

    def relay_latency(
        self, loads: list[tuple[float, float]], window_s: float, fan_out: bool = False, **overrides: object
    ) -> list[Stage]:
        """Latency through the processor's Kafka loop with nothing in it (bench/latency.py Relay).

        ``fan_out``: each event goes to the partner topics the 1-worker latency sweep's
        ledger disclosed it to (the pipeline's partner records; every partner topic of its
        type if no sweep ran); otherwise to one topic of one partition. ``loads`` run one after the other on the
        same topics, as the pipeline's sweep does: the embedded broker's costs grow with
        what its partitions hold, so a load compares only with the same load after the same ones.
        """
        settings = self.fresh("relay")
        names = TopicNames(settings.topic_prefix)
        if fan_out:
            backlog.create_bus_topics(settings)
            partners = backlog.partner_topics(settings)
            disclosed = self.disclosed_to
            every = {names.event(t): partners.get(t, []) for t in EVENT_TYPES}

            type_of = {names.event(t): t for t in EVENT_TYPES}

            def route(topic: str, event_id: bytes) -> list[str]:
                if disclosed is None:  # no pipeline run to follow: every partner topic of the type
                    return every[topic]
                return [names.partner(p, type_of[topic]) for p in disclosed.get(event_id.decode(), ())]

            out_topics = sorted({t for ts in every.values() for t in ts})
        else:
            single = f"{settings.topic_prefix}relay.out"
            backlog.create_bus_topics(settings, [TopicSpec(single, 1, {})])

            def route(topic: str, event_id: bytes) -> list[str]:
                return [single]

            out_topics = [single]
        event_topics = [names.event(t) for t in EVENT_TYPES]
        relay = latency.Relay(settings, event_topics, route, settings.batch_size, window_s, **overrides)
        keys = {
            latency.relay_key(e.event_id.encode(), i): e.event_id
            for e in self.events
            for i in range(len(route(names.event(e.event_type), e.event_id.encode())))
        }
        try:
            if not relay.assigned.wait(30):
                raise RuntimeError("the relay got no partitions within 30 s")
            return latency.measure(
                settings,
                lambda: keys,
                out_topics,
                self.events,
                loads,
                progress=lambda _m: None,
                meter=CpuMeter(self.cpu_groups()),
            )
        finally:
            relay.close()


def disclosures(engine: Engine) -> dict[str, list[str]]:
    """Event id -> the recipients the ledger says it was disclosed to, in disclosure order."""
    out: dict[str, list[str]] = {}
    with engine.connect() as conn:
        for event_id, recipient in conn.execute(
            text("SELECT event_id, recipient FROM ledger_entries WHERE outcome = 'DISCLOSED' ORDER BY seq")
        ):
            out.setdefault(event_id, []).append(recipient)
    return out


def backends_of(db: RoleDatabase) -> Callable[[], list[int]]:
    """The pids of the PostgreSQL backends serving the app role (for the CPU meter)."""

    def backends() -> list[int]:
        with db.admin.connect() as conn:
            return [
                int(p)
                for p in conn.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE usename = :r"), {"r": db.app_role}
                ).scalars()
            ]

    return backends


def describe_stage(s: Stage) -> str:
    """One log line for a measured load: its latency and the cores each part used."""
    cores = ", ".join(f"{k} {c:.2f}" for k, c in s.cores.items())
    aged = (
        f"; oldest record of a batch when taken: p50 <= {s.age_p50_ms:.0f} ms, p99 <= {s.age_p99_ms:.0f} ms"
        if not math.isnan(s.age_p50_ms)  # nan: no processor's ages were read (the Kafka loop alone)
        else ""
    )
    return (
        f"  {s.load:,.0f}/s offered ({s.achieved:,.0f} achieved): {s.samples:,} partner records "
        f"of {s.events:,} events, p50 {s.p50_ms:.0f} ms, p99 {s.p99_ms:.0f} ms, max {s.max_ms:.0f} ms "
        f"(p99 publish -> produced {s.p99_in_ms:.0f} ms, produced -> partner {s.p99_out_ms:.0f} ms{aged}); "
        f"cores: {cores or '-'}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n: int) -> int:
    """The first of ``n`` consecutive ports that are free now."""
    while True:
        first = free_port()
        try:
            with ExitStack() as held:
                for port in range(first, first + n):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.3f}" if a and b else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=40_000, help="backlog size of each throughput run")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency steps")
    parser.add_argument("--rounds", type=int, default=2, help="tries of each throughput run; the best is reported")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite runs")
    parser.add_argument("--loads", default="250,500,1000,2000,3000,4000", help="offered loads, events/s")
    parser.add_argument("--stage-seconds", type=float, default=5.0)
    parser.add_argument("--headline-load", type=float, default=2000.0, help="this load runs --headline-seconds")
    parser.add_argument("--headline-seconds", type=float, default=10.0)
    parser.add_argument("--latency-workers", default="1,2")
    parser.add_argument("--latency-only", action="store_true", help="skip the throughput runs")
    parser.add_argument(
        "--source-linger-ms",
        type=int,
        default=50,
        help="also measure the headline load with 1 worker and the source producers at this linger.ms "
        "(the processor's settings unchanged; 0 skips it)",
    )
    parser.add_argument(
        "--latency-env",
        action="append",
        default=[],
        metavar="ACCORD_X=VALUE",
        help="an extra setting for the processor in the latency runs only (experiments; the output says so)",
    )
    args = parser.parse_args()
    begun = time.perf_counter()

    loads = [
        (float(x), args.headline_seconds if float(x) == args.headline_load else args.stage_seconds)
        for x in args.loads.split(",")
    ]
    latency_workers = [int(x) for x in args.latency_workers.split(",") if x]
    latency_env = dict(kv.split("=", 1) for kv in args.latency_env)
    needed = max(args.events, 300 + int(sum(r * s for r, s in loads)) if not args.no_latency else 0)

    root = Path(tempfile.mkdtemp(prefix="accord-bench-"))
    ours = "ACCORD_BOOTSTRAP_SERVERS" not in os.environ
    base = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}") if ours else Settings()
    broker = base.model_copy(update={"state_dir": root / "broker"})
    if ours:
        devstack.up(broker)
    ok = True
    try:
        log(
            f"broker {base.bootstrap_servers} ({'embedded Tansu, started for this run' if ours else 'given'}); "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; Python {platform.python_version()}"
        )
        log(
            f"batch size {base.batch_size}, batch window {base.batch_window_s} s; event topics have "
            f"{EVENT_PARTITIONS} partitions each ({EVENT_PARTITIONS * len(EVENT_TYPES)} in all)"
        )
        # 1.
        started = time.perf_counter()
        events = backlog.encode_scenario(base, needed)
        log(
            f"encoded {len(events):,} synthetic events in {time.perf_counter() - started:.1f} s; "
            f"{args.events:,} per throughput run"
        )
        bench = Bench(base, root, events, args.events)
        if ours:
            bench.broker_pid = devstack.status(broker).pid
        tries: dict[str, list[Run]] = {}
        runs: dict[str, Run] = {}  # the best try of each (the one least disturbed by whatever else ran)

        def attempt(key: str, label: str, fn: Callable[[], tuple[float, str, Usage | None]]) -> None:
            log(f"{label} ... (round {round_no + 1}, load average {os.getloadavg()[0]:.1f})")
            try:
                rate, detail, cpu = fn()
                tries.setdefault(key, []).append(Run(label, rate, detail, cpu))
                log(f"  {rate:,.0f} events/s; {detail}" + (f"\n    {cpu.describe()}" if cpu else ""))
            except Exception as exc:
                tries.setdefault(key, []).append(Run(label, failure=f"{type(exc).__name__}: {exc}"))
                log(f"  FAILED: {type(exc).__name__}: {exc}")
            done = [r for r in tries[key] if r.rate is not None]
            runs[key] = max(done, key=lambda r: r.rate or 0) if done else tries[key][-1]

        kept: dict[str, object] = {}  # the first PostgreSQL ledger's rows and shape, for the floor

        def keep_rows(engine: Engine) -> None:
            with engine.connect() as conn:
                kept["rows"] = [
                    tuple(r) for r in conn.execute(select(*LedgerEntry.__table__.columns).order_by(LedgerEntry.seq))
                ]

        for round_no in range(0 if args.latency_only else args.rounds):  # noqa: B007 - attempt() above reads it; interleaved: a busy spell hits one try
            # 2.
            def raw() -> tuple[float, str, Usage | None]:
                settings = bench.fresh("raw")
                ends = bench.publish_backlog(settings, [TopicSpec(f"{settings.topic_prefix}raw.out", 1, {})])
                t = baselines.raw_copy(
                    settings, ends, f"{settings.topic_prefix}raw.out", base.batch_size, cpu_groups=bench.cpu_groups()
                )
                passes = round(t.events / len(bench.backlog))
                return t.rate, f"timed {t.events:,} events in {t.seconds:.1f} s ({passes} passes)", t.cpu

            attempt("raw", "raw consume->produce", raw)

            # 3.
            def pg1() -> tuple[float, str, Usage | None]:
                drained, shape, detail = bench.pipeline("postgresql", 1, None if "rows" in kept else keep_rows)
                kept.setdefault("shape", shape)
                return (
                    drained.rate,
                    (
                        f"{detail}; {shape.ratio(shape.rows):.2f} ledger rows and "
                        f"{shape.ratio(shape.disclosed):.2f} partner records per event"
                    ),
                    drained.cpu,
                )

            attempt("pg1", "pipeline, PostgreSQL (app role), 1 worker", pg1)

            # 4.
            def floor() -> tuple[float, str, Usage | None]:
                shape = kept.get("shape")
                if not isinstance(shape, LedgerShape):
                    raise RuntimeError("needs the PostgreSQL 1-worker run's ledger")
                settings = bench.fresh("floor")
                ends = bench.publish_backlog(settings)
                columns = [c.name for c in LedgerEntry.__table__.columns]
                rows = kept["rows"]
                assert isinstance(rows, list)  # keep_rows' list of ledger rows
                with scratch_schema() as engine:
                    t, copied, produced = baselines.io_floor(
                        settings,
                        bench.event_topics(settings),
                        sum(ends.values()),
                        shape.per_event,
                        backlog.partner_topics(settings),
                        engine,
                        columns,
                        rows,
                        base.batch_size,
                        base.batch_window_s,
                        bench.cpu_groups(),
                    )
                n = sum(ends.values())
                return (
                    t.rate,
                    (
                        f"timed {t.events:,} events in {t.seconds:.1f} s; {copied / n:.2f} rows COPYd and "
                        f"{produced / n:.2f} records produced per event"
                    ),
                    t.cpu,
                )

            attempt("floor", "I/O floor (decode, COPY, produce, commit)", floor)

            # 5.
            def pipeline(backend: str, workers: int) -> Callable[[], tuple[float, str, Usage | None]]:
                def run() -> tuple[float, str, Usage | None]:
                    drained, _shape, detail = bench.pipeline(backend, workers)
                    return drained.rate, detail, drained.cpu

                return run

            attempt("pg2", "pipeline, PostgreSQL (app role), 2 workers", pipeline("postgresql", 2))
            if not args.no_sqlite:
                attempt("sq1", "pipeline, SQLite, 1 worker", pipeline("sqlite", 1))
                attempt("sq2", "pipeline, SQLite, 2 workers", pipeline("sqlite", 2))

        kept.pop("rows", None)

        # 6.
        latencies: list[LatencyRun] = []
        relays: list[tuple[str, Stage]] = []
        alone: dict[float, Stage] = {}  # the fanned-out Kafka loop alone, by offered load
        one: LatencyRun | None = None  # the 1-worker latency sweep
        if not args.no_latency:
            for n in latency_workers:
                backlog_rate = runs.get("pg1" if n == 1 else "pg2", Run("")).rate
                todo = [(r, s) for r, s in loads if backlog_rate is None or r <= 1.25 * backlog_rate]
                skipped = [r for r, _ in loads if (r, _) not in todo]
                log(
                    f"latency, PostgreSQL, {n} worker(s): loads {', '.join(f'{r:.0f}' for r, _ in todo)}/s"
                    + (
                        f" (skipped {', '.join(f'{r:.0f}' for r in skipped)}/s: above 1.25x the backlog rate)"
                        if skipped
                        else ""
                    )
                )
                result = LatencyRun(str(n))
                latencies.append(result)
                try:
                    result.stages = bench.latency(n, todo, latency_env)
                    for s in result.stages:
                        log(describe_stage(s))
                except Exception as exc:
                    result.failure = f"{type(exc).__name__}: {exc}"
                    log(f"  FAILED: {result.failure}")
            if args.source_linger_ms:
                # The embedded broker's CPU grows with the number of record batches it stores
                # and serves: larger source batches show how much of the latency is the broker's.
                label = f"1, source linger.ms={args.source_linger_ms}"
                log(f"latency, PostgreSQL, {label}: {args.headline_load:.0f}/s")
                result = LatencyRun(label, sweep=False)
                latencies.append(result)
                try:
                    result.stages = bench.latency(
                        1,
                        [(args.headline_load, args.headline_seconds)],
                        latency_env,
                        source={"linger.ms": args.source_linger_ms},
                    )
                    for s in result.stages:
                        log(describe_stage(s))
                except Exception as exc:
                    result.failure = f"{type(exc).__name__}: {exc}"
                    log(f"  FAILED: {result.failure}")
            # The Kafka loop alone, at the headline load: what consume settings cost by themselves;
            # then fanned out as the pipeline's disclosures, over the 1-worker sweep's loads in its
            # order, so each load meets the same broker history as the pipeline's (``alone``).
            relay_load = (args.headline_load, args.stage_seconds)
            one = next((r for r in latencies if r.workers == "1"), None)  # the sweep the loop alone follows
            swept = {st.load for st in one.stages} if one is not None else set()
            sweep = [(r, s) for r, s in loads if r in swept]
            close = (
                f"consume({base.batch_size}, timeout=0.01), fetch.wait.max.ms=10 (close to the processor's: "
                "first record, then what is buffered, ACCORD_FETCH_WAIT_MAX_MS=10)"
            )
            for label, window, fan_out, overrides, plan in (
                (
                    f"consume({base.batch_size}, timeout={base.batch_window_s}), librdkafka's default fetch wait "
                    "(the processor's settings before it took what is buffered); one topic of one partition",
                    base.batch_window_s,
                    False,
                    {},
                    [relay_load],
                ),
                (f"{close}; one topic of one partition", 0.01, False, {"fetch.wait.max.ms": 10}, [relay_load]),
                (
                    f"{close}; each event to the partner topics the 1-worker sweep disclosed it to (the "
                    "pipeline's partner records), the sweep's loads in its order",
                    0.01,
                    True,
                    {"fetch.wait.max.ms": 10},
                    sweep or [relay_load],
                ),
            ):
                log(f"latency of the Kafka loop alone (consume, produce, flush, commit), {label} ...")
                try:
                    stages = bench.relay_latency(plan, window, fan_out, **overrides)
                    relays.extend((label, st) for st in stages)
                    if fan_out:
                        alone = {st.load: st for st in stages}
                    for st in stages:
                        log(describe_stage(st))
                except Exception as exc:
                    log(f"  FAILED: {type(exc).__name__}: {exc}")

        # 7.
        if runs:
            print()
            print(
                f"Throughput, {args.events:,}-event backlog, same broker and records "
                f"({os.cpu_count()} CPUs, Tansu in memory, PostgreSQL {base_pg_version()}):"
            )
            print()
            print(
                f"Best of {args.rounds} interleaved tries each (all tries in the last column); CPU per event is the "
                "best try's."
            )
            print()
            print(
                "| run | events/s | ratio to raw | ratio to floor | CPU µs/event: Python / PostgreSQL / broker | tries |"
            )
            print("|---|---:|---:|---:|---:|---:|")
            raw_rate = runs.get("raw", Run("")).rate
            floor_rate = runs.get("floor", Run("")).rate
            for key in ("raw", "floor", "pg1", "pg2", "sq1", "sq2"):
                r = runs.get(key)
                if r is None:
                    continue
                each = ", ".join("failed" if t.rate is None else f"{t.rate:,.0f}" for t in tries.get(key, []))
                if any(t.rate is None for t in tries.get(key, [])):
                    ok = False
                if r.rate is None:
                    print(f"| {r.label} | failed | - | - | - | {each} |")
                    continue
                print(
                    f"| {r.label} | {r.rate:,.0f} | {ratio(r.rate, raw_rate)} | {ratio(r.rate, floor_rate)} | "
                    f"{r.cost()} | {each} |"
                )
        pg1_rate, pg2_rate = runs.get("pg1", Run("")).rate, runs.get("pg2", Run("")).rate
        if pg1_rate and pg2_rate:
            print(f"\n2 workers / 1 worker on PostgreSQL: {pg2_rate / pg1_rate:.2f}x")
        if latencies:
            print()
            setting = (
                (", ".join(f"{k}={v}" for k, v in latency_env.items()) + " (NOT the defaults)")
                if latency_env
                else f"default settings, batch window {base.batch_window_s * 1000:.0f} ms"
            )
            print(
                f"Latency, publish -> partner record (one sample per partner record), PostgreSQL (app role), {setting}:"
            )
            print()
            print(
                "| workers | offered events/s | achieved | partner records | p50 ms | p99 ms | max ms "
                "| p99 ms: publish -> produced / produced -> partner "
                "| oldest record of a batch when taken, p50 / p99 ms (bucket bounds) "
                "| CPU cores: processor / PostgreSQL / broker / bench |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for result in latencies:
                if result.failure is not None:
                    ok = False
                    print(f"| {result.workers} | failed | | | | | | | | |")
                    continue
                for s in result.stages:
                    cores = " / ".join(
                        f"{s.cores[k]:.2f}" if k in s.cores else "-"
                        for k in ("processor", "postgres", "broker", "bench")
                    )
                    print(
                        f"| {result.workers} | {s.load:,.0f} | {s.achieved:,.0f} | {s.samples:,} | {s.p50_ms:.0f} | "
                        f"{s.p99_ms:.0f} | {s.max_ms:.0f} | {s.p99_in_ms:.0f} / {s.p99_out_ms:.0f} | "
                        f"{s.age_p50_ms:.0f} / {s.age_p99_ms:.0f} | {cores} |"
                    )
            print()
            for result in latencies:
                if result.failure is not None or not result.sweep:
                    continue
                best = None
                for s in result.stages:  # loads ascend: the highest before the first one over 100 ms
                    if not s.p99_ms < 100:
                        break
                    best = s.load
                lowest = result.stages[0] if result.stages else None
                text_best = (
                    f"{best:,.0f} events/s"
                    if best is not None
                    else f"none: p99 was {lowest.p99_ms:.0f} ms already at {lowest.load:,.0f}/s"
                    if lowest
                    else "-"
                )
                print(f"{result.workers} worker(s): highest offered load with p99 < 100 ms: {text_best}")
        if relays:
            print()
            print(
                "The Kafka loop alone (consume, produce keyed by event, flush, commit; no decoding, no decisions, "
                "no ledger; the relay is a thread of the bench):"
            )
            print()
            print(
                "| consumer; out topics | offered events/s | records | p50 ms | p99 ms | max ms "
                "| p99 ms: publish -> produced / produced -> partner | CPU cores: broker / bench |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            for label, st in relays:
                cores = " / ".join(f"{st.cores[k]:.2f}" if k in st.cores else "-" for k in ("broker", "bench"))
                print(
                    f"| {label} | {st.load:,.0f} | {st.samples:,} | {st.p50_ms:.0f} | {st.p99_ms:.0f} | {st.max_ms:.0f} "
                    f"| {st.p99_in_ms:.0f} / {st.p99_out_ms:.0f} | {cores} |"
                )
        if alone and one is not None and one.failure is None:
            print()
            print(
                "The pipeline (1 worker) against the Kafka loop alone, fanned out the same way, each load after the "
                "same loads on the same broker (what the processor adds is the difference):"
            )
            print()
            print("| offered events/s | p50 ms: pipeline / loop alone | p99 ms: pipeline / loop alone | p99 added ms |")
            print("|---:|---:|---:|---:|")
            for s in one.stages:
                a = alone.get(s.load)
                if a is not None:
                    print(
                        f"| {s.load:,.0f} | {s.p50_ms:.0f} / {a.p50_ms:.0f} | {s.p99_ms:.0f} / {a.p99_ms:.0f} "
                        f"| {s.p99_ms - a.p99_ms:.0f} |"
                    )
        for attempts in tries.values():
            for r in attempts:
                if r.failure:
                    print(f"\n{r.label} failed: {r.failure}")
        for result in latencies:
            if result.failure is not None:
                print(f"\nlatency with {result.workers} worker(s) failed: {result.failure}")
        print(f"\n(whole benchmark: {time.perf_counter() - begun:.0f} s)")
        return 0 if ok else 1
    except BaseException:
        ok = False
        raise
    finally:
        gc.collect()  # the clients held in callback cycles close now, not complaining after the broker is gone
        if ours:
            devstack.down(broker)
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"(logs of every run kept in {root})")


def base_pg_version() -> str:
    from bench.roles import ADMIN_URL

    try:
        engine = create_engine(ADMIN_URL)
        with engine.connect() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
        engine.dispose()
        return str(version).split()[0]
    except Exception:
        return "?"


if __name__ == "__main__":
    sys.exit(main())
