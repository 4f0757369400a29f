"""Avro single-object encoding of Accord events: one import for the serde's public names.

Every message on the bus is self-describing: two magic bytes, the schema's
fingerprint, then the Avro binary body. A consumer therefore never needs a
schema registry round trip; it only needs the schemas it has agreed to read,
held in a :class:`Catalogue`. Anything that does not carry a known fingerprint
or does not decode exactly with the matching schema is refused, never guessed.

The serde lives in one module per concern; this one re-exports them so importers
need not know the split:

- ``schemas.wire``: the single-object header, CRC-64-AVRO and the fingerprint;
- ``schemas.errors``: the refusals (all :class:`SerdeError`);
- ``schemas.validator``: the hand-written check of a record against its schema;
- ``schemas.json_codec``: JSON in (``from_json``) and out (``to_json``);
- ``schemas.codegen``: the compiled reader and writer of the hot path;
- ``schemas.diagnosis``: why a refused body is not a record, field by field;
- ``schemas.registry``: the :class:`Catalogue` and ``load_schema``.
"""

from __future__ import annotations

from schemas.errors import BodyMismatch, InvalidRecord, NotSingleObject, SerdeError, UnknownFingerprint
from schemas.json_codec import from_json, to_json
from schemas.named_types import _join as _join
from schemas.named_types import _named_types as _named_types
from schemas.named_types import _resolve as _resolve
from schemas.registry import DEFAULT_EVENT_TYPES, SCHEMA_DIR, Catalogue, load_schema
from schemas.validator import _check as _check
from schemas.validator import validate
from schemas.wire import HEADER_SIZE, MAGIC, crc64_avro, fingerprint

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "DEFAULT_EVENT_TYPES",
    "SCHEMA_DIR",
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
