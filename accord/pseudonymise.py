"""Per-recipient pseudonyms for identifiers: keyed HMAC tokens.

A recipient under a ``pseudonymised`` agreement can link records about one
person (the token is stable for that recipient) but cannot reverse it, and two
recipients cannot join their data on it (each recipient has its own key,
derived from the bus's secret). Pure functions; the key comes from settings.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

# Which fields of each event are identifiers, as dotted paths.
IDENTIFIERS: dict[str, tuple[str, ...]] = {
    "custody": ("subject.pnc_id", "subject.nhs_number", "custody_record_id"),
    "referral": ("subject.nhs_number", "subject.local_id", "referral_id"),
    "natal_care": ("mother.nhs_number", "baby.nhs_number"),
}

TOKEN_PREFIX = "psn:"


def recipient_key(secret: bytes, recipient: str) -> bytes:
    return hmac.new(secret, b"accord-pseudonym|" + recipient.encode(), hashlib.sha256).digest()


def token(secret: bytes, recipient: str, value: str) -> str:
    """The recipient's pseudonym for one identifier value."""
    digest = hmac.new(recipient_key(secret, recipient), value.encode(), hashlib.sha256).hexdigest()
    return TOKEN_PREFIX + digest[:32]


def pseudonymise(event_type: str, projected: dict[str, Any], secret: bytes, recipient: str) -> dict[str, Any]:
    """A copy of ``projected`` with every identifier present replaced by the recipient's token."""
    if not secret:
        raise ValueError("pseudonymisation needs a secret (ACCORD_PSEUDONYM_KEY)")
    out = copy.deepcopy(projected)
    for path in IDENTIFIERS[event_type]:
        *parents, leaf = path.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = token(secret, recipient, node[leaf])
    return out
