"""When the database or the broker stops answering: what counts as an outage, and how long to wait.

An outage pauses the bus and never skips a record (I10): the loop and the composition
root wait with :func:`backoff` and retry the same work. What is not an outage (a value
the database refused, a record the broker will never take) belongs to one record and is
dead-lettered instead; :func:`outage_of` tells the two apart.
"""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaException
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from accord.processor.agreement_feed import FeedNotReached


class Outage(RuntimeError):
    """PostgreSQL or the broker is not answering: wait and retry, never skip."""

    def __init__(self, service: str, detail: str) -> None:
        super().__init__(f"{service}: {detail}")
        self.service = service


def outage_of(exc: BaseException) -> str | None:
    """``"database"`` or ``"broker"`` when ``exc`` means a service is unavailable; None for a record's fault.

    Database errors are outages unless they are a DataError, or their SQLSTATE is class 22 (data exception: a
    value the database refuses) or 54 (program limit exceeded: a value too large for an
    index row, say), which are one record's fault. psycopg makes class 54 an
    OperationalError, so the SQLSTATE is read first: an outage would wait on that
    record for ever, with the whole bus behind it (I10). A missing table or a revoked
    privilege is an outage: waiting for the operator is right, dead-lettering every
    record would not be.
    """
    if isinstance(exc, Outage):
        return exc.service
    if isinstance(exc, FeedNotReached):
        return "broker"
    if isinstance(exc, KafkaException):
        return "broker"
    if _data_exception(exc.orig if isinstance(exc, DBAPIError) else exc):
        return None
    if isinstance(exc, (OperationalError, InterfaceError)):
        return "database"
    if isinstance(exc, (DBAPIError, psycopg.Error)):
        return "database"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "database"
    return None


def safe_detail(exc: BaseException) -> str:
    """What went wrong, in words that cannot quote a record (I6): for the log and /readyz.

    An Outage's text is ours (counts and Kafka error names); a Kafka error is its code's
    name; a database error is its SQLSTATE. Anything else is its class name, since a
    driver's message may quote the values it refused.
    """
    if isinstance(exc, Outage):
        return str(exc)
    if isinstance(exc, KafkaException) and exc.args and hasattr(exc.args[0], "name"):
        return f"{type(exc).__name__} {exc.args[0].name()}"
    sqlstate = _sqlstate(exc.orig if isinstance(exc, DBAPIError) else exc)
    if sqlstate:
        return f"{type(exc).__name__} SQLSTATE {sqlstate}"
    return type(exc).__name__


# SQLSTATE classes that are one record's fault: 22 data exception, 54 program limit exceeded.
_RECORD_FAULT_CLASSES = ("22", "54")


def _sqlstate(exc: BaseException | None) -> str | None:
    sqlstate = getattr(exc, "sqlstate", None) or getattr(getattr(exc, "diag", None), "sqlstate", None)
    return str(sqlstate) if sqlstate else None


def _data_exception(exc: BaseException | None) -> bool:
    if isinstance(exc, psycopg.DataError):
        # Also raised by psycopg itself, without a SQLSTATE, for a value it cannot load
        # (a timestamp past year 9999): the row's fault, not the database's.
        return True
    sqlstate = _sqlstate(exc)
    return sqlstate is not None and sqlstate[:2] in _RECORD_FAULT_CLASSES


def backoff(attempt: int, most_s: float = 10.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): 0.5 s, doubling, at most ``most_s``."""
    return min(0.5 * 2.0**attempt, most_s)
