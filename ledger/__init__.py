"""The disclosure ledger: append-only, hash-chained record of every sharing decision.

An entry is defined once, by schemas/disclosure.avsc (ledger.entry: the draft, the
stored entry, its leaf bytes and its row); ledger.append appends (lock, chain, COPY,
idempotency), ledger.read reads.

The entries are also the leaves of an RFC 9162 Merkle tree (ledger.merkle) whose root is
signed in checkpoints (ledger.checkpoint, ledger.note); ledger.proofs proves entries
against them, reading the tree from its stored tiles (ledger.tiles; subject reports
use ledger.subject_refs, written with them; both tables are registered on
LedgerBase's metadata by importing them here). The database's schema is made and
upgraded by Alembic revisions (ledger.migrations): :func:`init_ledger`.
"""

from sqlalchemy import Engine

from ledger.append import Appended, Decisions, append, append_decisions, require_current_columns, writer
from ledger.entry import (
    GENESIS_HASH,
    NOT_COVERED,
    OUTCOMES,
    EntryDraft,
    StoredEntry,
    canonical_bytes,
    entry_hash,
    entry_hashes,
    stored_entry,
    to_millis,
)
from ledger.guard import install_guards
from ledger.read import count, entries, event_entries, lookup
from ledger.subject_refs import LedgerSubjectRef
from ledger.tables import LedgerBase, LedgerCheckpoint, LedgerCosignature, LedgerEntry
from ledger.tiles import LedgerTile
from ledger.verify import VerifyResult, verify


def init_ledger(engine: Engine) -> None:
    """Upgrade the database (every table: ledger, consent, cursors; the guards) to the newest revision. Idempotent.

    As the connected role: on PostgreSQL that is the owner (`accord ledger init`).
    """
    from ledger.migrations import upgrade

    upgrade(engine)


__all__ = [
    "GENESIS_HASH",
    "NOT_COVERED",
    "OUTCOMES",
    "Appended",
    "EntryDraft",
    "LedgerBase",
    "Decisions",
    "LedgerCheckpoint",
    "LedgerCosignature",
    "LedgerEntry",
    "LedgerSubjectRef",
    "LedgerTile",
    "StoredEntry",
    "VerifyResult",
    "append",
    "append_decisions",
    "canonical_bytes",
    "count",
    "entries",
    "entry_hash",
    "entry_hashes",
    "event_entries",
    "init_ledger",
    "install_guards",
    "lookup",
    "require_current_columns",
    "stored_entry",
    "to_millis",
    "verify",
    "writer",
]
