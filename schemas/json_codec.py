"""JSON in and out: a JSON-loaded record coerced to what fastavro writes, and a record made printable.

Only strings in timestamp and date positions are converted on the way in; the
validator judges everything else, so there is one place that decides what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from schemas.errors import InvalidRecord, _show
from schemas.named_types import _join, _named_types, _resolve

__all__ = ["from_json", "to_json"]


def _calendar_out_of_range(value: str) -> bool:
    """Whether an ISO timestamp fails only on a field's range (a 30 February, a 25 o'clock), not its shape."""
    digits = re.sub(r"\d", "1", value)  # every digit 1: the shape alone (2020-02-30T25:00 -> 1111-11-11T11:11)
    try:
        datetime.fromisoformat(digits)
    except ValueError:
        return False
    return True


def _parse_timestamp(value: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        if _DATE_SHAPE.match(value) and _calendar_out_of_range(value):
            raise InvalidRecord(
                where, "not a real time: its month, day, hour, minute or second is out of range"
            ) from None
        raise InvalidRecord(where, f"expected ISO-8601 timestamp, got {_show(value)}") from None
    if parsed.tzinfo is None:
        raise InvalidRecord(where, f"expected ISO-8601 timestamp with a timezone (e.g. Z), got {_show(value)}")
    return parsed


# The shape of an ISO date, so one that fails only on its calendar (30 February) is told so.
_DATE_SHAPE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _parse_date(value: str, where: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        if len(value) == 10 and _DATE_SHAPE.match(value):
            raise InvalidRecord(where, "not a real date: its month or day is out of range") from None
        raise InvalidRecord(where, f"expected ISO date (YYYY-MM-DD), got {_show(value)}") from None


def _coerce(schema: Any, value: Any, path: str, names: Mapping[str, Any]) -> Any:
    s = _resolve(schema, names)
    where = path or "(record)"
    if isinstance(s, list):
        if value is None:
            return None
        non_null = [b for b in s if b != "null"]
        first_error: InvalidRecord | None = None
        for branch in non_null:
            try:
                return _coerce(branch, value, path, names)
            except InvalidRecord as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error
        return value
    if isinstance(s, str):
        return value
    kind, logical = s["type"], s.get("logicalType")
    if isinstance(value, str) and logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
        return _parse_timestamp(value, where)
    if isinstance(value, str) and logical == "date" and kind == "int":
        return _parse_date(value, where)
    if kind in ("record", "error") and isinstance(value, dict):
        fields = {f["name"]: f["type"] for f in s["fields"]}
        return {k: (_coerce(fields[k], v, _join(path, k), names) if k in fields else v) for k, v in value.items()}
    if kind == "array" and isinstance(value, list):
        return [_coerce(s["items"], v, f"{path}[{i}]", names) for i, v in enumerate(value)]
    if kind == "map" and isinstance(value, dict):
        return {k: _coerce(s["values"], v, _join(path, str(k)), names) for k, v in value.items()}
    return value


def from_json(parsed_schema: Any, value: Any) -> Any:
    """Turn a JSON-loaded record into what fastavro writes (timestamps, dates); a new object.

    Only strings in timestamp/date positions are converted; anything else is left
    for validate() to judge, so there is one place that decides what is wrong.
    """
    return _coerce(parsed_schema, value, "", _named_types(parsed_schema))


def to_json(record: Any) -> Any:
    """A JSON-ready copy for printing: UTC timestamps with Z, ISO dates, bytes as hex."""
    if isinstance(record, datetime):
        utc = record.astimezone(UTC) if record.tzinfo else record.replace(tzinfo=UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(record, date):
        return record.isoformat()
    if isinstance(record, (bytes, bytearray)):
        return bytes(record).hex()
    if isinstance(record, UUID):
        return str(record)
    if isinstance(record, dict):
        return {k: to_json(v) for k, v in record.items()}
    if isinstance(record, (list, tuple)):
        return [to_json(v) for v in record]
    return record
