"""Avro single-object encoding of Accord events.

Every message on the bus is self-describing: two magic bytes, the schema's
fingerprint, then the Avro binary body. A consumer therefore never needs a
schema registry round trip; it only needs the schemas it has agreed to read,
held in a :class:`Catalogue`. Anything that does not carry a known fingerprint
or does not decode exactly with the matching schema is refused, never guessed.

Every event is decoded once and every disclosure encoded once on the bus's hot
path, so the catalogue compiles a reader and a writer per schema (see "compiled
codecs" below); fastavro stays the judge of anything they are not sure of.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any
from uuid import UUID

import fastavro
from fastavro.schema import to_parsing_canonical_form

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "SerdeError",
    "NotSingleObject",
    "UnknownFingerprint",
    "BodyMismatch",
    "InvalidRecord",
    "load_schema",
    "crc64_avro",
    "fingerprint",
    "Catalogue",
    "validate",
    "from_json",
    "to_json",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
SCHEMA_DIR = Path(__file__).resolve().parent
EVENTS_DIR = SCHEMA_DIR / "events"
DEFAULT_EVENT_TYPES = ("custody", "referral", "natal_care", "disclosure", "retraction", "consent_change")


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


# --------------------------------------------------------------------------- schemas


def load_schema(name: str) -> dict[str, Any]:
    """Parse ``schemas/<name>.avsc`` shipped with this package.

    Raises FileNotFoundError for an unknown name (the agreement loader relies on it).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise FileNotFoundError(f"no schema named {name!r}")
    folder = EVENTS_DIR / name
    versions = sorted(folder.glob("v*.avsc"), key=lambda p: int(p.stem[1:])) if folder.is_dir() else []
    path = versions[-1] if versions else SCHEMA_DIR / f"{name}.avsc"
    with path.open(encoding="utf-8") as fh:
        return fastavro.parse_schema(json.load(fh))


# CRC-64-AVRO exactly as the Avro specification gives it ("Schema Fingerprints").
_EMPTY64 = 0xC15D213AA4D7A795


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (_EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


_CRC_TABLE = _crc_table()


def crc64_avro(data: bytes) -> int:
    """The unsigned 64-bit CRC-64-AVRO of ``data``.

    Computed here rather than trusting a hex string's byte order: fastavro's hex
    is the little-endian byte sequence, not the big-endian number.
    """
    fp = _EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ _CRC_TABLE[(fp ^ byte) & 0xFF]
    return fp


def fingerprint(parsed_schema: Any) -> bytes:
    """The 8 header bytes: CRC-64-AVRO of the Parsing Canonical Form, little-endian."""
    canonical = to_parsing_canonical_form(parsed_schema)
    return struct.pack("<Q", crc64_avro(canonical.encode("utf-8")))


# --------------------------------------------------------------------------- validation

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


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


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _named_types(schema: Any) -> dict[str, Any]:
    """Full name -> definition for every named type, so string references can be followed."""
    if isinstance(schema, dict) and "__named_schemas" in schema:
        return schema["__named_schemas"]
    names: dict[str, Any] = {}

    def walk(s: Any) -> None:
        if isinstance(s, list):
            for branch in s:
                walk(branch)
        elif isinstance(s, dict):
            kind = s.get("type")
            if kind in ("record", "error", "enum", "fixed") and "name" in s:
                names[s["name"]] = s
            if kind in ("record", "error"):
                for f in s.get("fields", []):
                    walk(f["type"])
            elif kind == "array":
                walk(s["items"])
            elif kind == "map":
                walk(s["values"])
            elif isinstance(kind, (dict, list)):
                walk(kind)

    walk(schema)
    return names


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    """Follow a named-type reference; primitives and inline definitions pass through."""
    while isinstance(schema, str) and schema not in _PRIMITIVES:
        if schema not in names:
            raise SerdeError(f"schema refers to undefined type {schema!r}")
        schema = names[schema]
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) and "logicalType" not in schema:
        return _resolve(schema["type"], names)
    return schema


def _label(schema: Any, names: Mapping[str, Any]) -> str:
    s = _resolve(schema, names)
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return " or ".join(_label(b, names) for b in s)
    logical = s.get("logicalType")
    if logical in ("timestamp-millis", "timestamp-micros"):
        return "timestamp"
    if logical:
        return logical
    kind = s["type"]
    if kind in ("record", "error", "enum", "fixed"):
        return f"{kind} {s['name'].rsplit('.', 1)[-1]}"
    return kind


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


# --------------------------------------------------------------------------- JSON


def _parse_timestamp(value: str, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord(where, f"expected ISO-8601 timestamp, got {_show(value)}") from None
    if parsed.tzinfo is None:
        raise InvalidRecord(where, f"expected ISO-8601 timestamp with a timezone (e.g. Z), got {_show(value)}")
    return parsed


def _parse_date(value: str, where: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
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
        return {
            k: (_coerce(fields[k], v, _join(path, k), names) if k in fields else v) for k, v in value.items()
        }
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


# --------------------------------------------------------------------------- compiled codecs

# The hot path reads and writes through Python functions generated per schema: straight-line
# code with the schema's shape baked in. The reader checks canonical form as it reads (minimal
# numbers, booleans 0 or 1, enum and union indices in range, an array in one block, valid
# UTF-8, nothing left over), so a body is read once instead of read by fastavro and then
# written again to compare. Neither replaces fastavro as the judge: whatever a compiled codec
# is not sure of (a short body, an odd value, a type it does not cover) goes to fastavro's
# path, which decides as it always has and words every refusal.


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
        """Emit code writing the value in variable ``x``, refusing (NotFast) any value not of the exact expected type."""
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


# --------------------------------------------------------------------------- catalogue


class Catalogue:
    """The schemas a process may write or read, by name and by fingerprint.

    Decoding looks up the fingerprint, so a message can only ever be read with
    the exact schema it was written with.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Any, bytes, dict[str, Any]]] = {}
        self._by_fp: dict[bytes, tuple[str, Any]] = {}
        self._readers: dict[bytes, Any] = {}  # fingerprint -> compiled reader (absent: fastavro's path only)
        self._writers: dict[str, Any] = {}  # name -> compiled writer

    @classmethod
    def default(cls) -> Catalogue:
        """A new catalogue holding the source event schemas and the ledger's disclosure schema."""
        catalogue = cls()
        for name in DEFAULT_EVENT_TYPES:
            catalogue.register(name, load_schema(name))
        return catalogue

    def register(self, name: str, parsed_schema: Any) -> bytes:
        """Add a schema; returns its fingerprint. Re-registering the same schema is a no-op.

        Refuses a name already bound to another schema, or a schema already
        registered under another name: either would make decode() ambiguous.
        """
        if not (isinstance(parsed_schema, dict) and "__fastavro_parsed" in parsed_schema):
            parsed_schema = fastavro.parse_schema(parsed_schema)
        fp = fingerprint(parsed_schema)
        if name in self._by_name:
            if self._by_name[name][1] == fp:
                return fp
            raise SerdeError(f"schema name {name!r} is already registered with another schema")
        if fp in self._by_fp:
            raise SerdeError(f"schema {fp.hex()} is already registered as {self._by_fp[fp][0]!r}, not {name!r}")
        names = dict(_named_types(parsed_schema))
        self._by_name[name] = (parsed_schema, fp, names)
        self._by_fp[fp] = (name, parsed_schema)
        reader = _compile_reader(parsed_schema, names)
        if reader is not None:
            self._readers[fp] = reader
        writer = _compile_writer(parsed_schema, names, MAGIC + fp)
        if writer is not None:
            self._writers[name] = writer
        return fp

    def _entry(self, name: str) -> tuple[Any, bytes, dict[str, Any]]:
        try:
            return self._by_name[name]
        except KeyError:
            raise SerdeError(f"no schema registered as {name!r}") from None

    def schema(self, name: str) -> Any:
        return self._entry(name)[0]

    def fingerprint_of(self, name: str) -> bytes:
        return self._entry(name)[1]

    def names(self) -> list[str]:
        return list(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def encode(self, name: str, record: dict[str, Any], *, validated: bool = False) -> bytes:
        """Validate, then write one single-object message; InvalidRecord names the bad field.

        ``validated=True`` skips the field-by-field check for records that are
        valid by construction (a projection of a decoded record): the hot path.
        fastavro still refuses anything it cannot write.
        """
        schema, fp, names = self._entry(name)
        if not validated:
            try:
                _check(schema, record, "", names)
            except SerdeError:
                raise
            except Exception as exc:  # a value so odd the checker trips on it is still the caller's error
                raise InvalidRecord("(record)", f"cannot check as {name}: {type(exc).__name__}") from exc
        writer = self._writers.get(name)
        if writer is not None:
            try:
                return writer(record)  # what fastavro writes; anything it is unsure of falls through
            except Exception:
                pass
        out = BytesIO()
        out.write(MAGIC)
        out.write(fp)
        try:
            fastavro.schemaless_writer(out, schema, record)
        except Exception as exc:  # validation should have caught it; never emit half a message
            raise InvalidRecord("(record)", f"cannot encode as {name}: {type(exc).__name__}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return (registered name, record); refuses anything but exactly one canonically encoded record.

        Every refusal is a SerdeError (NotSingleObject, UnknownFingerprint or
        BodyMismatch) with a message naming what is wrong and where, so the
        processor can dead-letter any input with a reason and never crash on it.

        The body must be the canonical encoding of the record it decodes to (what
        every Avro writer emits: minimal varints, one block per array). fastavro
        alone would read a negative enum or union index as a symbol or branch
        counted from the end (Python indexing) and a boolean byte 7 as true;
        re-encoding and comparing refuses those, and makes one record one byte
        string, so a digest of the bytes identifies the content.

        A body the compiled reader accepts is canonical by construction (it checks
        each of those rules as it reads); anything else takes the fastavro path,
        read and re-encode, which has the last word and words the refusal.
        """
        if data is None:
            raise NotSingleObject("empty message value (null): expected an Avro single-object message")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise NotSingleObject(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if not data:
            raise NotSingleObject("empty message: expected an Avro single-object message (0xC3 0x01 ...)")
        if data[0] == 0 and len(data) >= 5:
            schema_id = struct.unpack(">I", data[1:5])[0]
            raise NotSingleObject(
                f"Confluent Schema Registry framing, not Avro single-object encoding (magic byte 00 and schema id "
                f"{schema_id} where 0xC3 0x01 and a schema fingerprint belong): publish with the Accord producer"
            )
        if len(data) < HEADER_SIZE:
            raise NotSingleObject(f"too short for a single-object header: {len(data)} bytes, need {HEADER_SIZE}")
        if data[:2] != MAGIC:
            raise NotSingleObject(f"wrong magic {data[:2].hex()}, expected {MAGIC.hex()} (Avro single-object encoding)")
        fp = data[2:HEADER_SIZE]
        try:
            name, schema = self._by_fp[fp]
        except KeyError:
            raise UnknownFingerprint(fp) from None
        reader = self._readers.get(fp)
        if reader is not None:
            # One pass that checks canonical form as it reads; whatever it does not vouch for
            # (including every refusal) is decided and worded by fastavro's path below.
            try:
                record, end = reader(data, HEADER_SIZE)
                if end == len(data):
                    return name, record
            except Exception:
                pass
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, schema)
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, OverflowError ...
            raise self._mismatch(name, data, exc) from exc
        left = len(data) - body.tell()
        if left:
            raise BodyMismatch(
                f"body has {left} trailing bytes after a {name} record", "(record)", f"{left} trailing bytes"
            )
        if not isinstance(record, dict):
            raise BodyMismatch(f"body of {name} is not a record")
        out = BytesIO()
        try:
            fastavro.schemaless_writer(out, schema, record)
            canonical = out.getbuffer() == memoryview(data)[HEADER_SIZE:]
        except Exception:
            canonical = False
        if not canonical:
            raise self._mismatch(name, data, None)
        return name, record

    def _mismatch(self, name: str, data: bytes, exc: Exception | None) -> BodyMismatch:
        """Say where and why the body is not a record of ``name``, from a walk of the bytes."""
        try:
            found = _diagnose(self._by_name[name][0], self._by_name[name][2], data, HEADER_SIZE)
        except Exception:  # the diagnosis is a courtesy; the refusal stands regardless
            found = None
        if found is not None:
            field, problem = found
            return BodyMismatch(f"body does not decode as {name}: {field}: {problem}", field, problem)
        if exc is None:
            problem = "is not the canonical encoding of the record it decodes to"
        else:
            problem = f"{type(exc).__name__} while reading ({_reader_hint(exc)})"
        return BodyMismatch(f"body does not decode as {name}: {problem}", "(record)", problem)


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


# --------------------------------------------------------------------------- diagnosis

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
                    raise _Malformed(where, f"string is not valid UTF-8 (byte {exc.start + 1} of {len(chunk)})") from None
        elif kind == "fixed":
            self.take(s["size"], where, "fixed")
        elif kind == "enum":
            index = self.long(where)
            if not 0 <= index < len(s["symbols"]):
                raise _Malformed(
                    where, f"enum index {index} out of range: {s['name'].rsplit('.', 1)[-1]} has {len(s['symbols'])} symbols"
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
                    where, f"{kind} declares {count} items but only {self.remaining()} bytes remain (truncated or corrupt)"
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
