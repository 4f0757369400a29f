"""Checking the ledger's hash chain: names the first entry changed, removed, inserted or reordered."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select

from ledger.append import GENESIS_HASH, entry_hash, stored_entry
from ledger.tables import LedgerEntry

_BATCH = 1000


@dataclass
class VerifyResult:
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str | None

    def describe(self) -> str:
        if self.ok:
            return f"ledger OK: {self.entries:,} entries, chain intact"
        return f"ledger BROKEN at entry {self.first_bad_seq}: {self.problem}"


def verify(engine: Engine) -> VerifyResult:
    """Stream the ledger in seq order and check every link; stop at the first bad entry.

    ``entries`` counts the entries read, up to and including the bad one. A ledger whose
    newest entries were cut off cannot be told from a shorter one by the chain alone.
    """
    stmt = select(LedgerEntry.__table__).order_by(LedgerEntry.seq)
    expected_seq = 1
    prev = GENESIS_HASH
    n = 0
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=_BATCH).execute(stmt)
        try:
            for partition in result.partitions():
                for row in partition:
                    n += 1
                    bad = _check(row, expected_seq, prev)
                    if bad is not None:
                        return VerifyResult(False, n, bad[0], bad[1])
                    expected_seq += 1
                    prev = bytes(row.entry_hash)
        finally:
            result.close()
    return VerifyResult(True, n, None, None)


def _check(row: Any, expected_seq: int, prev: bytes) -> tuple[int, str] | None:
    seq = row.seq
    if seq != expected_seq:
        if expected_seq == 1:
            return 1, f"the ledger starts at entry {seq:,}, not 1 (entries removed from the start)"
        return expected_seq, f"entry missing: seq jumps from {expected_seq - 1:,} to {seq:,} (removed)"
    if bytes(row.prev_hash) != prev:
        what = "the genesis hash" if seq == 1 else f"entry {seq - 1:,}'s hash"
        return seq, (
            f"prev_hash does not match {what} (an entry was inserted, removed, reordered "
            "or rewritten with a new hash)"
        )
    try:
        recomputed = entry_hash(seq, stored_entry(row).draft, bytes(row.prev_hash))
    except Exception as exc:  # undecodable contents were changed too
        return seq, f"entry contents cannot be encoded ({type(exc).__name__}) (changed)"
    if recomputed != bytes(row.entry_hash):
        return seq, "entry hash does not match its contents (changed)"
    return None
