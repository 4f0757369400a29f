"""Proof bundles for the citizen's page, checked in the citizen's own browser.

Why: a proof the server checks for itself asks the citizen to trust the server. Each
entry on ``/me`` comes with a bundle holding everything needed to check it without
Accord: the entry's leaf (its canonical bytes), its index, the tree size, the RFC 9162
inclusion proof, the signed checkpoint note and the ledger's public key (``vkey``).
``static/proofs.js`` checks it with WebCrypto; :func:`check_bundle` is the same check
in Python, step for step and with the same words, so tests can hold the two to each
other on real bundles.

The proofs themselves come from ledger/proofs.py (through ledger.report.collect, which
proves every entry it shows against the newest checkpoint). A proof speaks for its own
entry only, against a signed root: the browser checks the arithmetic and the
signature; it cannot know that the key is the ledger's unless the citizen compares the
key id shown on the page with the one the ledger publishes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import fastavro

from ledger import merkle
from ledger.checkpoint import CheckpointBody
from ledger.leaf_codec import SCHEMA
from ledger.note import NoteError, NoteVerifier, SignedNote
from ledger.report import ReportItem

__all__ = [
    "FAILURES",
    "SHOWN",
    "VERIFIED",
    "ProofBundle",
    "bundle_for",
    "bundles_for",
    "check_bundle",
]

VERIFIED = "Verified in your browser"
# What failed, in the words the page shows (static/proofs.js has the same strings).
FAILURES = {
    "malformed": "the proof is not in the expected form",
    "leaf": "the leaf does not match its hash",
    "index": "the leaf is not the entry it claims to be",
    "entry": "the signed entry is not the one shown here",
    "signature": "the checkpoint's signature does not verify with the ledger's key",
    "checkpoint": "the signed checkpoint cannot be read",
    "size": "the checkpoint is for a different tree size than the proof",
    "root": "the proof does not lead to the signed root",
}


@dataclass(frozen=True)
class ProofBundle:
    """What the browser needs to check one entry, and nothing it must take on trust but the key."""

    seq: int
    leaf: bytes  # the entry's canonical bytes (Avro binary of schemas/disclosure.avsc)
    leaf_hash: bytes  # SHA-256(0x00 || leaf), as the ledger stores it
    leaf_index: int  # seq - 1
    tree_size: int
    proof: tuple[bytes, ...]  # audit path, leaf side first (RFC 9162 2.1.3)
    checkpoint: str  # the signed note carrying tree size and root
    vkey: str  # the ledger's verifier key, <name>+<hex key id>+<base64(0x01 || key)>

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf": base64.b64encode(self.leaf).decode(),
            "leaf_hash": base64.b64encode(self.leaf_hash).decode(),
            "leaf_index": self.leaf_index,
            "tree_size": self.tree_size,
            "proof": [base64.b64encode(p).decode() for p in self.proof],
            "checkpoint": self.checkpoint,
            "vkey": self.vkey,
        }


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def bundle_for(proof: Mapping[str, Any], vkey: str) -> ProofBundle:
    """A bundle from a proof as ledger.proofs.InclusionProof.to_dict() writes it (a report item's ``proof``)."""
    return ProofBundle(
        seq=int(proof["seq"]),
        leaf=_b64(proof["leaf"]),
        leaf_hash=_b64(proof["leaf_hash"]),
        leaf_index=int(proof["leaf_index"]),
        tree_size=int(proof["tree_size"]),
        proof=tuple(_b64(p) for p in proof["proof"]),
        checkpoint=str(proof["checkpoint"]),
        vkey=vkey,
    )


def bundles_for(items: Sequence[ReportItem], vkey: str | None) -> dict[int, dict[str, Any]]:
    """``{seq: bundle}`` for every item that has a proof (none without the ledger's key)."""
    if vkey is None:
        return {}
    return {i.seq: bundle_for(i.proof, vkey).to_dict() for i in items if i.proof is not None}


_LEAF_SCHEMA = fastavro.parse_schema(dict(SCHEMA))
SHOWN = ("disclosure_id", "recipient", "outcome")  # what the page says an entry is, checked against its leaf


def _leaf_record(leaf: bytes) -> dict[str, Any] | None:
    """The entry the leaf encodes (fastavro, an independent reader of the same schema), or None."""
    try:
        record = fastavro.schemaless_reader(BytesIO(leaf), _LEAF_SCHEMA, None)
    except Exception:  # noqa: BLE001 - any undecodable leaf is one answer: it is not the entry
        return None
    return record if isinstance(record, dict) else None


def check_bundle(bundle: Mapping[str, Any], shown: Mapping[str, str] | None = None) -> str | None:
    """None when the bundle verifies, else the key of FAILURES naming the first check that failed.

    ``shown``: what the page says the entry is (:data:`SHOWN`), to be found in its leaf.
    The order is the browser's: the leaf against its hash, its index and what is shown, the
    checkpoint's signature by ``vkey`` over the note's text, the checkpoint's body,
    its tree size against the bundle's, then RFC 9162's inclusion algorithm from the
    leaf hash to the signed root.
    """
    try:
        leaf = _b64(bundle["leaf"])
        stated_hash = _b64(bundle["leaf_hash"])
        index = int(bundle["leaf_index"])
        size = int(bundle["tree_size"])
        path = [_b64(p) for p in bundle["proof"]]
        note = str(bundle["checkpoint"])
        verifier = NoteVerifier.parse(str(bundle["vkey"]))
    except (KeyError, TypeError, ValueError, binascii.Error, NoteError):
        return "malformed"
    computed = merkle.leaf_hash(leaf)
    if computed != stated_hash:
        return "leaf"
    record = _leaf_record(leaf)
    if record is None or record.get("seq") != index + 1:
        return "index"
    if shown is not None and any(record.get(k) != shown.get(k) for k in SHOWN):
        return "entry"
    try:
        signed = SignedNote.parse(note)
    except NoteError:
        return "checkpoint"
    mine = [s for s in signed.signatures if s.name == verifier.name and s.key_id == verifier.key_id]
    if not mine or not all(verifier.verifies(signed.text, s) for s in mine):
        return "signature"
    try:
        body = CheckpointBody.parse(signed.text)
    except NoteError:
        return "checkpoint"
    if body.tree_size != size:
        return "size"
    if not merkle.verify_inclusion(computed, index, size, path, body.root):
        return "root"
    return None
