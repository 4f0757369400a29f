"""The hand-written validator: does a Python record fit its schema, and if not, where not.

fastavro silently drops keys it does not know and reads a naive datetime as local
time; this refuses both, and names the dotted path of the first bad value.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

from schemas.errors import InvalidRecord, SerdeError, _show
from schemas.named_types import _join, _label, _named_types, _resolve

__all__ = ["validate"]

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _check(schema: Any, value: Any, path: str, names: Mapping[str, Any]) -> None:
    s = _resolve(schema, names)
    where = path or "(record)"
    if isinstance(s, list):
        _check_union(s, value, path, names)
        return
    kind = s if isinstance(s, str) else s["type"]
    logical = None if isinstance(s, str) else s.get("logicalType")
    if logical is not None and _check_logical(logical, kind, s, value, where):
        return
    ok: bool
    if kind == "null":
        ok = value is None
    elif kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and _INT_MIN <= value <= _INT_MAX
    elif kind == "long":
        ok = isinstance(value, int) and not isinstance(value, bool) and _LONG_MIN <= value <= _LONG_MAX
    elif kind in ("float", "double"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind == "string":
        ok = isinstance(value, str)
    elif kind == "bytes":
        ok = isinstance(value, (bytes, bytearray))
    elif kind == "fixed":
        ok = isinstance(value, (bytes, bytearray)) and len(value) == s["size"]
        if isinstance(value, (bytes, bytearray)) and not ok:
            raise InvalidRecord(where, f"expected {s['size']} bytes, got {len(value)}")
    elif kind == "enum":
        if isinstance(value, str) and value in s["symbols"]:
            return
        raise InvalidRecord(where, f"expected one of {', '.join(s['symbols'])}, got {_show(value)}")
    elif kind == "array":
        if not isinstance(value, (list, tuple)):
            raise InvalidRecord(where, f"expected array, got {_show(value)}")
        for i, item in enumerate(value):
            _check(s["items"], item, f"{path}[{i}]", names)
        return
    elif kind == "map":
        if not isinstance(value, dict):
            raise InvalidRecord(where, f"expected map, got {_show(value)}")
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRecord(where, f"map keys must be strings, got {_show(key)}")
            _check(s["values"], item, _join(path, key), names)
        return
    elif kind in ("record", "error"):
        _check_record(s, value, path, names)
        return
    else:
        raise SerdeError(f"unsupported schema type {kind!r} at {where}")
    if not ok:
        if kind in ("int", "long") and isinstance(value, int) and not isinstance(value, bool):
            low, high = (_INT_MIN, _INT_MAX) if kind == "int" else (_LONG_MIN, _LONG_MAX)
            raise InvalidRecord(where, f"out of range for an Avro {kind} ({low:,} to {high:,})")
        raise InvalidRecord(where, f"expected {_label(s, names)}, got {_show(value)}")


def _check_logical(logical: str, kind: str, s: Any, value: Any, where: str) -> bool:
    """Check a logical type; True when handled. Unknown logical types fall back to the base type."""
    if logical in ("timestamp-millis", "timestamp-micros") and kind == "long":
        if isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                # fastavro would read a naive datetime as local time: refuse rather than shift it.
                raise InvalidRecord(where, "expected a timezone-aware timestamp, got a naive datetime")
            try:
                value.astimezone(UTC)
            except OverflowError:  # written, it could never be read back
                raise InvalidRecord(where, "timestamp is outside the years 1-9999 in UTC") from None
            return True
        raise InvalidRecord(where, f"expected timestamp, got {_show(value)}")
    if logical == "date" and kind == "int":
        if isinstance(value, date) and not isinstance(value, datetime):
            return True
        raise InvalidRecord(where, f"expected date, got {_show(value)}")
    if logical == "uuid" and kind == "string":
        if isinstance(value, (str, UUID)):
            return True
        raise InvalidRecord(where, f"expected uuid, got {_show(value)}")
    return False


def _check_union(branches: list[Any], value: Any, path: str, names: Mapping[str, Any]) -> None:
    non_null = [b for b in branches if b != "null"]
    if value is None and len(non_null) < len(branches):
        return
    if len(non_null) == 1:
        # The common ["null", X]: report X's own, more precise, complaint.
        _check(non_null[0], value, path, names)
        return
    for branch in non_null:
        try:
            _check(branch, value, path, names)
            return
        except InvalidRecord:
            continue
    labels = ", ".join(_label(b, names) for b in branches)
    raise InvalidRecord(path or "(record)", f"expected one of {labels}, got {_show(value)}")


def _check_record(s: Mapping[str, Any], value: Any, path: str, names: Mapping[str, Any]) -> None:
    if not isinstance(value, dict):
        raise InvalidRecord(path or "(record)", f"expected record {s['name'].rsplit('.', 1)[-1]}, got {_show(value)}")
    known = set()
    for f in s["fields"]:
        name = f["name"]
        known.add(name)
        if name in value:
            _check(f["type"], value[name], _join(path, name), names)
        elif "default" not in f:
            raise InvalidRecord(_join(path, name), "required field is missing")
    for key in value:
        if key not in known:
            raise InvalidRecord(_join(path, str(key)), "unknown field (not in the schema)")


def validate(parsed_schema: Any, record: Any) -> None:
    """Raise InvalidRecord naming the first value that does not fit; extra keys are refused.

    Extra keys matter: fastavro silently drops them, and a producer that thinks
    it sent a field must learn that it did not.
    """
    _check(parsed_schema, record, "", _named_types(parsed_schema))
