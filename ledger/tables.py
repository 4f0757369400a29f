"""The ledger table: one row per sharing decision, hash-chained in seq order."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class LedgerBase(DeclarativeBase):
    pass


# The name PostgreSQL gave the column's UNIQUE constraint, now spelled out: append() tells
# a duplicate disclosure id (I7) from any other violation by it.
DISCLOSURE_ID_UNIQUE = "ledger_entries_disclosure_id_key"


class LedgerEntry(LedgerBase):
    """One ledger entry. Its indexes were chosen by measuring (bench/ledger_indexes.py: 100k
    rows by binary COPY in 1,000-row transactions, PostgreSQL 15 on 2 shared cores; the
    PostgreSQL backend's CPU per entry, best of 3, ranges over 4 runs, which moved by
    about 0.3 us between runs). Insert cost, added to PRIMARY KEY + UNIQUE for a lookup
    column:

    - no index 2.9 us; PRIMARY KEY (seq) 3.5 (ascending keys: cheap);
    - UNIQUE (disclosure_id), btree: +1.5 to +2.0. Kept: it is what keeps I7 under two
      writers (tests/integration/test_ledger_concurrency.py), and what lets append COPY without
      looking the batch's ids up first: that look-up (= ANY of 1,000 ids) took 3.0 to
      3.7 ms of server CPU and 6 to 10 ms wall per batch, more than the index costs. A
      hash index cannot be UNIQUE; COLLATE "C" (byte order) saved 0.2 to 0.3, not worth
      changing the column's collation;
    - event_id: btree +1.3 to +1.4, hash +0.5 to +1.1. Kept a btree: the processor's
      replay reads a batch's 1,000 event ids with = ANY, 3.8 to 4.7 ms of server CPU on
      the btree against 4.6 to 5.3 on a hash, which takes back what the hash saves on a
      batch's 1,000 to 2,000 entries;
    - subject_key: btree +0.8 to +1.4, hash +0.0 to +0.9. Kept a btree: readers (the
      sweeper, reports) read one key's many entries, as fast on either, and 1,000 keys'
      20,000 rows twice as fast on the btree;
    - refers_to: hash +0.3 to +0.6, against +1.1 to +1.7 for a btree (+0.5 to +1.3 with
      WHERE refers_to IS NOT NULL). A hash index: only receipts and retractions have a
      refers_to, a hash index stores no NULLs, and its readers (reports, receipts) use =
      and IN, as fast on either (1.5 ms for 412 keys, 0.03 ms for one).

    So 8.1 to 8.6 us an entry, against 8.6 to 9.6 with four btrees. On SQLite every
    index is a btree (postgresql_using is PostgreSQL's).

    decided_at has a btree since revision 0002 (ledger/migrations): every count on the
    dashboard is over a period of decided_at (accord/web/flows.py), which otherwise read
    the whole table (docs/ledger.md, "Migrations", has the measurement).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (
        UniqueConstraint("disclosure_id", name=DISCLOSURE_ID_UNIQUE),
        Index("ix_ledger_entries_refers_to", "refers_to", postgresql_using="hash"),
    )

    # Assigned by append() under a lock: 1, 2, 3, ... without gaps.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    disclosure_id: Mapped[str] = mapped_column(String(64))  # UNIQUE: __table_args__
    event_id: Mapped[str] = mapped_column(String, index=True)  # the processor's replay reads by event (event_entries)
    event_type: Mapped[str] = mapped_column(String)
    provider: Mapped[str] = mapped_column(String)
    recipient: Mapped[str] = mapped_column(String)
    agreement_id: Mapped[str] = mapped_column(String)
    agreement_version: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # a symbol of schemas/disclosure.avsc's Outcome
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    fields: Mapped[str] = mapped_column(Text)  # JSON list of dotted paths, in disclosure order
    consent_mode: Mapped[str] = mapped_column(String)
    consent_version: Mapped[int] = mapped_column(BigInteger)
    subject_key: Mapped[str] = mapped_column(String, index=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)  # the dashboard's periods
    refers_to: Mapped[str | None] = mapped_column(String(64))  # hash index: __table_args__
    # Hex SHA-256 of the event as received: a replay tells the same event from another reusing its id.
    event_digest: Mapped[str] = mapped_column(String(64))
    subjects: Mapped[str] = mapped_column(Text)  # JSON list of the event's other subject keys
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    # RFC 9162 leaf hash, SHA-256(0x00 || canonical bytes): kept so the Merkle tree over
    # 100k+ entries is built without re-encoding them (ledger/merkle.py, docs/ledger.md).
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LedgerCheckpoint(LedgerBase):
    """A signed checkpoint (C2SP tlog-checkpoint): the Merkle root at a tree size, signed.

    One per tree size (a size has one root). ``frontier`` holds the roots of the tree's
    perfect subtrees at that size (ledger/merkle.Frontier) so the next checkpoint extends
    it instead of re-reading every entry; it must fold to ``root``, which the note signs.
    """

    __tablename__ = "ledger_checkpoints"

    tree_size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)  # the signed note, as published
    frontier: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LedgerCosignature(LedgerBase):
    """An auditor's signature line over a checkpoint's note text, verified before it is stored."""

    __tablename__ = "ledger_cosignatures"

    tree_size: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("ledger_checkpoints.tree_size"), primary_key=True, autoincrement=False
    )
    cosigner: Mapped[str] = mapped_column(String(255), primary_key=True)  # key name
    key_id: Mapped[str] = mapped_column(String(8), primary_key=True)  # hex
    vkey: Mapped[str] = mapped_column(Text)  # the verifier key it was checked against
    signature_line: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PseudonymKeyCheck(LedgerBase):
    """A check value of the pseudonym key the processors use, newest in force (ledger/pseudonym_keys.py).

    Only the check is kept (an HMAC of a constant under the key), never the key.
    """

    __tablename__ = "pseudonym_keys"

    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    check_value: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))  # "first use" or "accepted"
