"""``accord agreements list|publish|validate|explain``: the data-sharing agreements, as files and on the feed.

One function per action; ``register`` adds them under ``accord agreements``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, datetime
from pathlib import Path

from accord.cli.common import Subparsers, ledger_engine
from bus.settings import Settings

__all__ = [
    "agreements_dir",
    "cmd_agreements_explain",
    "cmd_agreements_list",
    "cmd_agreements_publish",
    "cmd_agreements_validate",
    "register",
]


def agreements_dir(args: argparse.Namespace, settings: Settings) -> Path:
    """The folder given on the command line, else ACCORD_AGREEMENTS_DIR."""
    return Path(args.dir) if args.dir else settings.agreements_dir


def cmd_agreements_list(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import load_dir

    for a in sorted(load_dir(agreements_dir(args, settings)), key=lambda a: (a.id, a.version)):
        print(
            f"{a.key:40} {a.status.value:9} {a.consent_mode.value:12} {a.purpose.value:34} "
            f"{','.join(a.providers)} -> {','.join(a.recipients)} [{','.join(a.event_types)}]"
        )
    return 0


def cmd_agreements_publish(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.agreement_feed import FeedNotReached, PublishUnchecked, publish_agreements
    from agreements import load_dir

    directory = agreements_dir(args, settings)
    agreements = load_dir(directory, partners_file=settings.partners_file)
    try:
        done = publish_agreements(settings, agreements)  # PublishConflict (a ValueError): one line, exit 2
    except PublishUnchecked as exc:
        print(f"accord agreements publish: {exc}", file=sys.stderr)
        return 2
    except FeedNotReached as exc:
        print(
            f"accord agreements publish: {exc} at {settings.bootstrap_servers}: it is read first, so that no "
            "published version is published again with other content; nothing was published",
            file=sys.stderr,
        )
        return 2
    repaired = (
        f" ({done.repaired} published again: the feed's last record for them was another's, which compaction keeps)"
        if done.repaired
        else ""
    )
    print(f"{done.new} agreements published from {directory}; {done.on_feed} were on the feed already{repaired}")
    return 0


def cmd_agreements_validate(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import validate_dir

    directory = agreements_dir(args, settings)
    problems = validate_dir(directory, partners_file=settings.partners_file)
    for problem in problems:
        print(problem, file=sys.stderr)
    files = len(list(directory.glob("*.yaml"))) if directory.is_dir() else 0
    if problems:
        print(
            f"{len(problems)} problems in {directory} ({files} files) and the partner registry {settings.partners_file}"
        )
        return 1
    from agreements import lapsed, load_dir

    for note in lapsed(load_dir(directory, partners_file=settings.partners_file)):
        print(f"note: {note}", file=sys.stderr)
    print(f"{files} agreements in {directory}: all valid, every recipient in {settings.partners_file}")
    return 0


def cmd_agreements_explain(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, time

    from accord.sharing.decide import Context, subject_key
    from accord.sharing.explain import EventError, explain, parse_event, render_text
    from agreements import IdentifierTreatment, load_dir
    from agreements.partners import load_partners

    path = Path(args.event)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        event_type, record = parse_event(data, args.type)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"accord agreements explain: {path}: not valid JSON: {exc}", file=sys.stderr)
        return 2
    except EventError as exc:
        print(f"accord agreements explain: {path}: {exc}", file=sys.stderr)
        return 2
    now = datetime.combine(args.date, time(12), tzinfo=UTC) if args.date else datetime.now(UTC)
    consents = []
    if not args.no_consent:
        import consent

        engine = ledger_engine(settings)  # reads consent; refuses a database that does not exist
        consents = consent.history(engine, [subject_key(event_type, record)]).get(subject_key(event_type, record), [])
    agreements = load_dir(agreements_dir(args, settings))
    pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
    if not pseudonym_key and any(
        a.identifier_treatment is IdentifierTreatment.PSEUDONYMISED and event_type in a.event_types for a in agreements
    ):
        print(
            f"accord agreements explain: an agreement pseudonymises {event_type} identifiers; set "
            "ACCORD_PSEUDONYM_KEY (the processor's) to see the tokens its recipients would get",
            file=sys.stderr,
        )
        return 2
    context = Context(now, load_partners(settings.partners_file), pseudonym_key)
    result = explain(event_type, record, agreements, consents, context)
    print(
        json.dumps(result.to_dict(), indent=2) if args.json else render_text(result), end="" if not args.json else "\n"
    )
    return 0


def register(sub: Subparsers) -> None:
    """``agreements list|publish|validate|explain``."""
    agreements_sub = sub.add_parser(
        "agreements", help="list, validate, explain or publish the data-sharing agreements"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")

    folder_help = "folder of agreement YAML files (default ACCORD_AGREEMENTS_DIR)"
    for action, func, help_text in (
        ("list", cmd_agreements_list, "list the agreements of a folder"),
        ("publish", cmd_agreements_publish, "publish them to the running processor (new versions apply at once)"),
        ("validate", cmd_agreements_validate, "check every file and print every problem as file:line: field: problem"),
    ):
        p = agreements_sub.add_parser(action, help=help_text)
        p.add_argument("dir", nargs="?", default=None, help=folder_help)
        p.set_defaults(func=func)

    p = agreements_sub.add_parser(
        "explain", help="which agreements an event matches, which not and why, and what each recipient would receive"
    )
    p.add_argument("event", help="one event as a JSON object (the shape `accord publish` takes per line)")
    p.add_argument("--type", default=None, help="event type; inferred when the event fits exactly one schema")
    p.add_argument("--dir", default=None, help=folder_help)
    p.add_argument("--date", type=date.fromisoformat, default=None, help="decide as on this day (default today)")
    p.add_argument("--no-consent", action="store_true", help="ignore the consent database (as if nothing recorded)")
    p.add_argument("--json", action="store_true", help="the explanation as JSON")
    p.set_defaults(func=cmd_agreements_explain)
