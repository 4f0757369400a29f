"""The one delivery error: records handed to a producer that the broker did not confirm.

Every part that must know its records arrived (retraction notices, consent changes,
checkpoints, receipts, the agreements feed) flushes through :func:`flush_or_raise`, so
"not delivered" means one thing, reads the same in every log line, and is caught in one
place by the CLI. The message names what was being sent and the broker's error codes,
never a record's contents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["NotDelivered", "flush_or_raise"]


class Flushable(Protocol):
    def flush(self, timeout: float) -> int: ...


class NotDelivered(RuntimeError):
    """``what`` was not confirmed: ``remaining`` still queued, ``errors`` from delivery reports."""

    def __init__(self, what: str, remaining: int = 0, errors: Sequence[str] = ()) -> None:
        self.what, self.remaining, self.errors = what, remaining, tuple(errors)
        parts = [f"broker said: {'; '.join(self.errors[:3])}"] if self.errors else []
        parts += [f"{remaining} still queued"] if remaining else []
        super().__init__(f"{what} not delivered: {', '.join(parts) or 'no confirmation'}")


def flush_or_raise(producer: Flushable, what: str, errors: list[str], timeout_s: float = 30.0) -> None:
    """Wait for ``producer``'s queue; raise NotDelivered if anything is left or failed.

    ``errors`` is the list the caller's delivery callback appends to; it is emptied, so
    the next flush reports only its own failures.
    """
    remaining = producer.flush(timeout_s)
    failed, errors[:] = list(errors), []
    if remaining or failed:
        raise NotDelivered(what, remaining, failed)
