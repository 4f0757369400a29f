"""Proofs against signed checkpoints, for citizens, partners and auditors to check offline.

An inclusion proof shows that entry ``seq`` (its canonical bytes, the leaf) is leaf
``seq - 1`` of the tree a signed checkpoint commits to; a consistency proof shows that
an older checkpoint's tree is a prefix of a newer one's (nothing was rewritten or cut
between them). Both come with the checkpoint notes, so a holder needs only the ledger's
public key (and RFC 9162's verification algorithms) to check them.

Proofs are read from the stored tiles of the tree (ledger/tiles.py): O(log N) rows per
proof, never every leaf. Making one:

1. the tiles are brought up to the checkpoint's size if they are behind (a ledger
   written before tiles existed: once, streaming its leaf hashes);
2. the tiles are checked against the checkpoint's SIGNED root (edge tiles fold to it,
   every other tile hashes to its checked parent); a damaged tile is rebuilt from the
   leaf hashes it covers, and stored entries that do not make the signed tree are
   LedgerMismatch;
3. the entry is re-encoded and must hash to the leaf the signed tree holds for it
   (an entry changed since it was signed is LedgerMismatch, naming it);
4. the proof is checked with RFC 9162's verifier against the signed root before it is
   returned: no proof that would not verify is ever handed out.

A proof speaks for its own entry only: it does not re-read the rest of the ledger
(``accord ledger verify`` does, and names what was changed, removed or cut).
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from ledger import merkle, tiles
from ledger.checkpoint import StoredCheckpoint, checkpoint_at, cosigned_note, latest_checkpoint
from ledger.entry import StoredEntry, canonical_bytes, stored_entry
from ledger.tables import LedgerEntry

__all__ = [
    "ConsistencyProof",
    "InclusionProof",
    "LedgerMismatch",
    "NotCovered",
    "iter_range_proofs",
    "latest_checkpoint",
    "prove_consistency",
    "prove_entries",
    "prove_entry",
]


_IN_CHUNK = 1000  # seqs per IN list (a database's parameter limit is never reached)
_RANGE_CHUNK = 1000  # entries per keyset page


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


@contextmanager
def _signed_tree_errors() -> Iterator[None]:
    """Tiles that cannot be made to fit the signed root (ledger.tiles.TilesMismatch) as LedgerMismatch."""
    try:
        yield
    except tiles.TilesMismatch as exc:
        raise LedgerMismatch(str(exc)) from exc


def _open_tree(engine: Engine, conn: Connection, checkpoint: StoredCheckpoint) -> tiles.TileTree:
    """Steps 1 and 2: the checkpoint's tree, from tiles checked against its signed root.

    ``conn`` must not be in a transaction that wrote (the tiles are extended, if they
    are behind, on a connection of their own).
    """
    with _signed_tree_errors():
        tiles.ensure(engine, checkpoint.tree_size)
        return tiles.TileTree.open(conn, checkpoint.tree_size, checkpoint.root)


def _proof(tree: tiles.TileTree, entry: StoredEntry, note: str) -> InclusionProof:
    """Steps 3 and 4 for one stored entry."""
    seq = entry.seq
    try:
        leaf = canonical_bytes(seq, entry.draft, entry.prev_hash)
    except Exception as exc:  # undecodable contents were changed
        raise LedgerMismatch(f"entry {seq:,} cannot be encoded ({type(exc).__name__}) (changed)") from exc
    leaf_hash = merkle.leaf_hash(leaf)
    with _signed_tree_errors():
        signed_leaf = tree.leaf_hash(seq - 1)
        path = tuple(tree.inclusion_proof(seq - 1))
    if leaf_hash != signed_leaf:
        raise LedgerMismatch(
            f"entry {seq:,} does not hash to its leaf in checkpoint {tree.size:,}'s signed tree (changed)"
        )
    if not merkle.verify_inclusion(leaf_hash, seq - 1, tree.size, path, tree.signed_root):
        raise LedgerMismatch(f"the proof of entry {seq:,} does not verify against checkpoint {tree.size:,}")
    return InclusionProof(seq, leaf, leaf_hash, tree.size, tree.signed_root, path, note)


def _stored(row: Any) -> StoredEntry:
    try:
        return stored_entry(row)
    except Exception as exc:  # a column that no longer decodes was changed
        raise LedgerMismatch(f"entry {row.seq:,} cannot be read ({type(exc).__name__}) (changed)") from exc


def _covering(engine: Engine, checkpoint: StoredCheckpoint | None) -> StoredCheckpoint:
    chosen = checkpoint or latest_checkpoint(engine)
    if chosen is None:
        raise NotCovered("the ledger has no checkpoint yet (`accord ledger checkpoint`)")
    return chosen


def _require_covered(engine: Engine, chosen: StoredCheckpoint, seqs: Iterable[int]) -> None:
    """NotCovered naming the first entry the checkpoint cannot prove, and whether waiting helps."""
    outside = [s for s in seqs if not 1 <= s <= chosen.tree_size]
    if not outside:
        return
    seq = outside[0]
    if seq < 1:
        raise NotCovered(f"there is no entry {seq:,}: entries are numbered from 1")
    with engine.connect() as conn:
        size = conn.execute(select(func.max(LedgerEntry.seq))).scalar_one() or 0
    if seq > size:
        raise NotCovered(f"there is no entry {seq:,}: the ledger holds {size:,}")
    raise NotCovered(
        f"entry {seq:,} is not covered by checkpoint {chosen.tree_size:,} yet (the next checkpoint will cover it)"
    )


def prove_entries(
    engine: Engine, seqs: Iterable[int], checkpoint: StoredCheckpoint | None = None
) -> list[InclusionProof]:
    """Inclusion proofs of several entries against one checkpoint (default the newest).

    The entries are read 1,000 at a time by seq; the tiles are checked once and shared.
    For a long range, :func:`iter_range_proofs` streams instead of building a list.
    """
    wanted = list(seqs)
    chosen = _covering(engine, checkpoint)
    _require_covered(engine, chosen, wanted)
    if not wanted:
        return []
    note = cosigned_note(engine, chosen.tree_size) or chosen.note
    t = LedgerEntry.__table__
    proofs: dict[int, InclusionProof] = {}
    with engine.connect() as conn:
        tree = _open_tree(engine, conn, chosen)
        unique = sorted(set(wanted))
        for i in range(0, len(unique), _IN_CHUNK):
            chunk = unique[i : i + _IN_CHUNK]
            for row in conn.execute(select(t).where(t.c.seq.in_(chunk))):
                proofs[row.seq] = _proof(tree, _stored(row), note)
    missing = [s for s in wanted if s not in proofs]
    if missing:
        raise LedgerMismatch(f"entry {missing[0]:,} is missing")
    return [proofs[s] for s in wanted]


def iter_range_proofs(
    engine: Engine, from_seq: int, to_seq: int, checkpoint: StoredCheckpoint, note: str
) -> Iterator[tuple[StoredEntry, InclusionProof]]:
    """Entries ``from_seq``..``to_seq`` in order, each with its inclusion proof: bounded memory.

    NotCovered, and LedgerMismatch for tiles that cannot be made to fit the signed
    root, are raised here, before anything is yielded; a missing or changed entry is
    LedgerMismatch while iterating. Entries are read by keyset (``seq >= next ...
    LIMIT 1000``), so any range streams with one page of rows and the reader's tile
    cache in memory.
    """
    if to_seq < from_seq:
        return iter(())
    _require_covered(engine, checkpoint, (from_seq, to_seq))
    with engine.connect() as conn:
        _open_tree(engine, conn, checkpoint)
    return _range_proofs(engine, from_seq, to_seq, checkpoint, note)


def _range_proofs(
    engine: Engine, from_seq: int, to_seq: int, checkpoint: StoredCheckpoint, note: str
) -> Iterator[tuple[StoredEntry, InclusionProof]]:
    t = LedgerEntry.__table__
    with engine.connect() as conn:
        tree = _open_tree(engine, conn, checkpoint)
        expected = from_seq
        while expected <= to_seq:
            rows = conn.execute(
                select(t).where(t.c.seq >= expected, t.c.seq <= to_seq).order_by(t.c.seq).limit(_RANGE_CHUNK)
            ).all()
            if not rows:
                raise LedgerMismatch(f"entry {expected:,} is missing")
            for row in rows:
                if row.seq != expected:
                    raise LedgerMismatch(f"entry {expected:,} is missing")
                entry = _stored(row)
                yield entry, _proof(tree, entry, note)
                expected += 1


def prove_entry(engine: Engine, seq: int, checkpoint: StoredCheckpoint | None = None) -> InclusionProof:
    """The inclusion proof of entry ``seq`` against ``checkpoint`` (default the newest).

    NotCovered when no checkpoint covers the entry yet; LedgerMismatch when the stored
    entries no longer reproduce the checkpoint (the ledger was tampered with).
    """
    return prove_entries(engine, [seq], checkpoint)[0]


def no_checkpoint_of(engine: Engine, size: int) -> NotCovered:
    """NotCovered for a tree size no checkpoint has, saying which is the newest."""
    newest = latest_checkpoint(engine)
    return NotCovered(
        f"no checkpoint of tree size {size:,}"
        + (f" (the newest is of {newest.tree_size:,} entries)" if newest else " (the ledger has no checkpoint yet)")
    )


def prove_consistency(engine: Engine, old_size: int, new_size: int | None = None) -> ConsistencyProof:
    """The consistency proof between two stored checkpoints (``new_size`` default the newest)."""
    old = checkpoint_at(engine, old_size)
    new = checkpoint_at(engine, new_size) if new_size is not None else latest_checkpoint(engine)
    if old is None:
        raise no_checkpoint_of(engine, old_size)
    if new is None:
        raise no_checkpoint_of(engine, new_size) if new_size is not None else NotCovered("no checkpoint yet")
    if old.tree_size > new.tree_size:
        raise ValueError(f"checkpoint {old.tree_size:,} is newer than {new.tree_size:,}")
    with engine.connect() as conn:
        tree = _open_tree(engine, conn, new)
        with _signed_tree_errors():
            proof = tuple(tree.consistency_proof(old.tree_size))
    if not merkle.verify_consistency(old.tree_size, new.tree_size, old.root, new.root, proof):
        raise LedgerMismatch(
            f"checkpoint {old.tree_size:,}'s root is not a prefix of checkpoint {new.tree_size:,}'s signed tree; "
            "run `accord ledger verify`"
        )
    return ConsistencyProof(
        old.tree_size,
        new.tree_size,
        old.root,
        new.root,
        proof,
        cosigned_note(engine, old.tree_size) or old.note,
        cosigned_note(engine, new.tree_size) or new.note,
    )
