"""Compiled codecs: a reader and a writer generated per schema for the hot path.

The hot path reads and writes through Python functions generated per schema: straight-line
code with the schema's shape baked in. The reader checks canonical form as it reads (minimal
numbers, booleans 0 or 1, enum and union indices in range, an array in one block, valid
UTF-8, nothing left over), so a body is read once instead of read by fastavro and then
written again to compare. Neither replaces fastavro as the judge: whatever a compiled codec
is not sure of (a short body, an odd value, a type it does not cover) goes to fastavro's
path, which decides as it always has and words every refusal.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from schemas.named_types import _resolve


class _Unsupported(Exception):
    """A schema the compiled codecs do not cover (floats, maps, other logical types, recursion)."""


class _NotFast(Exception):
    """The compiled codec will not vouch for this body or record: fastavro's path decides."""


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DAYS_SHIFT = date(1970, 1, 1).toordinal()
_FAST_LOGICAL = {("int", "date"), ("long", "timestamp-millis")}


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zigzag varint in its one canonical (shortest) form, fitting 64 bits; else _NotFast."""
    acc = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        acc |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise _NotFast
    if (byte == 0 and shift) or acc >> 64:
        raise _NotFast
    return (acc >> 1) ^ -(acc & 1), pos


def _long_bytes(n: int) -> bytes:
    """The canonical zigzag varint of a 64-bit ``n``."""
    u = (n << 1) ^ (n >> 63)
    out = bytearray()
    while u >= 0x80:
        out.append(u & 0x7F | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


class _Gen:
    """Shared bookkeeping of the two generators: lines, fresh names, constants."""

    def __init__(self, names: Mapping[str, Any]) -> None:
        self.names = names
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0
        self.active: set[str] = set()

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def const(self, value: Any) -> str:
        name = f"k{len(self.consts)}"
        self.consts[name] = value
        return name

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def kind(self, schema: Any) -> tuple[Any, str, str | None]:
        s = _resolve(schema, self.names)
        if isinstance(s, list):
            return s, "union", None
        if isinstance(s, str):
            return s, s, None
        kind, logical = s["type"], s.get("logicalType")
        if logical is not None and (kind, logical) not in _FAST_LOGICAL:
            raise _Unsupported(f"logical type {logical} on {kind}")
        return s, kind, logical

    def enter(self, s: Mapping[str, Any]) -> None:
        if s["name"] in self.active:
            raise _Unsupported("recursive schema")
        self.active.add(s["name"])

    def build(self, head: str, fixed: Mapping[str, Any]) -> Any:
        source = "\n".join([head, *self.lines])
        namespace = {**fixed, **self.consts}
        exec(compile(source, "<serde compiled codec>", "exec"), namespace)  # noqa: S102 - our own generated code
        return namespace["codec"]


class _ReaderGen(_Gen):
    def long(self, ind: int, target: str) -> None:
        self.emit(ind, "b = data[pos]")
        self.emit(ind, "if b < 128:")
        self.emit(ind + 1, f"{target} = (b >> 1) ^ -(b & 1)")
        self.emit(ind + 1, "pos += 1")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"{target}, pos = read_long(data, pos)")

    def sized(self, ind: int, target: str, decode: bool) -> None:
        self.long(ind, target)
        self.emit(ind, f"end = pos + {target}")
        self.emit(ind, f"if {target} < 0 or end > size:")
        self.emit(ind + 1, "raise NotFast")
        self.emit(ind, f"{target} = data[pos:end]{'.decode()' if decode else ''}")
        self.emit(ind, "pos = end")

    def small_index(self, ind: int, count: int) -> None:
        """An index below 64 is one byte, 2 * index; anything else is out of range or not canonical."""
        self.emit(ind, "b = data[pos]")
        self.emit(ind, "pos += 1")
        self.emit(ind, f"if b & 1 or b >= {2 * count}:")
        self.emit(ind + 1, "raise NotFast")

    def read(self, schema: Any, ind: int) -> str:
        """Emit code reading one value; returns the expression holding it."""
        s, kind, logical = self.kind(schema)
        v = self.var()
        if kind == "union":
            if len(s) > 63:
                raise _Unsupported("a union of more than 63 branches")
            self.small_index(ind, len(s))
            for i, branch in enumerate(s):
                self.emit(ind, f"{'if' if i == 0 else 'elif'} b == {2 * i}:")
                inner = self.read(branch, ind + 1)
                self.emit(ind + 1, f"{v} = {inner}")
            return v
        if kind == "null":
            return "None"
        if kind == "boolean":
            self.emit(ind, "b = data[pos]")
            self.emit(ind, "pos += 1")
            self.emit(ind, "if b > 1:")
            self.emit(ind + 1, "raise NotFast")
            self.emit(ind, f"{v} = b == 1")
        elif kind in ("int", "long"):
            self.long(ind, v)
            if kind == "int":  # a varint fits 64 bits; an int must fit 32, or the slow path refuses it
                self.emit(ind, f"if not -2147483648 <= {v} <= 2147483647:")
                self.emit(ind + 1, "raise NotFast")
            if logical == "date":
                self.emit(ind, f"{v} = date_fromordinal({v} + {_DAYS_SHIFT})")
            elif logical == "timestamp-millis":
                self.emit(ind, f"{v} = EPOCH + timedelta(0, 0, {v} * 1000)")
        elif kind in ("string", "bytes"):
            self.sized(ind, v, decode=kind == "string")
        elif kind == "fixed":
            self.emit(ind, f"end = pos + {int(s['size'])}")
            self.emit(ind, "if end > size:")
            self.emit(ind + 1, "raise NotFast")
            self.emit(ind, f"{v} = data[pos:end]")
            self.emit(ind, "pos = end")
        elif kind == "enum":
            symbols = self.const(tuple(s["symbols"]))
            if len(s["symbols"]) < 64:
                self.small_index(ind, len(s["symbols"]))
                self.emit(ind, f"{v} = {symbols}[b >> 1]")
            else:
                self.long(ind, v)
                self.emit(ind, f"if not 0 <= {v} < {len(s['symbols'])}:")
                self.emit(ind + 1, "raise NotFast")
                self.emit(ind, f"{v} = {symbols}[{v}]")
        elif kind == "array":
            count = self.var()
            self.long(ind, count)
            self.emit(ind, f"{v} = []")
            self.emit(ind, f"if {count}:")
            self.emit(ind + 1, f"if {count} < 0 or {count} > size - pos:")
            self.emit(ind + 2, "raise NotFast")
            self.emit(ind + 1, f"for _ in range({count}):")
            item = self.read(s["items"], ind + 2)
            self.emit(ind + 2, f"{v}.append({item})")
            self.emit(ind + 1, "if data[pos]:")  # one block: the next count is the end
            self.emit(ind + 2, "raise NotFast")
            self.emit(ind + 1, "pos += 1")
        elif kind in ("record", "error"):
            self.enter(s)
            values = [(f["name"], self.read(f["type"], ind)) for f in s["fields"]]
            self.active.discard(s["name"])
            self.emit(ind, f"{v} = {{{', '.join(f'{name!r}: {value}' for name, value in values)}}}")
        else:
            raise _Unsupported(f"type {kind}")
        return v


class _WriterGen(_Gen):
    def long(self, ind: int, x: str) -> None:
        self.emit(ind, f"if 0 <= {x} < 64:")
        self.emit(ind + 1, f"out.append({x} << 1)")
        self.emit(ind, f"elif -64 <= {x} < 0:")
        self.emit(ind + 1, f"out.append((-{x} << 1) - 1)")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"out += long_bytes({x})")

    def length(self, ind: int, x: str) -> None:
        """A count or size, never negative."""
        self.emit(ind, f"if {x} < 64:")
        self.emit(ind + 1, f"out.append({x} << 1)")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"out += long_bytes({x})")

    def check(self, ind: int, condition: str) -> None:
        self.emit(ind, f"if {condition}:")
        self.emit(ind + 1, "raise NotFast")

    def write(self, schema: Any, x: str, ind: int) -> None:
        """Emit code writing the value in variable ``x``.

        It refuses (NotFast) any value not of the exact expected type.
        """
        s, kind, logical = self.kind(schema)
        if kind == "union":
            branches = [_resolve(b, self.names) for b in s]
            if len(s) != 2 or "null" not in branches:
                raise _Unsupported("a union other than null and one type")
            null = branches.index("null")
            self.emit(ind, f"if {x} is None:")
            self.emit(ind + 1, f"out.append({2 * null})")
            self.emit(ind, "else:")
            self.emit(ind + 1, f"out.append({2 * (1 - null)})")
            self.write(s[1 - null], x, ind + 1)
            return
        if kind == "null":
            self.check(ind, f"{x} is not None")
        elif kind == "boolean":
            self.check(ind, f"{x} is not True and {x} is not False")
            self.emit(ind, f"out.append(1 if {x} else 0)")
        elif kind in ("int", "long"):
            if logical == "date":
                self.check(ind, f"type({x}) is not date")
                n = self.var()
                self.emit(ind, f"{n} = {x}.toordinal() - {_DAYS_SHIFT}")
                self.long(ind, n)
            elif logical == "timestamp-millis":
                self.check(ind, f"type({x}) is not datetime or {x}.tzinfo is None")
                d, n = self.var(), self.var()
                self.emit(ind, f"{d} = {x} - EPOCH")
                self.emit(ind, f"{n} = ({d}.days * 86400 + {d}.seconds) * 1000 + {d}.microseconds // 1000")
                self.long(ind, n)
            else:
                bits = 31 if kind == "int" else 63  # what fastavro accepts in a union branch
                self.check(ind, f"type({x}) is not int or not {-(2**bits)} <= {x} < {2**bits}")
                self.long(ind, x)
        elif kind in ("string", "bytes"):
            if kind == "string":
                self.check(ind, f"type({x}) is not str")
                b = self.var()
                self.emit(ind, f"{b} = {x}.encode()")
            else:
                self.check(ind, f"type({x}) is not bytes")
                b = x
            n = self.var()
            self.emit(ind, f"{n} = len({b})")
            self.length(ind, n)
            self.emit(ind, f"out += {b}")
        elif kind == "fixed":
            self.check(ind, f"type({x}) is not bytes or len({x}) != {int(s['size'])}")
            self.emit(ind, f"out += {x}")
        elif kind == "enum":
            encoded = self.const({symbol: _long_bytes(i) for i, symbol in enumerate(s["symbols"])})
            e = self.var()
            self.emit(ind, f"{e} = {encoded}.get({x})")
            self.check(ind, f"{e} is None")
            self.emit(ind, f"out += {e}")
        elif kind == "array":
            self.check(ind, f"type({x}) is not list")
            self.emit(ind, f"if {x}:")
            n, item = self.var(), self.var()
            self.emit(ind + 1, f"{n} = len({x})")
            self.length(ind + 1, n)
            self.emit(ind + 1, f"for {item} in {x}:")
            self.write(s["items"], item, ind + 2)
            self.emit(ind, "out.append(0)")
        elif kind in ("record", "error"):
            self.enter(s)
            self.check(ind, f"type({x}) is not dict")
            for f in s["fields"]:
                value = self.var()
                self.emit(ind, f"{value} = {x}[{f['name']!r}]")
                self.write(f["type"], value, ind)
            self.active.discard(s["name"])
        else:
            raise _Unsupported(f"type {kind}")


_READER_NAMES = {
    "read_long": _read_long,
    "NotFast": _NotFast,
    "EPOCH": _EPOCH,
    "timedelta": timedelta,
    "date_fromordinal": date.fromordinal,
}
_WRITER_NAMES = {
    "long_bytes": _long_bytes,
    "NotFast": _NotFast,
    "EPOCH": _EPOCH,
    "date": date,
    "datetime": datetime,
}


def _compile_reader(schema: Any, names: Mapping[str, Any]) -> Any:
    """``codec(data, pos) -> (record, end)`` for a record schema, or None where the schema is not covered.

    It raises on anything it does not vouch for: _NotFast, or IndexError and
    UnicodeDecodeError and the like from the bytes themselves.
    """
    gen = _ReaderGen(names)
    try:
        if gen.kind(schema)[1] not in ("record", "error"):
            return None
        top = gen.read(schema, 1)
    except _Unsupported:
        return None
    gen.emit(1, f"return {top}, pos")
    return gen.build("def codec(data, pos):\n    size = len(data)", _READER_NAMES)


def _compile_writer(schema: Any, names: Mapping[str, Any], header: bytes) -> Any:
    """``codec(record) -> bytes`` (header included) for a record schema, or None where not covered.

    It writes what fastavro writes, for values of exactly the types the decoder
    returns; for anything else it raises and fastavro writes (or refuses) instead.
    """
    gen = _WriterGen(names)
    try:
        if gen.kind(schema)[1] not in ("record", "error"):
            return None
        gen.write(schema, "record", 1)
    except _Unsupported:
        return None
    gen.emit(1, "return bytes(out)")
    return gen.build(f"def codec(record):\n    out = bytearray({header!r})", _WRITER_NAMES)
