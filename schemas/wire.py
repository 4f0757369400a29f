"""The wire format: Avro single-object encoding's header and the schema fingerprint.

A message is two magic bytes, the 8-byte fingerprint of its writer's schema, then
the Avro binary body. The fingerprint is CRC-64-AVRO of the schema's Parsing
Canonical Form, so properties outside that form (``doc``, ``accord.*``) never change it.
"""

from __future__ import annotations

import struct
from typing import Any

from fastavro.schema import to_parsing_canonical_form

__all__ = ["HEADER_SIZE", "MAGIC", "crc64_avro", "fingerprint"]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8


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
