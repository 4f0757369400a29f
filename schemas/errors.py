"""The refusals of the serde: one base type, so a consumer can dead-letter on it.

None ever carries a decoded value: refusals end up in files, dead letters and
logs, and bodies hold personal data. ``_show`` says what kind of value was found.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["BodyMismatch", "InvalidRecord", "NotSingleObject", "SerdeError", "UnknownFingerprint"]


class SerdeError(ValueError):
    """Base of every refusal raised here, so a consumer can dead-letter on one type."""


class NotSingleObject(SerdeError):
    """The bytes are not an Avro single-object message at all (too short, wrong magic)."""


class UnknownFingerprint(SerdeError):
    """The message names a schema this catalogue does not hold."""

    def __init__(self, fp: bytes) -> None:
        self.fingerprint = fp
        super().__init__(f"unknown schema fingerprint {fp.hex()}")


class BodyMismatch(SerdeError):
    """The header is fine but the body is not exactly one record of that schema.

    ``field`` is the dotted path where reading went wrong ("(record)" when the
    body as a whole is at fault, e.g. trailing bytes), ``problem`` what was wrong
    there. Neither ever carries a decoded value: bodies hold personal data.
    """

    def __init__(self, message: str, field: str = "(record)", problem: str | None = None) -> None:
        self.field = field
        self.problem = problem if problem is not None else message
        super().__init__(message)


class InvalidRecord(SerdeError):
    """A record that does not fit its schema; ``field`` is the dotted path of the first bad value."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field}: {problem}")


def _show(value: Any) -> str:
    """What kind of value it is, never the value: refusals end up in files, dead letters and
    logs, and a misplaced NHS number, name or date of birth is still personal data."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, datetime):
        return "a naive datetime" if value.tzinfo is None else "a datetime"
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    if isinstance(value, (list, tuple, dict, set)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a value of type {type(value).__name__}"
