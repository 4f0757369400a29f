"""RFC 9162 section 2.1 Merkle tree over the ledger's entries: pure functions, no I/O.

SHA-256 throughout. A leaf's hash is SHA-256(0x00 || leaf), an interior node's is
SHA-256(0x01 || left || right), and the tree over n leaves splits at the largest power
of two smaller than n (a left-balanced tree), so the root at every size is a commitment
to the ordered list of entries up to that size. The empty tree's root is SHA-256("").

Functions taking ``leaf_hashes`` take the leaf HASHES (what :func:`leaf_hash` returns),
so a caller holding stored leaf hashes never re-hashes leaves. The ledger's leaf for
entry ``seq`` is its canonical bytes, at index ``seq - 1``.

Trees are built bottom-up (pairs at each level, an unpaired last node carried up
unchanged), which gives the same hashes as the RFC's recursive definition in linear time
and without recursion; :class:`Frontier` keeps only the right edge, so a root can be
computed over a stream of any length in O(log n) memory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "Frontier",
    "MerkleTree",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
_LEAF = b"\x00"
_NODE = b"\x01"


def leaf_hash(leaf: bytes) -> bytes:
    """SHA-256(0x00 || leaf): the hash of one leaf (an entry's canonical bytes)."""
    return hashlib.sha256(_LEAF + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): an interior node."""
    return hashlib.sha256(_NODE + left + right).digest()


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    sha = hashlib.sha256
    up = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        up.append(level[-1])  # unpaired: carried up unchanged, as the RFC's split implies
    return up


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of the leaves whose hashes are given (RFC 9162 2.1.1)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    level = list(leaf_hashes)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Every level of the tree over ``leaf_hashes``: many inclusion proofs for one O(n) build.

    Uses about twice the leaf hashes' memory; for one proof :func:`inclusion_proof` is enough.
    """

    def __init__(self, leaf_hashes: Sequence[bytes]) -> None:
        self.size = len(leaf_hashes)
        self.levels: list[list[bytes]] = [list(leaf_hashes)]
        while len(self.levels[-1]) > 1:
            self.levels.append(_next_level(self.levels[-1]))

    def root(self) -> bytes:
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def inclusion_proof(self, index: int) -> list[bytes]:
        """The audit path of leaf ``index`` (RFC 9162 2.1.3.1), leaf-side first."""
        if not 0 <= index < self.size:
            raise ValueError(f"index {index} is outside a tree of size {self.size}")
        proof: list[bytes] = []
        i = index
        for level in self.levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):  # an unpaired last node has no sibling at this level
                proof.append(level[sibling])
            i >>= 1
        return proof


def inclusion_proof(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PATH(index, D[n]) of RFC 9162 2.1.3.1 for the tree of size len(leaf_hashes)."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """PROOF(old_size, D[n]) of RFC 9162 2.1.4.1; n = len(leaf_hashes).

    Empty when old_size is 0 or n (nothing to prove beyond comparing roots).
    """
    n = len(leaf_hashes)
    if not 0 <= old_size <= n:
        raise ValueError(f"old size {old_size} is outside 0..{n}")
    if old_size in (0, n):
        return []
    proof: list[bytes] = []
    _subproof(old_size, leaf_hashes, 0, n, True, proof)
    return proof


def _subproof(m: int, leaves: Sequence[bytes], start: int, end: int, whole: bool, out: list[bytes]) -> None:
    """SUBPROOF(m, D[start:end], whole), appending to out (RFC 9162 2.1.4.1)."""
    n = end - start
    if m == n:
        if not whole:
            out.append(root(leaves[start:end]))
        return
    k = _largest_power_of_two_below(n)
    if m <= k:
        _subproof(m, leaves, start, start + k, whole, out)
        out.append(root(leaves[start + k : end]))
    else:
        _subproof(m - k, leaves, start + k, end, False, out)
        out.append(root(leaves[start : start + k]))


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2: does ``proof`` put the leaf at ``index`` of the tree ``root`` of ``size``?"""
    if not 0 <= index < size or any(len(p) != HASH_SIZE for p in proof):
        return False
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            return False  # too many proof hashes
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """RFC 9162 2.1.4.2: is the tree ``old_root`` of ``old_size`` a prefix of ``new_root``?

    Sizes equal: the proof must be empty and the roots equal. Old size 0: the proof
    must be empty and the old root the empty tree's.
    """
    if not 0 <= old_size <= new_size or any(len(p) != HASH_SIZE for p in proof):
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof and old_root == EMPTY_ROOT
    if not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is a node of the path
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False  # too many proof hashes
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root


class Frontier:
    """The right edge of a growing tree: the roots of its perfect subtrees, largest first.

    Appending is amortised O(1) and the root at the current size is O(log n), so the root
    at every checkpoint size is found in one pass over any number of leaves. A checkpoint
    stores its frontier (:meth:`to_bytes`) so the next one continues from it.
    """

    def __init__(self, size: int = 0, hashes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.hashes = list(hashes)
        if len(self.hashes) != size.bit_count() or any(len(h) != HASH_SIZE for h in self.hashes):
            raise ValueError(f"a frontier of size {size} has {size.bit_count()} hashes of {HASH_SIZE} bytes")

    def append(self, leaf_hash: bytes) -> None:
        """Add the next leaf (given by its hash)."""
        h = leaf_hash
        n = self.size
        while n & 1:  # merge equal-height subtrees, as a binary counter carries
            h = node_hash(self.hashes.pop(), h)
            n >>= 1
        self.hashes.append(h)
        self.size += 1

    def extend(self, leaf_hashes: Iterable[bytes]) -> None:
        for h in leaf_hashes:
            self.append(h)

    def root(self) -> bytes:
        if not self.hashes:
            return EMPTY_ROOT
        r = self.hashes[-1]
        for h in reversed(self.hashes[:-1]):
            r = node_hash(h, r)
        return r

    def copy(self) -> Frontier:
        return Frontier(self.size, self.hashes)

    def to_bytes(self) -> bytes:
        return b"".join(self.hashes)

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Frontier:
        if len(data) % HASH_SIZE:
            raise ValueError("a frontier is a whole number of 32-byte hashes")
        return cls(size, [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)])
