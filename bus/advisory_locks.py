"""PostgreSQL advisory lock keys: one derivation for every lock Accord takes.

Advisory locks are per database and keyed by a 64-bit integer; a key derived from a
name (``accord.ledger``, ``accord.consent``, ...) keeps each lock its own and stable
across releases, since a running old process and a new one must agree on it.
"""

from __future__ import annotations

import hashlib


def key(name: str) -> int:
    """The lock key of ``name``: the first 8 bytes of its SHA-256, as a signed bigint."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
