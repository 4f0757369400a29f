"""The disclosure ledger: append-only, hash-chained record of every sharing decision."""

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
    init_ledger,
    lookup,
    to_millis,
)
from ledger.guard import install_guards
from ledger.tables import LedgerBase, LedgerEntry
from ledger.verify import VerifyResult, verify

__all__ = [
    "GENESIS_HASH",
    "Appended",
    "EntryDraft",
    "LedgerBase",
    "LedgerEntry",
    "StoredEntry",
    "VerifyResult",
    "append",
    "canonical_bytes",
    "count",
    "entries",
    "entry_hash",
    "init_ledger",
    "install_guards",
    "lookup",
    "to_millis",
    "verify",
]
