"""``accord schemas ACTION``: the event schemas the bus carries.

``list`` names each event type (bus.topics.EVENT_TYPES) with its topic under the
current ACCORD_TOPIC_PREFIX and its Avro schema file. ``check`` (schema
compatibility, from ``schemas.compatibility``) goes here too: a ``cmd_schemas_check``
beside ``cmd_schemas_list`` and one parser in :func:`register`.
"""

from __future__ import annotations

import argparse

from accord.cli.common import Subparsers
from bus.settings import Settings

__all__ = ["cmd_schemas_list", "register"]


def cmd_schemas_list(args: argparse.Namespace, settings: Settings) -> int:
    from bus.topics import EVENT_TYPES, TopicNames
    from schemas.serde import SCHEMA_DIR

    names = TopicNames(settings.topic_prefix)
    for event_type in EVENT_TYPES:
        print(f"{event_type:12} {names.event(event_type):32} {SCHEMA_DIR.name}/{event_type}.avsc")
    return 0


# `accord schemas check` (schemas/compatibility.py): define cmd_schemas_check(args, settings) here,
# calling that module's check and printing its result, and add its parser in register() below.


def register(sub: Subparsers) -> None:
    """``schemas list`` (and, once schemas/compatibility.py is in, ``schemas check``)."""
    schemas_sub = sub.add_parser("schemas", help="the event schemas the bus carries").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = schemas_sub.add_parser("list", help="every event type, its topic and its Avro schema file")
    p.set_defaults(func=cmd_schemas_list)
