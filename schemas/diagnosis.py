"""Why a body is not a record of its schema: a careful walk of the bytes, off the hot path.

The catalogue calls it only once a body has been refused, to word the refusal
with the field and the problem; it never returns a value read from the body.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

from schemas.named_types import _join, _resolve
from schemas.validator import _INT_MAX, _INT_MIN

# What datetime and date can hold: fastavro raises OverflowError beyond these.
_EPOCH_DAY = date(1970, 1, 1).toordinal()
_DATE_MIN_DAYS = date.min.toordinal() - _EPOCH_DAY
_DATE_MAX_DAYS = date.max.toordinal() - _EPOCH_DAY
_TS_MIN_MS = _DATE_MIN_DAYS * 86_400_000
_TS_MAX_MS = (_DATE_MAX_DAYS + 1) * 86_400_000 - 1


class _Malformed(Exception):
    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(field, problem)


class _Walk:
    """Reads a body against its schema only to say what is wrong with it: never on the hot path.

    Every declared length or count is checked against the bytes that remain
    before anything is read, so a corrupt length costs nothing, let alone gigabytes.
    """

    def __init__(self, names: Mapping[str, Any], data: bytes, pos: int) -> None:
        self.names = names
        self.data = data
        self.pos = pos
        self.items = 0
        self.odd: tuple[str, str] | None = None  # first non-canonical (but readable) encoding seen

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def note(self, where: str, problem: str) -> None:
        if self.odd is None:
            self.odd = (where, problem)

    def long(self, where: str) -> int:
        data, pos, acc, shift = self.data, self.pos, 0, 0
        while True:
            if pos >= len(data):
                raise _Malformed(where, "the body ends inside a number (truncated)")
            byte = data[pos]
            pos += 1
            acc |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
            if shift >= 70:
                raise _Malformed(where, "a variable-length number runs over 10 bytes")
        if pos - self.pos > 1 and byte == 0:
            self.note(where, "a number is written with more bytes than it needs")
        self.pos = pos
        if acc >= 2**64:
            raise _Malformed(where, "a number does not fit 64 bits")
        return (acc >> 1) ^ -(acc & 1)

    def take(self, size: int, where: str, what: str) -> bytes:
        if size < 0:
            raise _Malformed(where, f"negative {what} length {size}")
        if size > self.remaining():
            raise _Malformed(
                where, f"{what} declares {size} bytes but only {self.remaining()} remain (truncated or corrupt)"
            )
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def read(self, schema: Any, path: str) -> None:
        s = _resolve(schema, self.names)
        where = path or "(record)"
        if isinstance(s, list):
            index = self.long(where)
            if not 0 <= index < len(s):
                raise _Malformed(where, f"union branch index {index} out of range (0-{len(s) - 1})")
            self.read(s[index], path)
            return
        kind = s if isinstance(s, str) else s["type"]
        logical = None if isinstance(s, str) else s.get("logicalType")
        if kind == "null":
            return
        if kind == "boolean":
            byte = self.take(1, where, "boolean")[0]
            if byte > 1:
                raise _Malformed(where, f"boolean byte {byte} is neither 0 nor 1")
        elif kind in ("int", "long"):
            value = self.long(where)
            if kind == "int" and not _INT_MIN <= value <= _INT_MAX:
                raise _Malformed(where, f"{value} does not fit a 32-bit int")
            if logical == "date" and not _DATE_MIN_DAYS <= value <= _DATE_MAX_DAYS:
                raise _Malformed(where, f"date {value} days from 1970 is outside the years 1-9999")
            if logical == "timestamp-millis" and not _TS_MIN_MS <= value <= _TS_MAX_MS:
                raise _Malformed(where, f"timestamp-millis {value} is outside the years 1-9999")
            if logical == "timestamp-micros" and not _TS_MIN_MS * 1000 <= value <= _TS_MAX_MS * 1000 + 999:
                raise _Malformed(where, f"timestamp-micros {value} is outside the years 1-9999")
        elif kind == "float":
            self.take(4, where, "float")
        elif kind == "double":
            self.take(8, where, "double")
        elif kind in ("string", "bytes"):
            chunk = self.take(self.long(where), where, kind)
            if kind == "string":
                try:
                    chunk.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _Malformed(
                        where, f"string is not valid UTF-8 (byte {exc.start + 1} of {len(chunk)})"
                    ) from None
        elif kind == "fixed":
            self.take(s["size"], where, "fixed")
        elif kind == "enum":
            index = self.long(where)
            if not 0 <= index < len(s["symbols"]):
                raise _Malformed(
                    where,
                    f"enum index {index} out of range: {s['name'].rsplit('.', 1)[-1]} has {len(s['symbols'])} symbols",
                )
        elif kind in ("array", "map"):
            self.blocks(s, path, kind)
        elif kind in ("record", "error"):
            for f in s["fields"]:
                self.read(f["type"], _join(path, f["name"]))
        else:
            raise _Malformed(where, f"unsupported schema type {kind!r}")

    def blocks(self, s: Mapping[str, Any], path: str, kind: str) -> None:
        where = path or "(record)"
        index = 0
        for block in range(len(self.data)):
            count = self.long(where)
            if count == 0:
                return
            if block:
                self.note(where, f"{kind} written in more than one block")
            if count < 0:
                count = -count
                self.note(where, f"{kind} block with a negative count (and a byte size)")
                size = self.long(where)
                if not 0 <= size <= self.remaining():
                    raise _Malformed(where, f"{kind} block declares {size} bytes but {self.remaining()} remain")
            self.items += count
            if count > self.remaining() or self.items > len(self.data):
                raise _Malformed(
                    where,
                    f"{kind} declares {count} items but only {self.remaining()} bytes remain (truncated or corrupt)",
                )
            for _ in range(count):
                if kind == "map":
                    self.take(self.long(where), where, "map key")
                    self.read(s["values"], f"{path}[{index}]")
                else:
                    self.read(s["items"], f"{path}[{index}]")
                index += 1
        raise _Malformed(where, f"{kind} never ends")


def _diagnose(schema: Any, names: Mapping[str, Any], data: bytes, pos: int) -> tuple[str, str] | None:
    """(field, problem) for the first thing wrong in the body at ``data[pos:]``, or None if nothing is."""
    walk = _Walk(names, data, pos)
    try:
        walk.read(schema, "")
    except _Malformed as bad:
        return bad.field, bad.problem
    except RecursionError:
        return "(record)", "nested too deeply"
    if walk.remaining():
        return "(record)", f"{walk.remaining()} trailing bytes"
    if walk.odd is not None:
        return walk.odd[0], f"{walk.odd[1]}: not the canonical encoding"
    return None


def _reader_hint(exc: Exception) -> str:
    """fastavro's exception as a hint, without anything it may have read from the body."""
    if isinstance(exc, EOFError):
        return "the body ends before the record does: truncated"
    if isinstance(exc, UnicodeDecodeError):
        return "a string is not valid UTF-8"
    if isinstance(exc, OverflowError):
        return "a number or timestamp is out of range"
    if isinstance(exc, IndexError):
        return "an enum or union index is out of range"
    return "malformed body"
