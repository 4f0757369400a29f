"""The ``accord`` command line: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from accord.settings import Settings, get_settings


def _agreements(settings: Settings):
    from agreements import load_dir

    return load_dir(settings.agreements_dir)


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from accord import devstack

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
    from accord import kafka
    from accord.topics import TopicNames, create_topics
    from agreements import recipients_by_type

    specs = TopicNames(settings.topic_prefix).catalogue(recipients_by_type(_agreements(settings)))
    for name, state in sorted(create_topics(kafka.admin(settings), specs).items()):
        print(f"{state:8} {name}")
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from producers import Publisher, ingest_jsonl

    path = Path(args.file)
    report = ingest_jsonl(path, args.type, args.agency, Publisher(settings))
    for refusal in report.refused:
        print(refusal.describe(path), file=sys.stderr)
    published = report.published
    print(
        f"{report.read} lines read, {published.delivered} published, {len(report.refused)} refused, "
        f"{len(published.failed)} failed delivery"
    )
    for event_id, error in published.failed:
        print(f"delivery failed: event {event_id}: {error}", file=sys.stderr)
    return 1 if report.refused or published.failed else 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from faust import Worker

    from accord import kafka
    from accord.database import engine_for, init_database
    from accord.agreement_feed import AgreementSet
    from accord.processor import BatchHandler, build_app
    from accord.sweeper import RetractionSweeper
    from accord.topics import TopicNames
    from agreements.recipient_schemas import recipient_catalogue

    from agreements import IdentifierTreatment
    from agreements.partners import load_partners

    agreements = _agreements(settings)
    pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
    if not pseudonym_key and any(a.identifier_treatment is IdentifierTreatment.PSEUDONYMISED for a in agreements):
        print("accord run: an agreement pseudonymises identifiers; set ACCORD_PSEUDONYM_KEY", file=sys.stderr)
        return 2
    partner_classes = load_partners(settings.partners_file)
    engine = engine_for(settings)
    init_database(engine)

    agreement_set = AgreementSet(agreements, recipient_catalogue(agreements))

    def handler() -> BatchHandler:
        return BatchHandler(
            agreement_set,
            engine,
            kafka.producer(settings),
            TopicNames(settings.topic_prefix),
            partner_classes,
            pseudonym_key,
        )

    def sweeper() -> RetractionSweeper:
        return RetractionSweeper(
            engine,
            agreement_set,
            kafka.producer(settings),
            TopicNames(settings.topic_prefix),
            partner_classes,
        )

    app = build_app(settings, handler, sweeper, agreement_set)
    Worker(app, loglevel=settings.log_level.lower().replace("warning", "warn"), quiet=True).execute_from_commandline()
    return 0


def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from consumers import Retraction, Subscription
    from schemas.serde import to_json

    with Subscription(settings, args.partner, _agreements(settings), group_id=args.group) as sub:
        count = 0
        for d in sub.iter(max_records=args.max, idle_timeout=args.idle):
            count += 1
            if isinstance(d, Retraction):
                notice = {"retraction_id": d.retraction_id, "retracts": d.retracts_disclosure_id,
                          "agreement": d.agreement, "reason": d.reason, "since": to_json(d.since),
                          "fields": list(d.fields), "ledger_seq": d.ledger_seq}
                print(json.dumps(notice) if args.json else f"RETRACTION {notice}")
            elif args.json:
                print(json.dumps({"disclosure_id": d.disclosure_id, "agreement": d.agreement,
                                  "event_type": d.event_type, "ledger_seq": d.ledger_seq,
                                  "record": to_json(d.record)}))
            else:
                print(f"{d.disclosure_id} {d.agreement} {d.event_type} seq={d.ledger_seq} {to_json(d.record)}")
        sub.commit()
    print(f"{count} records (disclosures and retractions) received by {args.partner}", file=sys.stderr)
    return 0


def cmd_consent(args: argparse.Namespace, settings: Settings) -> int:
    import consent
    from accord.database import engine_for, init_database

    if args.action == "serve":
        import uvicorn

        from consent.api import app_from_settings

        uvicorn.run(app_from_settings(), host=settings.api_host, port=settings.api_port, log_level="warning")
        return 0
    engine = engine_for(settings)
    init_database(engine)
    if args.subject is None:
        print("accord consent: --subject is required for deny and permit", file=sys.stderr)
        return 2
    try:
        rec = consent.record(
            engine,
            args.subject,
            consent.ConsentDecision.DENY if args.action == "deny" else consent.ConsentDecision.PERMIT,
            purpose=args.purpose,
            recipient=args.recipient,
            recipient_class=args.recipient_class,
            expires_at=args.expires,
            collected_by=args.collected_by,
            method=args.method,
            evidence_ref=args.evidence,
        )
    except ValueError as exc:
        print(f"accord consent: {exc}", file=sys.stderr)
        return 2
    scope = rec.recipient or (f"class:{rec.recipient_class}" if rec.recipient_class else "*")
    print(f"consent record {rec.id}: {rec.decision.value} purpose={rec.purpose or '*'} recipient={scope}")
    return 0


# `accord ledger ACTION`: one function per action, registered in _ledger_parsers.


def cmd_ledger_init(args: argparse.Namespace, settings: Settings) -> int:
    from accord.database import engine_for, init_database

    engine = engine_for(settings)
    init_database(engine)
    print(f"ledger ready at {engine.url.render_as_string(hide_password=True)}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    from accord.database import engine_for, init_database
    from ledger import verify

    engine = engine_for(settings)
    init_database(engine)
    result = verify(engine)
    print(result.describe())
    return 0 if result.ok else 1


def _ledger_parsers(ledger_sub: argparse._SubParsersAction) -> None:
    p = ledger_sub.add_parser("init", help="create the ledger tables and their append-only guards")
    p.set_defaults(func=cmd_ledger_init)

    p = ledger_sub.add_parser("verify", help="check the hash chain and name the first bad entry")
    p.set_defaults(func=cmd_ledger_verify)


def cmd_agreements(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import load_dir

    directory = Path(args.dir) if args.dir else settings.agreements_dir
    agreements = load_dir(directory)
    if args.action == "publish":
        from accord.agreement_feed import publish_agreements

        count = publish_agreements(settings, agreements)
        print(f"{count} agreements published from {directory}")
        return 0
    for a in sorted(agreements, key=lambda a: (a.id, a.version)):
        print(f"{a.key:40} {a.status.value:9} {a.consent_mode.value:12} {a.purpose.value:34} "
              f"{','.join(a.providers)} -> {','.join(a.recipients)} [{','.join(a.event_types)}]")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from accord.demo import run_demo

    return run_demo(settings, n_events=args.events)


def _aware_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2027-01-01T00:00:00Z")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accord", description="Accord: data-sharing bus with a consent ledger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dev", help="start, stop or check the embedded broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("topics", help="create every topic of the catalogue (idempotent)")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("publish", help="publish a JSON-lines file of events")
    p.add_argument("--agency", required=True, help="publishing agency id; must match each event's envelope")
    p.add_argument("--type", required=True, choices=["custody", "referral", "natal_care"])
    p.add_argument("file")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("run", help="run a stream processor")
    p.add_argument("what", choices=["processor"])
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("consume", help="print the disclosures a partner receives")
    p.add_argument("--partner", required=True)
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--idle", type=float, default=10.0, help="stop after this many seconds with nothing new")
    p.add_argument("--group", default=None, help="consumer group (default accord-partner-<partner>)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("consent", help="record a citizen's consent preference, or serve the consent API")
    p.add_argument("action", choices=["deny", "permit", "serve"])
    p.add_argument("--subject", default=None, help="subject key, e.g. nhs:9434765919")
    p.add_argument("--purpose", default=None)
    p.add_argument("--recipient", default=None)
    p.add_argument("--recipient-class", default=None, help="a class of recipients, e.g. nhs (see agreements/partners.yaml)")
    p.add_argument("--expires", type=_aware_datetime, default=None, help="ISO 8601 time after which the record lapses")
    p.add_argument("--collected-by", default="accord-cli", help="who recorded it (for the consent history)")
    p.add_argument("--method", default=None, help="how it was collected, e.g. paper-form, online, verbal")
    p.add_argument("--evidence", default=None, help="reference to the evidence (form id, call recording id)")
    p.set_defaults(func=cmd_consent)

    p = sub.add_parser("ledger", help="set up, verify and query the disclosure ledger")
    _ledger_parsers(p.add_subparsers(dest="action", required=True, metavar="ACTION"))

    p = sub.add_parser("agreements", help="list agreements, or publish them to the running processor")
    p.add_argument("action", choices=["list", "publish"])
    p.add_argument("dir", nargs="?", default=None, help="folder of agreement YAML files (default ACCORD_AGREEMENTS_DIR)")
    p.set_defaults(func=cmd_agreements)

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded stack")
    p.add_argument("--events", type=int, default=1200)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    from accord.logs import configure_logging

    configure_logging(settings)
    try:
        return args.func(args, settings)
    except Exception as exc:  # one clear line, no traceback, for known error kinds
        from agreements import AgreementError
        from accord.devstack import DevStackError

        if isinstance(exc, (AgreementError, DevStackError, FileNotFoundError)):
            print(f"accord {args.command}: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
