"""Accord's Avro schemas: single-object serde and agreement-driven projection."""

from schemas.projection import UnknownField, check_paths, project_record, project_schema
from schemas.serde import (
    BodyMismatch,
    Catalogue,
    InvalidRecord,
    NotSingleObject,
    SerdeError,
    UnknownFingerprint,
    crc64_avro,
    fingerprint,
    from_json,
    load_schema,
    to_json,
    validate,
)

__all__ = [
    "BodyMismatch",
    "Catalogue",
    "InvalidRecord",
    "NotSingleObject",
    "SerdeError",
    "UnknownField",
    "UnknownFingerprint",
    "check_paths",
    "crc64_avro",
    "fingerprint",
    "from_json",
    "load_schema",
    "project_record",
    "project_schema",
    "to_json",
    "validate",
]
