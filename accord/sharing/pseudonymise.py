"""Per-recipient pseudonyms for identifiers: keyed HMAC tokens.

A recipient under a ``pseudonymised`` agreement can link records about one
person (the token is stable for that recipient) but cannot reverse it, and two
recipients cannot join their data on it (each recipient has its own key,
derived from the bus's secret). Pure functions; the key comes from settings.
Which fields are identifiers is each event type's ``accord.identifiers``
(schemas/events/<type>/).

On the hot path each disclosure pays for its own tokens only: a recipient's key
is derived once (a small bounded cache, keyed by secret and recipient), and the
copy of a projection copies just the sub-records that hold an identifier
(``copy.deepcopy`` of a whole projection cost more than the HMACs).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from typing import Any

from schemas import catalogue

# Which fields of each event are identifiers, as dotted paths: each type's accord.identifiers.
IDENTIFIERS: dict[str, tuple[str, ...]] = {t.name: t.identifiers for t in catalogue.default()}

TOKEN_PREFIX = "psn:"

# The identifier paths of each event type as a tree: name -> None (an identifier) or a subtree.
_Tree = dict[str, "_Tree | None"]


def _identifier_tree(paths: tuple[str, ...]) -> _Tree:
    root: _Tree = {}
    for path in paths:
        *parents, leaf = path.split(".")
        node = root
        for part in parents:
            child = node.setdefault(part, {})
            assert child is not None, f"{path}: an identifier inside an identifier"
            node = child
        node[leaf] = None
    return root


_TREES: dict[str, _Tree] = {event_type: _identifier_tree(paths) for event_type, paths in IDENTIFIERS.items()}


@lru_cache(maxsize=1024)
def recipient_key(secret: bytes, recipient: str) -> bytes:
    return hmac.new(secret, b"accord-pseudonym|" + recipient.encode(), hashlib.sha256).digest()


def key_check(secret: bytes) -> str:
    """A short public check value of the bus's secret: tells two keys apart, reveals neither.

    Kept in the ledger database (ledger/pseudonym_keys.py) so a processor started with
    another key than the one in force is refused before it gives anyone a pseudonym.
    """
    return hmac.new(secret, b"accord-pseudonym-key-check|v1", hashlib.sha256).hexdigest()[:16]


def _token(key: bytes, value: str) -> str:
    return TOKEN_PREFIX + hmac.digest(key, value.encode(), "sha256")[:16].hex()


def token(secret: bytes, recipient: str, value: str) -> str:
    """The recipient's pseudonym for one identifier value."""
    return _token(recipient_key(secret, recipient), value)


def _swap(node: dict[str, Any], tree: _Tree, key: bytes) -> dict[str, Any]:
    """``node`` with the identifiers under ``tree`` tokenised: a new dict where anything changed, else ``node``."""
    out: dict[str, Any] | None = None
    for name, sub in tree.items():
        value = node.get(name)
        if sub is None:
            if not isinstance(value, str):
                continue
            new: Any = _token(key, value)
        else:
            if not isinstance(value, dict):
                continue
            new = _swap(value, sub, key)
            if new is value:
                continue
        if out is None:
            out = dict(node)
        out[name] = new
    return node if out is None else out


def pseudonymise(event_type: str, projected: dict[str, Any], secret: bytes, recipient: str) -> dict[str, Any]:
    """A copy of ``projected`` with every identifier present replaced by the recipient's token.

    The copy is new down every path to an identifier; sub-records without one are
    shared with ``projected`` (a projection is itself a copy, never the source event).
    """
    if not secret:
        raise ValueError("pseudonymisation needs a secret (ACCORD_PSEUDONYM_KEY)")
    out = _swap(projected, _TREES[event_type], recipient_key(secret, recipient))
    return dict(out) if out is projected else out
