"""What several command areas share: the agreements, the ledger as a reader opens it, quiet Kafka clients.

Each helper is a step a command takes before it calls the library; none prints.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

from bus.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from agreements import Agreement

__all__ = ["Subparsers", "aware_datetime", "known_agency", "ledger_engine", "load_agreements", "quiet_kafka"]

# What ``ArgumentParser.add_subparsers`` returns: each area's ``register`` adds its commands to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"  # argparse names no public type


def load_agreements(settings: Settings) -> list[Agreement]:
    """The agreements of ACCORD_AGREEMENTS_DIR (AgreementsRefused, one line per problem, if any is bad)."""
    from agreements import load_dir

    return load_dir(settings.agreements_dir)


def known_agency(settings: Settings, agency: str, option: str = "--agency") -> None:
    """Refuse an agency that provides under no agreement of ACCORD_AGREEMENTS_DIR (ValueError, one line).

    Every event whose envelope names another agency is refused, so a mistyped
    ``--agency`` would refuse them all; for the relay that means every row moved to
    the dead-letter table and the position past them, at once.
    """
    providers = sorted({p for a in load_agreements(settings) for p in a.providers})
    if agency not in providers:
        raise ValueError(
            f"{option} {agency!r} is a provider under no agreement in {settings.agreements_dir}, so every event "
            f"would be refused; the providers are: {', '.join(providers)}"
        )


def quiet_kafka(settings: Settings) -> dict[str, int]:
    """librdkafka config for a one-shot command: its own log lines stay off the terminal.

    A broker that is down shows as one line from main() naming the bootstrap
    servers, not as librdkafka's reconnect messages; at DEBUG they are shown.
    """
    return {} if settings.log_level.upper() == "DEBUG" else {"log_level": 0}


def ledger_engine(settings: Settings) -> Engine:
    """The ledger of a command that reads it: refuses (exit 2) one that does not exist, never creates it."""
    from accord.provision import open_ledger

    return open_ledger(settings)


def aware_datetime(text: str) -> datetime:
    """An argparse type: an ISO 8601 time that names its time zone (``Z`` accepted)."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2027-01-01T00:00:00Z")
    return value
