"""ledger.merkle against an independent, minimal RFC 9162 section 2.1 implementation.

The reference below is written from the RFC's text (the recursive MTH, PATH and
SUBPROOF definitions, and the verification algorithms of 2.1.3.2 and 2.1.4.2) and
shares no code with ledger.merkle.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger import merkle

# --- independent reference (RFC 9162 2.1) -------------------------------------------


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def ref_k(n: int) -> int:
    """Largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over the raw leaves."""
    n = len(leaves)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + leaves[0])
    k = ref_k(n)
    return _h(b"\x01" + ref_mth(leaves[:k]) + ref_mth(leaves[k:]))


def ref_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = ref_k(n)
    if m < k:
        return [*ref_path(m, leaves[:k]), ref_mth(leaves[k:])]
    return [*ref_path(m - k, leaves[k:]), ref_mth(leaves[:k])]


def ref_subproof(m: int, leaves: list[bytes], b: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if b else [ref_mth(leaves)]
    k = ref_k(n)
    if m <= k:
        return [*ref_subproof(m, leaves[:k], b), ref_mth(leaves[k:])]
    return [*ref_subproof(m - k, leaves[k:], False), ref_mth(leaves[:k])]


def ref_verify_inclusion(leaf_hash: bytes, leaf_index: int, tree_size: int, path: list[bytes], root: bytes) -> bool:
    """RFC 9162 2.1.3.2, step by step."""
    if leaf_index >= tree_size:
        return False
    fn = leaf_index
    sn = tree_size - 1
    r = leaf_hash
    for p in path:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            r = _h(b"\x01" + p + r)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        else:
            r = _h(b"\x01" + r + p)
        fn //= 2
        sn //= 2
    return sn == 0 and r == root


def ref_verify_consistency(
    first: int, second: int, first_hash: bytes, second_hash: bytes, consistency_path: list[bytes]
) -> bool:
    """RFC 9162 2.1.4.2, step by step (for 0 < first < second)."""
    if not consistency_path:
        return False
    path = list(consistency_path)
    if first & (first - 1) == 0:
        path = [first_hash, *path]
    fn = first - 1
    sn = second - 1
    if fn % 2 == 1:
        while fn % 2 == 1:
            fn //= 2
            sn //= 2
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn % 2 == 1 or fn == sn:
            fr = _h(b"\x01" + c + fr)
            sr = _h(b"\x01" + c + sr)
            if fn % 2 == 0:
                while not (fn % 2 == 1 or fn == 0):
                    fn //= 2
                    sn //= 2
        else:
            sr = _h(b"\x01" + sr + c)
        fn //= 2
        sn //= 2
    return fr == first_hash and sr == second_hash and sn == 0


def leaves_of(n: int, tag: str = "") -> list[bytes]:
    return [f"leaf {tag}{i}".encode() for i in range(n)]


# --- known values ---------------------------------------------------------------------


def test_empty_and_single() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest() == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    assert merkle.root([merkle.leaf_hash(b"x")]) == hashlib.sha256(b"\x00x").digest()


def test_seven_leaf_example_of_the_spec() -> None:
    """The 7-entry worked example (labels a..l as in C2SP merkle-tree, derived from RFC 9162)."""
    d = leaves_of(7)
    a, b, c, dd, e, f, g = (_h(b"\x00" + x) for x in d)
    h, i, j = _h(b"\x01" + a + b), _h(b"\x01" + c + dd), _h(b"\x01" + e + f)
    k, l = _h(b"\x01" + h + i), _h(b"\x01" + j + g)  # noqa: E741 - the worked example's own label
    top = _h(b"\x01" + k + l)
    hashes = [merkle.leaf_hash(x) for x in d]
    assert merkle.root(hashes) == top == ref_mth(d)
    assert merkle.inclusion_proof(0, hashes) == [b, i, l]
    assert merkle.inclusion_proof(3, hashes) == [c, h, l]
    assert merkle.inclusion_proof(4, hashes) == [f, g, k]
    assert merkle.inclusion_proof(6, hashes) == [j, k]
    assert merkle.consistency_proof(3, hashes) == [c, dd, h, l]
    assert merkle.consistency_proof(4, hashes) == [l]
    assert merkle.consistency_proof(6, hashes) == [j, g, k]


def test_known_root_of_a_fixed_list() -> None:
    """A fixed list's root, pinned: any change to the tree's definition shows here."""
    hashes = [merkle.leaf_hash(x) for x in leaves_of(5)]
    assert merkle.root(hashes) == ref_mth(leaves_of(5))
    assert merkle.root(hashes).hex() == ref_mth(leaves_of(5)).hex()


# --- every size, every index ------------------------------------------------------------


@pytest.mark.parametrize("n", range(0, 41))
def test_root_matches_reference(n: int) -> None:
    leaves = leaves_of(n)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    assert merkle.root(hashes) == ref_mth(leaves)
    assert merkle.MerkleTree(hashes).root() == ref_mth(leaves)
    frontier = merkle.Frontier()
    frontier.extend(hashes)
    assert frontier.root() == ref_mth(leaves)
    again = merkle.Frontier.from_bytes(n, frontier.to_bytes())
    assert again.root() == frontier.root()


@pytest.mark.parametrize("n", range(1, 41))
def test_inclusion_proofs_verify_independently(n: int) -> None:
    leaves = leaves_of(n)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    top = ref_mth(leaves)
    tree = merkle.MerkleTree(hashes)
    other_root = ref_mth(leaves_of(n, "other"))
    for m in range(n):
        proof = merkle.inclusion_proof(m, hashes)
        assert proof == ref_path(m, leaves) == tree.inclusion_proof(m)
        assert ref_verify_inclusion(hashes[m], m, n, proof, top)
        assert merkle.verify_inclusion(hashes[m], m, n, proof, top)
        # A wrong leaf, a wrong root, a wrong index or size, a cut or padded proof: refused by both.
        wrong_leaf = merkle.leaf_hash(b"not a leaf")
        assert not ref_verify_inclusion(wrong_leaf, m, n, proof, top)
        assert not merkle.verify_inclusion(wrong_leaf, m, n, proof, top)
        assert not ref_verify_inclusion(hashes[m], m, n, proof, other_root)
        assert not merkle.verify_inclusion(hashes[m], m, n, proof, other_root)
        assert not merkle.verify_inclusion(hashes[m], m, m, proof, top)
        assert not merkle.verify_inclusion(hashes[m], m, n, [*proof, hashes[0]], top)
        if proof:
            assert not merkle.verify_inclusion(hashes[m], m, n, proof[:-1], top)
        if n > 1:
            other = (m + 1) % n
            assert not merkle.verify_inclusion(hashes[m], other, n, proof, top)


@pytest.mark.parametrize("n", range(1, 41))
def test_consistency_proofs_verify_independently(n: int) -> None:
    leaves = leaves_of(n)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    new_root = ref_mth(leaves)
    for m in range(1, n):
        old_root = ref_mth(leaves[:m])
        proof = merkle.consistency_proof(m, hashes)
        assert proof == ref_subproof(m, leaves, True)
        assert ref_verify_consistency(m, n, old_root, new_root, proof)
        assert merkle.verify_consistency(m, n, old_root, new_root, proof)
        # A forked history (one earlier leaf changed) is not consistent with the new tree.
        forked = leaves[:m]
        forked[m // 2] = b"rewritten"
        forked_root = ref_mth(forked)
        assert not ref_verify_consistency(m, n, forked_root, new_root, proof)
        assert not merkle.verify_consistency(m, n, forked_root, new_root, proof)
        wrong_new = ref_mth(leaves_of(n, "other"))
        assert not ref_verify_consistency(m, n, old_root, wrong_new, proof)
        assert not merkle.verify_consistency(m, n, old_root, wrong_new, proof)
        assert not merkle.verify_consistency(m, n, old_root, new_root, proof[:-1])
        assert not merkle.verify_consistency(m, n, old_root, new_root, [*proof, hashes[0]])
    # Equal sizes and the empty old tree: nothing to prove but the roots.
    assert merkle.consistency_proof(n, hashes) == []
    assert merkle.verify_consistency(n, n, new_root, new_root, [])
    assert not merkle.verify_consistency(n, n, new_root, merkle.EMPTY_ROOT, [])
    assert merkle.consistency_proof(0, hashes) == []
    assert merkle.verify_consistency(0, n, merkle.EMPTY_ROOT, new_root, [])
    assert not merkle.verify_consistency(0, n, new_root, new_root, [])


def test_bad_arguments() -> None:
    hashes = [merkle.leaf_hash(x) for x in leaves_of(4)]
    with pytest.raises(ValueError):
        merkle.inclusion_proof(4, hashes)
    with pytest.raises(ValueError):
        merkle.inclusion_proof(-1, hashes)
    with pytest.raises(ValueError):
        merkle.consistency_proof(5, hashes)
    with pytest.raises(ValueError):
        merkle.Frontier(3, [hashes[0]])  # size 3 has two perfect subtrees
    assert not merkle.verify_inclusion(hashes[0], 0, 4, [b"short"], merkle.root(hashes))


@settings(max_examples=150, deadline=None)
@given(
    leaves=st.lists(st.binary(max_size=40), min_size=1, max_size=300),
    data=st.data(),
)
def test_properties_against_reference(leaves: list[bytes], data: st.DataObject) -> None:
    n = len(leaves)
    hashes = [merkle.leaf_hash(x) for x in leaves]
    top = merkle.root(hashes)
    assert top == ref_mth(leaves)
    m = data.draw(st.integers(0, n - 1), label="index")
    assert ref_verify_inclusion(hashes[m], m, n, merkle.inclusion_proof(m, hashes), top)
    old = data.draw(st.integers(1, n), label="old size")
    proof = merkle.consistency_proof(old, hashes)
    old_root = merkle.root(hashes[:old])
    if old < n:
        assert ref_verify_consistency(old, n, old_root, top, proof)
    assert merkle.verify_consistency(old, n, old_root, top, proof)
    frontier = merkle.Frontier()
    frontier.extend(hashes[:old])
    assert frontier.root() == old_root


def test_large_tree_root_is_linear() -> None:
    """100k leaves: the bottom-up root agrees with the streaming frontier (no timing asserted)."""
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(100_000)]
    frontier = merkle.Frontier()
    frontier.extend(hashes)
    assert merkle.root(hashes) == frontier.root()
    tree = merkle.MerkleTree(hashes)
    proof = tree.inclusion_proof(77_777)
    assert len(proof) == 17
    assert merkle.verify_inclusion(hashes[77_777], 77_777, 100_000, proof, tree.root())
