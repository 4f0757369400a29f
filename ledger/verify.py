"""Checking the ledger: the hash chain, the Merkle tree and every signed checkpoint.

The chain names the first entry changed, removed, inserted or reordered. The chain
alone cannot see a cut tail, or history rewritten with every later hash recomputed;
signed checkpoints can: the tree over the current entries must have, at every
checkpoint's size, the root that checkpoint signed. A checkpoint whose signature does
not verify with the ledger's key (forged, or replaced by one signed with another key),
or whose stored size or root disagrees with its note, is named too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from ledger import merkle
from ledger.checkpoint import CheckpointBody, StoredCheckpoint, checkpoints, cosignatures, open_checkpoint
from ledger.entry import GENESIS_HASH, entry_hashes, stored_entry
from ledger.note import NoteError, NoteSignature, NoteVerifier, SignedNote
from ledger.tables import LedgerEntry

__all__ = ["VerifyResult", "verify"]

_BATCH = 1000


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str | None
    checkpoints: int = 0  # checkpoints the current tree was found consistent with
    bad_checkpoint: int | None = None  # tree size of the first checkpoint found forged, replaced or malformed
    checkpoint_problem: str | None = None
    signatures_checked: bool = True  # False: checkpoints exist but no key was given to check them

    def describe(self) -> str:
        lines: list[str] = []
        if self.first_bad_seq is not None:
            lines.append(f"ledger BROKEN at entry {self.first_bad_seq}: {self.problem}")
        if self.bad_checkpoint is not None:
            lines.append(f"ledger BROKEN at checkpoint {self.bad_checkpoint}: {self.checkpoint_problem}")
        if lines:
            return "\n".join(lines)
        text = f"ledger OK: {self.entries:,} entries, chain intact"
        if self.checkpoints:
            signed = "signed " if self.signatures_checked else ""
            text += f", consistent with {self.checkpoints:,} {signed}checkpoint{'s' if self.checkpoints > 1 else ''}"
            if not self.signatures_checked:
                text += " (signatures NOT checked: no ledger key given)"
        return text


@dataclass
class _Target:
    """A checkpoint the tree must reproduce, once its note has been checked."""

    tree_size: int
    root: bytes
    frontier: merkle.Frontier | None  # the signed tree's perfect subtrees, to narrow a mismatch


def verify(
    engine: Engine,
    verifier: NoteVerifier | None = None,
    origin: str | None = None,
    kept: Sequence[CheckpointBody] = (),
    *,
    on_progress: Callable[[int], None] | None = None,
) -> VerifyResult:
    """Check every checkpoint's note, then stream the entries in seq order checking each link,
    each entry's hashes, and the tree's root at every checkpoint's size.

    ``verifier`` is the ledger's public key; without it checkpoint signatures are not
    checked (only that the tree matches the stored notes). ``kept`` are checkpoints whose
    notes were kept outside the ledger (by a partner or auditor, or read back from the
    checkpoints topic) and already opened with the key: the tree must match them too, and
    a kept checkpoint the ledger no longer stores is named. ``entries`` counts the
    entries read, up to and including the first bad one. ``on_progress(n)`` is called
    after each batch of ``n`` entries checked (1,000 at a time).
    """
    stored = checkpoints(engine)
    targets, bad_size, bad_problem = _check_checkpoints(engine, stored, verifier, origin)
    stored_sizes = {c.tree_size for c in stored}
    for body in sorted(kept, key=lambda b: b.tree_size):
        if body.tree_size not in stored_sizes and bad_size is None:
            bad_size, bad_problem = (
                body.tree_size,
                "a copy kept outside the ledger has it, the ledger does not (removed)",
            )
        if not any(t.tree_size == body.tree_size and t.root == body.root for t in targets):
            targets.append(_Target(body.tree_size, body.root, None))
    result = _walk(engine, targets, on_progress)
    result.bad_checkpoint, result.checkpoint_problem = bad_size, bad_problem
    result.signatures_checked = verifier is not None or not stored
    result.ok = result.first_bad_seq is None and bad_size is None
    return result


def _check_checkpoints(
    engine: Engine, stored: list[StoredCheckpoint], verifier: NoteVerifier | None, origin: str | None
) -> tuple[list[_Target], int | None, str | None]:
    """The checkpoints whose notes hold, and the first that does not (size, problem)."""
    targets: list[_Target] = []
    bad: tuple[int, str] | None = None
    for c in stored:
        problem = _checkpoint_problem(engine, c, verifier, origin)
        if problem is not None:
            bad = bad or (c.tree_size, problem)
            continue
        try:
            frontier: merkle.Frontier | None = merkle.Frontier.from_bytes(c.tree_size, c.frontier)
        except ValueError:
            frontier = None
        if frontier is not None and frontier.root() != c.root:
            frontier = None  # not the signed tree's: useless for narrowing, harmless otherwise
        targets.append(_Target(c.tree_size, c.root, frontier))
    return targets, bad[0] if bad else None, bad[1] if bad else None


def _checkpoint_problem(
    engine: Engine, c: StoredCheckpoint, verifier: NoteVerifier | None, origin: str | None
) -> str | None:
    try:
        if verifier is not None:
            body = open_checkpoint(c.note, verifier, origin)
        else:
            body = CheckpointBody.parse(SignedNote.parse(c.note).text)
    except NoteError as exc:
        return f"its note does not verify with the ledger key ({exc}): forged or replaced"
    if body.tree_size != c.tree_size or body.root != c.root:
        return "its stored tree size or root differs from its signed note (replaced)"
    text = SignedNote.parse(c.note).text
    for cosig in cosignatures(engine, c.tree_size):
        try:
            ok = NoteVerifier.parse(cosig.vkey).verifies(text, NoteSignature.parse(cosig.signature_line))
        except NoteError:
            ok = False
        if not ok:
            return f"the cosignature of {cosig.cosigner} does not verify over its note (replaced)"
    return None


def _walk(engine: Engine, targets: list[_Target], on_progress: Callable[[int], None] | None = None) -> VerifyResult:
    stmt = select(LedgerEntry.__table__).order_by(LedgerEntry.seq)
    pending = sorted(targets, key=lambda t: t.tree_size)
    frontier = merkle.Frontier()
    matched = 0
    last_good = 0  # size of the largest checkpoint matched so far

    def reached() -> tuple[int, str] | None:
        nonlocal matched, last_good
        while pending and pending[0].tree_size == frontier.size:
            target = pending.pop(0)
            if frontier.root() != target.root:
                return _rewritten(frontier, target, last_good)
            matched += 1
            last_good = target.tree_size
        return None

    expected_seq = 1
    prev = GENESIS_HASH
    before_prev: bytes | None = None  # the hash of the entry before the previous one
    n = 0
    with engine.connect() as conn:
        bad = reached()  # a checkpoint of the empty tree
        if bad is not None:
            return VerifyResult(False, 0, bad[0], bad[1])
        result = conn.execution_options(yield_per=_BATCH).execute(stmt)
        try:
            for partition in result.partitions():
                for row in partition:
                    n += 1
                    checked = _check(row, expected_seq, prev, before_prev)
                    if isinstance(checked, tuple) and isinstance(checked[0], int):
                        return VerifyResult(False, n, checked[0], checked[1], matched)
                    entry_hash, leaf = checked
                    frontier.append(leaf)
                    bad = reached()
                    if bad is not None:
                        return VerifyResult(False, n, bad[0], bad[1], matched)
                    expected_seq += 1
                    before_prev, prev = prev, entry_hash
                if on_progress is not None:
                    on_progress(len(partition))
        finally:
            result.close()
    if pending:
        cut = pending[-1].tree_size
        return VerifyResult(
            False,
            n,
            n + 1,
            f"entries {n + 1:,} to {cut:,} are missing: checkpoint {cut:,} signed a tree of {cut:,} entries "
            f"and the ledger holds {n:,} (the tail was cut)",
            matched,
        )
    return VerifyResult(True, n, None, None, matched)


def _rewritten(current: merkle.Frontier, target: _Target, last_good: int) -> tuple[int, str]:
    """The first entry that can be blamed when the tree differs from a checkpoint's root.

    Every link and hash held, so entries were rewritten with their hashes recomputed.
    The earlier checkpoints still match, and the signed tree's perfect subtrees (its
    stored frontier, which folds to the signed root) narrow it further.
    """
    lo, hi = last_good + 1, target.tree_size
    if target.frontier is not None:
        start = 0
        for mine, signed in zip(current.hashes, target.frontier.hashes, strict=True):
            width = 1 << ((target.tree_size - start).bit_length() - 1)  # the largest power of two left
            if mine != signed:
                lo, hi = max(lo, start + 1), min(hi, start + width)
                break
            start += width
    where = f"entry {lo:,}" if lo == hi else f"entries {lo:,} to {hi:,}"
    return lo, (
        f"the tree differs from signed checkpoint {target.tree_size:,}: {where} "
        f"{'was' if lo == hi else 'include one that was'} changed, inserted or removed "
        "with every later hash recomputed (rewritten)"
    )


def _check(
    row: Any, expected_seq: int, prev: bytes, before_prev: bytes | None
) -> tuple[int, str] | tuple[bytes, bytes]:
    """(bad seq, problem), or the row's (entry_hash, leaf_hash) when it holds."""
    seq = row.seq
    if seq != expected_seq:
        if expected_seq == 1:
            return 1, f"the ledger starts at entry {seq:,}, not 1 (entries removed from the start)"
        return expected_seq, f"entry missing: seq jumps from {expected_seq - 1:,} to {seq:,} (removed)"
    if bytes(row.prev_hash) != prev:
        if before_prev is not None and bytes(row.prev_hash) == before_prev:
            return seq - 1, (
                f"entry {seq - 1:,} was inserted: entry {seq:,} links to entry {seq - 2:,}'s hash, not to it"
                if seq > 2
                else "entry 1 was inserted: entry 2 links to the genesis hash, not to it"
            )
        what = "the genesis hash" if seq == 1 else f"entry {seq - 1:,}'s hash"
        return seq, (
            f"prev_hash does not match {what} (an entry was inserted, removed, reordered or rewritten with a new hash)"
        )
    try:
        recomputed, leaf = entry_hashes(seq, stored_entry(row).draft, bytes(row.prev_hash))
    except Exception as exc:  # noqa: BLE001 - undecodable contents were changed too
        return seq, f"entry contents cannot be encoded ({type(exc).__name__}) (changed)"
    if recomputed != bytes(row.entry_hash):
        return seq, "entry hash does not match its contents (changed)"
    if leaf != bytes(row.leaf_hash):
        return seq, "leaf hash does not match its contents (changed)"
    return recomputed, leaf
