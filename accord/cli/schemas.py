"""``accord schemas ACTION``: the event schemas the bus carries.

``list`` names each event type of the catalogue (``schemas/events/``) with its topic
under the current ACCORD_TOPIC_PREFIX, its versions and its compatibility mode.
``check`` holds every type's versions to its mode (``schemas.compatibility``): CI runs
it, and the processor makes the same check before it starts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from accord.cli.common import Subparsers
from bus.settings import Settings

__all__ = ["cmd_schemas_check", "cmd_schemas_list", "register"]


def cmd_schemas_list(args: argparse.Namespace, settings: Settings) -> int:
    from bus.topics import TopicNames
    from schemas import catalogue

    names = TopicNames(settings.topic_prefix)
    events = catalogue.load(args.events) if args.events else catalogue.default()
    for t in events:
        versions = ", ".join(f"v{v.number}" for v in t.versions)
        print(f"{t.name:18} {names.event(t.name):36} {versions:10} {t.compatibility}")
    return 0


def cmd_schemas_check(args: argparse.Namespace, settings: Settings) -> int:
    """One line per problem on stderr and exit 1; one line of what was checked on stdout and 0."""
    from schemas import catalogue
    from schemas.compatibility import check_catalogue

    problems = check_catalogue(args.events)
    for line in problems:
        print(f"accord schemas check: {line}", file=sys.stderr)
    if problems:
        return 1
    events = catalogue.load(args.events) if args.events else catalogue.default()
    versions = sum(len(t.versions) for t in events)
    print(
        f"{len(events.types)} event types, {versions} versions: every type's versions are compatible "
        "as its mode requires"
    )
    return 0


def register(sub: Subparsers) -> None:
    """``schemas list`` and ``schemas check``."""
    schemas_sub = sub.add_parser("schemas", help="the event schemas the bus carries").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    events_help = "the catalogue folder (<type>/v<N>.avsc); default: the package's schemas/events/"
    p = schemas_sub.add_parser("list", help="every event type, its topic, versions and compatibility mode")
    p.add_argument("--events", type=Path, default=None, metavar="DIR", help=events_help)
    p.set_defaults(func=cmd_schemas_list)
    p = schemas_sub.add_parser("check", help="refuse versions of an event type that its compatibility mode forbids")
    p.add_argument("--events", type=Path, default=None, metavar="DIR", help=events_help)
    p.set_defaults(func=cmd_schemas_check)
