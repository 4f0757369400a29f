"""The ``accord`` command line: the parser, and one line on stderr for every error.

Each area's commands live in their own module (``bus``, ``web``, ``consent``, ``ledger``,
``agreements``, ``schemas``), each a thin function (parse, call the library, print)
registered by the module's ``register(subparsers)``. Here: the parser assembled from
them, and :func:`main`, which turns any error into one line and an exit code.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from accord.cli import agreements, bus, consent, ledger, relay, schemas, web
from bus.settings import Settings, get_settings

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["build_parser", "describe_error", "main"]

Command = Callable[[argparse.Namespace, Settings], int]

AREAS = (bus, relay, web, consent, ledger, agreements, schemas)  # the order `accord --help` lists their commands in


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accord", description="Accord: data-sharing bus with a consent ledger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for area in AREAS:
        area.register(sub)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """The command as typed (``ledger verify``, ``topics create``, ``consume``), for error lines."""
    sub = next((v for v in (getattr(args, "action", None), getattr(args, "what", None)) if isinstance(v, str)), None)
    return f"{args.command} {sub}" if sub else args.command


# Commands that run as services: their last word is a log line like the rest (one JSON object
# when ACCORD_LOG_FORMAT=json was asked for); every other command's is for the person who typed it.
SERVICES = frozenset({"run processor", "serve", "relay", "consent serve"})


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _settings_problems(exc: ValidationError) -> str:
    """A refused ACCORD_* setting, named by its variable; the value given is never repeated."""
    parts = []
    for err in exc.errors():  # pydantic ValidationError
        field, *inside = (str(p) for p in err["loc"])
        if field == "kafka" and inside:  # given as ACCORD_KAFKA_<NAME> (or inside ACCORD_KAFKA's JSON)
            name = "ACCORD_KAFKA_" + inside[0].upper().replace(".", "_")
        else:  # a key inside a JSON setting, e.g. ACCORD_TOPIC_PARTITIONS["custody"]
            name = "ACCORD_" + field.upper() + "".join(f'["{key}"]' for key in inside)
        parts.append(f"{name}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts) + "; fix the environment variable"


def _kafka_problem(exc: Exception, settings: Settings | None) -> str:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    servers = settings.bootstrap_servers if settings is not None else "ACCORD_BOOTSTRAP_SERVERS"
    detail = _one_line(err.str() if err is not None else exc)
    unreachable = (
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._TIMED_OUT,
        KafkaError._RESOLVE,
        KafkaError._MSG_TIMED_OUT,
    )
    if err is not None and err.code() in unreachable:
        return (
            f"no Kafka broker answered at {servers} ({detail}); start it (`accord dev up` for the "
            "embedded one) or set ACCORD_BOOTSTRAP_SERVERS"
        )
    return f"the Kafka broker at {servers} refused: {detail}"


def describe_error(exc: Exception, settings: Settings | None, command: str) -> tuple[list[str], int] | None:
    """The lines a person sees for an expected error, and the exit code; None when unexpected.

    One line each (what is wrong, where, what to do); agreements refused print
    every problem as ``file:line: field: problem``, as ``agreements validate`` does.
    Database errors never echo a statement's parameters; no line repeats a
    record's values (I6).
    """
    from confluent_kafka import KafkaException
    from pydantic import ValidationError
    from pydantic_settings import SettingsError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from accord.dev.devstack import DevStackError
    from agreements.loader import AgreementError, AgreementsRefused
    from ledger.roles import LedgerRoleError, LedgerSchemaMissing

    prefix = f"accord {command}: "
    if isinstance(exc, AgreementsRefused):
        lines = [_one_line(p) for p in exc.problems]
        lines.append(
            f"{prefix}{len(exc.problems)} problem(s) in the agreements of {exc.directory}; nothing done: "
            f"fix them (`accord agreements validate {exc.directory}` lists them)"
        )
        return lines, 2
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return [prefix + _settings_problems(exc)], 2
    if isinstance(exc, SettingsError):  # a dict or list setting whose variable is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"ACCORD_{field.group(1).upper()}" if field else "an ACCORD_* variable"
        return [f"{prefix}{name} is not valid JSON (a JSON object is expected); fix the environment variable"], 2
    if isinstance(exc, DBAPIError):
        from bus.database import describe_database_error

        url = ""
        if settings is not None:
            url = (
                settings.ledger_owner_url
                if command == "ledger init" and settings.ledger_owner_url
                else (settings.resolved_ledger_url)
            )
        return [prefix + describe_database_error(exc, url or "sqlite://")], 2
    if isinstance(exc, ArgumentError):  # a URL SQLAlchemy cannot parse; the text does not echo it
        return [
            f"{prefix}ACCORD_LEDGER_URL (or ACCORD_LEDGER_OWNER_URL): {_one_line(exc)}; "
            "give a URL such as postgresql+psycopg://user@host:5432/accord"
        ], 2
    if isinstance(exc, KafkaException):
        return [prefix + _kafka_problem(exc, settings)], 2
    if isinstance(exc, OSError) and exc.filename is not None:  # a path the person gave, or the state folder
        reason = (exc.strerror or type(exc).__name__).lower()
        return [f"{prefix}{exc.filename}: {reason}; check the path and its permissions"], 2
    if isinstance(exc, ValidationError):  # pydantic on input: field and message, never the input value
        return [prefix + "; ".join(f"{'.'.join(map(str, e['loc'])) or '(input)'}: {e['msg']}" for e in exc.errors())], 2
    from bus.errors import NotDelivered

    if isinstance(exc, NotDelivered):
        servers = settings.bootstrap_servers if settings is not None else "ACCORD_BOOTSTRAP_SERVERS"
        if exc.what.startswith("checkpoint"):
            return [
                f"{prefix}{_one_line(exc)}: no Kafka broker took it at {servers}; the checkpoint is stored in "
                "the ledger, the processor publishes the next one (or start the broker and sign again after "
                "new entries)"
            ], 2
        return [
            f"{prefix}{_one_line(exc)}: no Kafka broker took it at {servers}; check that the broker is "
            "running and ACCORD_BOOTSTRAP_SERVERS points at it"
        ], 2
    expected = (
        AgreementError,
        DevStackError,
        LedgerRoleError,
        LedgerSchemaMissing,
        PermissionError,
        TimeoutError,
        ConnectionError,
        ValueError,
    )  # ValueError covers SerdeError and every refusal of input
    if isinstance(exc, expected):
        return [prefix + _one_line(exc)], 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error becomes one line on stderr and exit 2, never a traceback.

    An unexpected error also gives one line (its kind and where, never its text,
    which could hold a record's values) and exit 70; ACCORD_LOG_LEVEL=DEBUG adds
    the traceback.
    """
    args = build_parser().parse_args(argv)
    command = _command_name(args)
    settings: Settings | None = None
    try:
        settings = get_settings()
        from bus.logs import configure_logging

        configure_logging(settings)
        command_fn: Command = args.func
        return command_fn(args, settings)
    except KeyboardInterrupt:
        print(f"accord {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the command's last word: any failure is described, not a traceback
        from bus.logs import error_line, json_requested, where_raised

        service = command in SERVICES

        def last_word(line: str, error: BaseException = exc) -> None:
            if service:
                error_line(line, error)
            else:
                print(line, file=sys.stderr)

        debug = (
            settings.log_level if settings is not None else os.environ.get("ACCORD_LOG_LEVEL", "")
        ).upper() == "DEBUG"
        if debug and not (service and json_requested()):  # error_line carries the traceback at DEBUG
            import traceback

            traceback.print_exc()
        described = describe_error(exc, settings, command)
        if described is not None:
            lines, code = described
            for line in lines:
                last_word(line)
            return code
        last_word(
            f"accord {command}: unexpected error ({type(exc).__name__} at {where_raised(exc.__traceback__)}); "
            "run with ACCORD_LOG_LEVEL=DEBUG for the traceback"
        )
        return 70
