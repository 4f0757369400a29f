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
    """The header is fine but the body is not exactly one record of that schema."""


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
    """A short repr: refusal messages end up in reports and must not dump whole records."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


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
                raise InvalidRecord(where, f"expected a timezone-aware timestamp, got naive {_show(value)}")
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
            _check(schema, record, "", names)
        out = BytesIO()
        out.write(MAGIC)
        out.write(fp)
        try:
            fastavro.schemaless_writer(out, schema, record)
        except Exception as exc:  # validation should have caught it; never emit half a message
            raise InvalidRecord("(record)", f"cannot encode as {name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """Return (registered name, record); refuses anything but exactly one record."""
        if len(data) < HEADER_SIZE:
            raise NotSingleObject(f"too short for a single-object header: {len(data)} bytes, need {HEADER_SIZE}")
        if data[:2] != MAGIC:
            raise NotSingleObject(f"wrong magic {bytes(data[:2]).hex()}, expected {MAGIC.hex()}")
        fp = bytes(data[2:HEADER_SIZE])
        try:
            name, schema = self._by_fp[fp]
        except KeyError:
            raise UnknownFingerprint(fp) from None
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, schema)
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError ...: all mean "not this schema"
            raise BodyMismatch(f"body does not decode as {name}: {type(exc).__name__}: {exc}") from exc
        left = len(data) - body.tell()
        if left:
            raise BodyMismatch(f"body has {left} trailing bytes after a {name} record")
        if not isinstance(record, dict):
            raise BodyMismatch(f"body of {name} is not a record")
        return name, record
