"""The serde catalogue: the schemas a process may write or read, by name and by fingerprint.

Every event is decoded once and every disclosure encoded once on the bus's hot
path, so the catalogue compiles a reader and a writer per schema
(``schemas.codegen``); fastavro stays the judge of anything they are not sure of.
Anything that does not carry a known fingerprint or does not decode exactly with
the matching schema is refused, never guessed.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any, cast

import fastavro

from schemas import catalogue as events
from schemas.codegen import _compile_reader, _compile_writer
from schemas.diagnosis import _diagnose, _reader_hint
from schemas.errors import BodyMismatch, InvalidRecord, NotSingleObject, SerdeError, UnknownFingerprint
from schemas.named_types import _named_types
from schemas.validator import _check
from schemas.wire import HEADER_SIZE, MAGIC, fingerprint

__all__ = ["DEFAULT_EVENT_TYPES", "SCHEMA_DIR", "Catalogue", "load_schema"]

SCHEMA_DIR = Path(__file__).resolve().parent
# Schemas of the bus's own records, beside the event catalogue (schemas/events/).
OWN_SCHEMAS = ("disclosure", "retraction", "consent_change")
DEFAULT_EVENT_TYPES = (*events.default().names(), *OWN_SCHEMAS)


def load_schema(name: str) -> dict[str, Any]:
    """Parse a schema shipped with this package: an event type's latest version, else ``schemas/<name>.avsc``.

    A new parse each call, so a caller may change what it gets. Raises
    FileNotFoundError for an unknown name (the agreement loader relies on it).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise FileNotFoundError(f"no schema named {name!r}")
    catalogue = events.default()
    path = catalogue[name].latest.path if name in catalogue else SCHEMA_DIR / f"{name}.avsc"
    with path.open(encoding="utf-8") as fh:
        return cast("dict[str, Any]", fastavro.parse_schema(json.load(fh)))


class Catalogue:
    """The schemas a process may write or read, by name and by fingerprint.

    Decoding looks up the fingerprint, so a message can only ever be read with
    the exact schema it was written with.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Any, bytes, dict[str, Any]]] = {}
        self._by_fp: dict[bytes, tuple[str, Any]] = {}  # fingerprint -> (name it decodes as, schema)
        self._readers: dict[bytes, Any] = {}  # fingerprint -> compiled reader (absent: fastavro's path only)
        self._writers: dict[str, Any] = {}  # name -> compiled writer
        # Every version of an event type, as "<type>.v<N>": decoded as the type, written on request.
        self._versions: dict[str, tuple[Any, bytes, dict[str, Any]]] = {}
        self._version_readers: dict[bytes, Any] = {}  # older versions' compiled readers

    @classmethod
    def default(cls, event_catalogue: events.EventCatalogue | None = None) -> Catalogue:
        """A new catalogue holding every version of every event type and the bus's own schemas.

        Each event type's latest version is registered under the type's name (what a
        producer writes); every version's fingerprint decodes as the type, so the
        processor reads v1 and v2 records side by side. ``event_catalogue``: another
        catalogue folder's types (default: the package's ``schemas/events/``).
        """
        catalogue = cls()
        for event_type in event_catalogue or events.default():
            catalogue.register_event_type(event_type)
        for name in OWN_SCHEMAS:
            catalogue.register(name, load_schema(name))
        return catalogue

    def register_event_type(self, event_type: events.EventType) -> None:
        """The type's latest version under its name, and every version under ``<type>.v<N>``.

        A record of any version decodes as the type's name; ``encode("<type>.v<N>", ...)``
        writes an older version (fastavro's path: the hot path writes the latest).
        """
        name = event_type.name
        self.register(name, event_type.latest.schema)
        for version in event_type.versions:
            vname, schema = f"{name}.v{version.number}", version.schema
            fp = fingerprint(schema)
            if vname in self._versions or vname in self._by_name:
                if self._entry(vname)[1] == fp:
                    continue
                raise SerdeError(f"schema name {vname!r} is already registered with another schema")
            if fp in self._by_fp and self._by_fp[fp][0] != name:
                raise SerdeError(f"schema {fp.hex()} is already registered as {self._by_fp[fp][0]!r}, not {name!r}")
            names = dict(_named_types(schema))
            self._versions[vname] = (schema, fp, names)
            if fp not in self._by_fp:
                self._by_fp[fp] = (name, schema)
                reader = _compile_reader(schema, names)
                if reader is not None:
                    self._version_readers[fp] = reader

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
            pass
        try:
            return self._versions[name]
        except KeyError:
            raise SerdeError(f"no schema registered as {name!r}") from None

    def schema(self, name: str) -> Any:
        return self._entry(name)[0]

    def fingerprint_of(self, name: str) -> bytes:
        return self._entry(name)[1]

    def versions(self) -> list[str]:
        """Every event type version held, ``<type>.v<N>`` (not in :meth:`names`: each decodes as its type)."""
        return list(self._versions)

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
                return cast("bytes", writer(record))  # what fastavro writes; anything it is unsure of falls through
            except Exception:  # noqa: BLE001 - the compiled writer is a shortcut: whatever it trips on, fastavro writes or refuses below
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
        reader = self._readers.get(fp) or self._version_readers.get(fp)
        if reader is not None:
            # One pass that checks canonical form as it reads; whatever it does not vouch for
            # (including every refusal) is decided and worded by fastavro's path below.
            try:
                record, end = reader(data, HEADER_SIZE)
                if end == len(data):
                    return name, record
            except Exception:  # noqa: BLE001 - the compiled reader vouches or not: any failure goes to fastavro's path, which decides
                pass
        body = BytesIO(data)
        body.seek(HEADER_SIZE)
        try:
            record = fastavro.schemaless_reader(body, schema)
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, OverflowError ...
            raise self._mismatch(name, data, exc, schema) from exc
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
        except Exception:  # noqa: BLE001 - a record fastavro cannot write back is not canonical: refused below
            canonical = False
        if not canonical:
            raise self._mismatch(name, data, None, schema)
        return name, record

    def _mismatch(self, name: str, data: bytes, exc: Exception | None, schema: Any = None) -> BodyMismatch:
        """Say where and why the body is not a record of ``name``, from a walk of the bytes.

        ``schema``: the one the fingerprint named (an older version of an event type);
        default the schema registered as ``name``.
        """
        try:
            if schema is None:
                schema = self._by_name[name][0]
            found = _diagnose(schema, _named_types(schema), data, HEADER_SIZE)
        except Exception:  # noqa: BLE001 - the diagnosis is a courtesy; the refusal stands regardless
            found = None
        if found is not None:
            field, problem = found
            return BodyMismatch(f"body does not decode as {name}: {field}: {problem}", field, problem)
        if exc is None:
            problem = "is not the canonical encoding of the record it decodes to"
        else:
            problem = f"{type(exc).__name__} while reading ({_reader_hint(exc)})"
        return BodyMismatch(f"body does not decode as {name}: {problem}", "(record)", problem)
