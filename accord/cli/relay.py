"""``accord relay``: a source system's transactional outbox, published to the bus (docs/relay.md).

Runs until SIGTERM or SIGINT (the batch in hand is finished, flushed and remembered
first), or with ``--once`` until no row is ready, for cron and tests. A setting, a table
or a database that is wrong at start-up is one line and exit 2 (one JSON log line with
``ACCORD_LOG_FORMAT=json``); once running, the database or the broker going away is a
wait, never an exit, and a database that refuses the relay's own statements (a trigger,
a constraint) is one line and exit 2.
"""

from __future__ import annotations

import argparse
import signal
import threading
from types import FrameType

from accord.cli.common import Subparsers, known_agency
from bus.settings import Settings

__all__ = ["cmd_relay", "register"]


def cmd_relay(args: argparse.Namespace, settings: Settings) -> int:
    from sqlalchemy.exc import DBAPIError

    from bus.database import describe_database_error
    from bus.logs import error_line
    from producers.outbox import Relay, RelayError

    stop = threading.Event()

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop)
    # A service's last word goes out as its logs do (one JSON line with ACCORD_LOG_FORMAT=json).
    if args.agency is not None:
        try:
            known_agency(settings, args.agency)
        except ValueError as exc:
            error_line(f"accord relay: {exc}", exc)
            return 2
    try:
        relay = Relay(settings, agency=args.agency)  # a URL that does not parse is a RelayError naming its variable
        report = relay.run(stop, once=args.once)
    except RelayError as exc:
        error_line(f"accord relay: {exc}", exc)
        return 2
    except DBAPIError as exc:
        line = describe_database_error(exc, settings.relay_source_url).replace(
            "ACCORD_LEDGER_URL", "ACCORD_RELAY_SOURCE_URL"
        )
        error_line(f"accord relay: {line}", exc)
        return 2
    held = (
        f"; later rows wait behind a transaction still open on the database server (for "
        f"{settings.relay_once_wait_s:g} s, ACCORD_RELAY_ONCE_WAIT_S): the next run relays them once it ends"
        if report.held_back
        else ""
    )
    print(
        f"{report.published + report.refused} outbox rows relayed: {report.published} published, "
        f"{report.refused} refused to {relay.tables.dead_letters}; {report.waits} waits for the database or broker"
        f"{held}"
    )
    return 0


def register(sub: Subparsers) -> None:
    """``relay``."""
    p = sub.add_parser(
        "relay",
        help="publish a source system's outbox table (ACCORD_RELAY_SOURCE_URL, ACCORD_RELAY_TABLE) to the bus",
    )
    p.add_argument("--once", action="store_true", help="relay every row that is ready, then exit")
    p.add_argument(
        "--agency",
        default=None,
        help="the agency this outbox speaks for: a row whose envelope names another is refused",
    )
    p.set_defaults(func=cmd_relay)
