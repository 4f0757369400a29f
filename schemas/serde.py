"""Avro single-object encoding of Accord events.

Every message on the bus is self-describing: two magic bytes, the schema's
fingerprint, then the Avro binary body. A consumer therefore never needs a
schema registry round trip; it only needs the schemas it has agreed to read,
held in a :class:`Catalogue`. Anything that does not carry a known fingerprint
or does not decode exactly with the matching schema is refused, never guessed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime
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
    path = SCHEMA_DIR / f"{name}.avsc"
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


# --------------------------------------------------------------------------- catalogue


class Catalogue:
    """The schemas a process may write or read, by name and by fingerprint.

    Decoding looks up the fingerprint, so a message can only ever be read with
    the exact schema it was written with.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Any, bytes, dict[str, Any]]] = {}
        self._by_fp: dict[bytes, tuple[str, Any]] = {}

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
        self._by_name[name] = (parsed_schema, fp, dict(_named_types(parsed_schema)))
        self._by_fp[fp] = (name, parsed_schema)
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
