"""Proofs against signed checkpoints, for citizens, partners and auditors to check offline.

An inclusion proof shows that entry ``seq`` (its canonical bytes, the leaf) is leaf
``seq - 1`` of the tree a signed checkpoint commits to; a consistency proof shows that
an older checkpoint's tree is a prefix of a newer one's (nothing was rewritten or cut
between them). Both come with the checkpoint notes, so a holder needs only the ledger's
public key (and RFC 9162's verification algorithms) to check them.

Proofs are made from the stored leaf hashes, and only after checking that they
reproduce the checkpoint's signed root: a tampered ledger yields an error, never a
proof that would not verify.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from ledger import merkle
from ledger.append import canonical_bytes, stored_entry
from ledger.checkpoint import StoredCheckpoint, checkpoint_at, cosigned_note, latest_checkpoint
from ledger.tables import LedgerEntry

__all__ = [
    "ConsistencyProof",
    "InclusionProof",
    "LedgerMismatch",
    "NotCovered",
    "latest_checkpoint",
    "prove_consistency",
    "prove_entries",
    "prove_entry",
]


class NotCovered(LookupError):
    """No checkpoint (yet) covers what was asked for."""


class LedgerMismatch(RuntimeError):
    """The stored entries do not reproduce a signed checkpoint: run ``accord ledger verify``."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class InclusionProof:
    """Entry ``seq`` is leaf ``seq - 1`` of the tree of ``tree_size`` whose root ``checkpoint`` signs."""

    seq: int
    leaf: bytes  # the entry's canonical bytes (Avro binary of schemas/disclosure.avsc)
    leaf_hash: bytes  # SHA-256(0x00 || leaf)
    tree_size: int
    root: bytes
    proof: tuple[bytes, ...]  # audit path, leaf side first (RFC 9162 2.1.3)
    checkpoint: str  # the signed note (with any cosignatures) carrying tree_size and root

    @property
    def leaf_index(self) -> int:
        return self.seq - 1

    def verify(self) -> bool:
        """The proof's own arithmetic (the note's signature is checked with ledger.checkpoint.open_checkpoint)."""
        return merkle.leaf_hash(self.leaf) == self.leaf_hash and merkle.verify_inclusion(
            self.leaf_hash, self.leaf_index, self.tree_size, self.proof, self.root
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "leaf_index": self.leaf_index,
            "leaf": _b64(self.leaf),
            "leaf_hash": _b64(self.leaf_hash),
            "tree_size": self.tree_size,
            "root": _b64(self.root),
            "proof": [_b64(p) for p in self.proof],
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True)
class ConsistencyProof:
    """The tree of ``old_size`` (root ``old_root``) is a prefix of the tree of ``new_size``."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    proof: tuple[bytes, ...]  # RFC 9162 2.1.4
    old_checkpoint: str
    new_checkpoint: str

    def verify(self) -> bool:
        return merkle.verify_consistency(self.old_size, self.new_size, self.old_root, self.new_root, self.proof)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_size": self.old_size,
            "new_size": self.new_size,
            "old_root": _b64(self.old_root),
            "new_root": _b64(self.new_root),
            "proof": [_b64(p) for p in self.proof],
            "old_checkpoint": self.old_checkpoint,
            "new_checkpoint": self.new_checkpoint,
        }


def _leaf_hashes(conn: Connection, size: int) -> list[bytes]:
    """Stored leaf hashes of entries 1..size, in order; LedgerMismatch on a gap."""
    rows = conn.execute(
        select(LedgerEntry.seq, LedgerEntry.leaf_hash).where(LedgerEntry.seq <= size).order_by(LedgerEntry.seq)
    ).all()
    for expected, (seq, _leaf) in enumerate(rows, start=1):
        if seq != expected:
            raise LedgerMismatch(f"entry {expected:,} is missing")
    if len(rows) != size:
        raise LedgerMismatch(f"entries {len(rows) + 1:,} to {size:,} are missing")
    return [bytes(leaf) for _seq, leaf in rows]


def _checked_tree(conn: Connection, checkpoint: StoredCheckpoint) -> merkle.MerkleTree:
    tree = merkle.MerkleTree(_leaf_hashes(conn, checkpoint.tree_size))
    if tree.root() != checkpoint.root:
        raise LedgerMismatch(
            f"the stored entries do not reproduce checkpoint {checkpoint.tree_size:,}'s root; run `accord ledger verify`"
        )
    return tree


def _covering(engine: Engine, checkpoint: StoredCheckpoint | None) -> StoredCheckpoint:
    chosen = checkpoint or latest_checkpoint(engine)
    if chosen is None:
        raise NotCovered("the ledger has no checkpoint yet (`accord ledger checkpoint`)")
    return chosen


def prove_entries(
    engine: Engine, seqs: Iterable[int], checkpoint: StoredCheckpoint | None = None
) -> list[InclusionProof]:
    """Inclusion proofs of several entries against one checkpoint (default the newest), building the tree once."""
    wanted = list(seqs)
    chosen = _covering(engine, checkpoint)
    outside = [s for s in wanted if not 1 <= s <= chosen.tree_size]
    if outside:
        raise NotCovered(
            f"entry {outside[0]:,} is not covered by checkpoint {chosen.tree_size:,} "
            "(the next checkpoint will cover newer entries)"
        )
    note = cosigned_note(engine, chosen.tree_size) or chosen.note
    with engine.connect() as conn:
        tree = _checked_tree(conn, chosen) if wanted else None
        rows = {
            r.seq: r
            for r in conn.execute(select(LedgerEntry.__table__).where(LedgerEntry.seq.in_(sorted(set(wanted)))))
        } if wanted else {}
    proofs: list[InclusionProof] = []
    for seq in wanted:
        row = rows[seq]
        leaf = canonical_bytes(seq, stored_entry(row).draft, bytes(row.prev_hash))
        leaf_hash = merkle.leaf_hash(leaf)
        if tree is None or leaf_hash != tree.levels[0][seq - 1]:
            raise LedgerMismatch(f"entry {seq:,} does not hash to its stored leaf hash (changed)")
        proofs.append(
            InclusionProof(seq, leaf, leaf_hash, chosen.tree_size, chosen.root,
                           tuple(tree.inclusion_proof(seq - 1)), note)
        )
    return proofs


def prove_entry(engine: Engine, seq: int, checkpoint: StoredCheckpoint | None = None) -> InclusionProof:
    """The inclusion proof of entry ``seq`` against ``checkpoint`` (default the newest).

    NotCovered when no checkpoint covers the entry yet; LedgerMismatch when the stored
    entries no longer reproduce the checkpoint (the ledger was tampered with).
    """
    return prove_entries(engine, [seq], checkpoint)[0]


def prove_consistency(engine: Engine, old_size: int, new_size: int | None = None) -> ConsistencyProof:
    """The consistency proof between two stored checkpoints (``new_size`` default the newest)."""
    old = checkpoint_at(engine, old_size)
    new = checkpoint_at(engine, new_size) if new_size is not None else latest_checkpoint(engine)
    if old is None:
        raise NotCovered(f"no checkpoint of tree size {old_size:,}")
    if new is None:
        raise NotCovered(f"no checkpoint of tree size {new_size:,}" if new_size is not None else "no checkpoint yet")
    if old.tree_size > new.tree_size:
        raise ValueError(f"checkpoint {old.tree_size:,} is newer than {new.tree_size:,}")
    with engine.connect() as conn:
        leaves = _checked_tree(conn, new).levels[0]
    if merkle.root(leaves[: old.tree_size]) != old.root:
        raise LedgerMismatch(
            f"the stored entries do not reproduce checkpoint {old.tree_size:,}'s root; run `accord ledger verify`"
        )
    return ConsistencyProof(
        old.tree_size, new.tree_size, old.root, new.root,
        tuple(merkle.consistency_proof(old.tree_size, leaves)),
        cosigned_note(engine, old.tree_size) or old.note,
        cosigned_note(engine, new.tree_size) or new.note,
    )
