"""The disclosure ledger: append-only, hash-chained record of every sharing decision.

The entries are also the leaves of an RFC 9162 Merkle tree (ledger.merkle) whose root is
signed in checkpoints (ledger.checkpoint, ledger.note); ledger.proofs proves entries
against them.
"""

from ledger.append import (
    GENESIS_HASH,
    Appended,
    EntryDraft,
    StoredEntry,
    append,
    canonical_bytes,
    count,
    entries,
    entry_hash,
    entry_hashes,
    init_ledger,
    lookup,
    to_millis,
)
from ledger.guard import install_guards
from ledger.tables import LedgerBase, LedgerCheckpoint, LedgerCosignature, LedgerEntry
from ledger.verify import VerifyResult, verify

__all__ = [
    "GENESIS_HASH",
    "Appended",
    "EntryDraft",
    "LedgerBase",
    "LedgerCheckpoint",
    "LedgerCosignature",
    "LedgerEntry",
    "StoredEntry",
    "VerifyResult",
    "append",
    "canonical_bytes",
    "count",
    "entries",
    "entry_hash",
    "entry_hashes",
    "init_ledger",
    "install_guards",
    "lookup",
    "to_millis",
    "verify",
]
