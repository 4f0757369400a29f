"""The ledger table: one row per sharing decision, hash-chained in seq order."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class LedgerBase(DeclarativeBase):
    pass


class LedgerEntry(LedgerBase):
    __tablename__ = "ledger_entries"

    # Assigned by append() under a lock: 1, 2, 3, ... without gaps.
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    disclosure_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_id: Mapped[str] = mapped_column(String)
    event_type: Mapped[str] = mapped_column(String)
    provider: Mapped[str] = mapped_column(String)
    recipient: Mapped[str] = mapped_column(String)
    agreement_id: Mapped[str] = mapped_column(String)
    agreement_version: Mapped[int] = mapped_column(Integer)
    purpose: Mapped[str] = mapped_column(Text)
    legal_basis: Mapped[str] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))  # 'DISCLOSED' or 'WITHHELD'
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    fields: Mapped[str] = mapped_column(Text)  # JSON list of dotted paths, in disclosure order
    consent_mode: Mapped[str] = mapped_column(String)
    consent_version: Mapped[int] = mapped_column(BigInteger)
    subject_key: Mapped[str] = mapped_column(String, index=True)
    decided_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    refers_to: Mapped[str | None] = mapped_column(String(64), index=True)
    prev_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    entry_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
