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
from typing import Any

import fastavro

from schemas.codegen import _compile_reader, _compile_writer
from schemas.diagnosis import _diagnose, _reader_hint
from schemas.errors import BodyMismatch, InvalidRecord, NotSingleObject, SerdeError, UnknownFingerprint
from schemas.named_types import _named_types
from schemas.validator import _check
from schemas.wire import HEADER_SIZE, MAGIC, fingerprint

__all__ = ["DEFAULT_EVENT_TYPES", "SCHEMA_DIR", "Catalogue", "load_schema"]

SCHEMA_DIR = Path(__file__).resolve().parent
EVENTS_DIR = SCHEMA_DIR / "events"
DEFAULT_EVENT_TYPES = ("custody", "referral", "natal_care", "disclosure", "retraction", "consent_change")


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

