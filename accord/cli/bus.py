"""``accord dev|topics|publish|run|consume|demo``: the bus itself, from the embedded broker to a partner's view.

Each command parses, calls the library, prints; ``register`` adds them to the parser.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from accord.cli.common import Subparsers, known_agency, load_agreements, quiet_kafka
from accord.cli.progress import progress
from bus.settings import Settings
from bus.topics import EVENT_TYPES

if TYPE_CHECKING:
    from consumers import Disclosure, Retraction

__all__ = ["cmd_consume", "cmd_demo", "cmd_dev", "cmd_publish", "cmd_run", "cmd_topics", "register"]


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from accord.dev import devstack

    if args.action == "up":
        print(devstack.up(settings).describe())
    elif args.action == "down":
        print("broker stopped" if devstack.down(settings) else "broker was not running")
    else:
        st = devstack.status(settings)
        print(st.describe())
        return 0 if st.running else 3
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    """Create the catalogue's topics as the settings size them; exit 1 if an existing one differs.

    The layout is checked before the agreements are read or the broker is asked, so a
    min.insync.replicas above the replication factor is one line naming the variables.
    """
    from agreements import recipients_by_type
    from bus import kafka
    from bus.topics import TopicLayout, TopicNames, create_topics, differences

    layout = TopicLayout.of(settings)
    specs = TopicNames(settings.topic_prefix).catalogue(recipients_by_type(load_agreements(settings)), layout)
    admin = kafka.admin(settings, **quiet_kafka(settings))
    for name, state in sorted(create_topics(admin, specs).items()):
        print(f"{state:8} {name}")
    differ = differences(admin, specs)
    for line in differ:
        print(f"accord topics create: {line}", file=sys.stderr)
    if differ:
        print(
            f"accord topics create: {len(differ)} existing topic setting(s) differ from ACCORD_TOPIC_*; Accord never "
            "changes an existing topic (more partitions would move subjects' keys): change the settings to match, "
            "or alter the topics yourself while no processor runs (docs/production.md)",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from bus import kafka
    from producers import Publisher, ingest_jsonl

    path = Path(args.file)
    known_agency(settings, args.agency)
    publisher = Publisher(settings, producer=kafka.producer(settings, **quiet_kafka(settings)))
    with progress(path.stat().st_size if path.is_file() else None, f"publishing {path.name}", unit="B") as tick:
        report = ingest_jsonl(path, args.type, args.agency, publisher, on_progress=tick)
    for refusal in report.refused:
        print(refusal.describe(path), file=sys.stderr)
    published = report.published
    assert published is not None  # ingest_jsonl flushes the publisher before it returns
    print(
        f"{report.read} lines read, {published.delivered} published, {len(report.refused)} refused, "
        f"{len(published.failed)} failed delivery"
    )
    for event_id, error in published.failed:
        print(f"delivery failed: event {event_id}: {error}", file=sys.stderr)
    if published.unconfirmed:
        print(
            f"accord publish: no Kafka broker at {settings.bootstrap_servers} confirmed {published.unconfirmed} "
            "event(s): check that the broker is running and ACCORD_BOOTSTRAP_SERVERS points at it; publishing "
            "the file again is safe (a re-sent event keeps its id, and the processor records it once)",
            file=sys.stderr,
        )
    return 1 if report.refused or published.failed else 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.app import run_processor

    if args.workers < 1:
        print(f"accord run: --workers must be at least 1, not {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1:
        from accord.processor.workers import run_workers

        return run_workers(args.workers, settings.health_port)
    try:
        code = run_processor(settings)
    except ValueError as exc:  # a setting the processor cannot start without (e.g. ACCORD_PSEUDONYM_KEY)
        from bus.logs import error_line

        error_line(f"accord run: {exc}", exc)
        return 2
    if not settings.leave_group_on_stop:
        # End the process without running the consumer's destructor, which would leave the
        # group (ACCORD_LEAVE_GROUP_ON_STOP): everything is committed and flushed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    """Print what a partner receives, without taking it from the partner's own application.

    With no ``--group`` it reads in a consumer group of its own, new each run, from the
    start of the partner's topics, and commits nothing: the partner SDK's group
    (``accord-partner-<id>``) is the partner application's, and a record committed there
    by someone looking is one the application never sees. With ``--group`` it reads on
    from that group's position and commits what it printed.
    """
    import uuid

    from consumers import ForeignRecord, Subscription

    agreements = load_agreements(settings)
    group = args.group or f"accord-consume-{args.partner}-{uuid.uuid4().hex[:12]}"
    foreign: list[ForeignRecord] = []

    def passed_over(exc: ForeignRecord) -> None:
        foreign.append(exc)
        print(f"accord consume: {exc}", file=sys.stderr)

    count = 0
    with Subscription(settings, args.partner, agreements, group_id=group, client_config=quiet_kafka(settings)) as sub:
        try:
            for d in sub.iter(max_records=args.max, idle_timeout=args.idle, on_foreign=passed_over):
                count += 1
                print(_consumed_line(d, as_json=args.json), flush=True)
        finally:  # what was printed stays printed: a rerun in the same group goes on after it
            if args.group:
                sub.commit()
    print(f"{count} records (disclosures and retractions) received by {args.partner}", file=sys.stderr)
    if foreign:
        print(
            f"accord consume: {len(foreign)} record(s) on {args.partner}'s topics were not written by Accord's "
            "processor and were passed over: find who produces to partner topics (only the processor should)",
            file=sys.stderr,
        )
        return 1
    return 0


def _consumed_line(d: Disclosure | Retraction, *, as_json: bool) -> str:
    """One printed line for a disclosure or a retraction notice."""
    from consumers import Retraction
    from schemas.serde import to_json

    if isinstance(d, Retraction):
        notice = {
            "retraction_id": d.retraction_id,
            "retracts": d.retracts_disclosure_id,
            "agreement": d.agreement,
            "reason": d.reason,
            "since": to_json(d.since),
            "fields": list(d.fields),
            "ledger_seq": d.ledger_seq,
        }
        return json.dumps(notice) if as_json else f"RETRACTION {notice}"
    if as_json:
        return json.dumps(
            {
                "disclosure_id": d.disclosure_id,
                "agreement": d.agreement,
                "event_type": d.event_type,
                "ledger_seq": d.ledger_seq,
                "record": to_json(d.record),
            }
        )
    return f"{d.disclosure_id} {d.agreement} {d.event_type} seq={d.ledger_seq} {to_json(d.record)}"


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from accord.dev.demo import run_demo

    return run_demo(settings, n_events=args.events, progress=progress)


def _count(text: str) -> int:
    """An argparse type: a whole number of records, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"give a number of records of at least 1, not {text}")
    return value


IDLE_MOST_S = 86_400.0  # a day: ``--idle 1e308`` waited as good as for ever


def _seconds(text: str) -> float:
    """An argparse type: seconds above 0 and at most IDLE_MOST_S (``inf`` or ``nan`` would wait for ever)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= IDLE_MOST_S:  # false for nan too
        raise argparse.ArgumentTypeError(f"give a number of seconds above 0 and at most {IDLE_MOST_S:,.0f}, not {text}")
    return value


def register(sub: Subparsers) -> None:
    """``dev``, ``topics``, ``publish``, ``run``, ``consume`` and ``demo``."""
    p = sub.add_parser("dev", help="start, stop or check the embedded broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("topics", help="create every topic of the catalogue (idempotent)")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("publish", help="publish a JSON-lines file of events")
    p.add_argument("--agency", required=True, help="publishing agency id; must match each event's envelope")
    p.add_argument(
        "--type", required=True, choices=EVENT_TYPES, help="an event type of the catalogue (schemas/events/)"
    )
    p.add_argument("file")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("run", help="run a stream processor")
    p.add_argument("what", choices=["processor"])
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run N processor processes in one consumer group (default 1); with a health "
        "port set, worker i listens on ACCORD_HEALTH_PORT + i",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("consume", help="print the disclosures a partner receives")
    p.add_argument("--partner", required=True)
    p.add_argument("--max", type=_count, default=None, metavar="N", help="stop after N records")
    p.add_argument(
        "--idle", type=_seconds, default=10.0, metavar="S", help="stop after S seconds with nothing new (default 10)"
    )
    p.add_argument(
        "--group",
        default=None,
        help="read on from this consumer group's position and commit what is printed (default: a new group "
        "each run, from the start, committing nothing; never the partner application's group)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded stack")
    p.add_argument("--events", type=int, default=1200)
    p.set_defaults(func=cmd_demo)
