"""The flows dashboard's figures: SQL aggregates over the ledger, nothing else.

Every figure on ``/dashboard`` comes from a query here, computed by the
database (``GROUP BY`` and ``count``) over ``ledger_entries`` for a period of
days (UTC, both ends included) on the entry's ``decided_at``:

- *disclosed*: DISCLOSED entries, records sent to a recipient;
- *withheld*: WITHHELD entries, a recipient an agreement names that got nothing
  (consent denied, explicit consent missing), by reason;
- *retracted*: RETRACTED entries, notices that an earlier disclosure must be
  deleted (consent withdrawn, an agreement ended), counted on the day of the
  retraction, not of the disclosure;
- *acknowledged*: RECEIVED entries, partners' receipts;
- *not covered*: NOT_COVERED entries, events no agreement in force covered (no
  recipient); by provider and event type.

Awaiting a receipt is over all time, not the period: disclosures and retractions
with no RECEIVED entry referring to them (ledger.receipts.pending_receipts,
counted here by recipient). The queries read no subject key and return none:
the dashboard shows staff no personal data.

Pure queries, typed results; the page (accord.web.dashboard) only arranges them.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, Engine, Select, and_, exists, func, select
from sqlalchemy.orm import aliased

from ledger.entry import NOT_COVERED
from ledger.receipts import ACKNOWLEDGEABLE, RECEIVED
from ledger.tables import LedgerEntry

DISCLOSED: Final = "DISCLOSED"
WITHHELD: Final = "WITHHELD"
RETRACTED: Final = "RETRACTED"
FLOW_OUTCOMES: Final = (DISCLOSED, WITHHELD, RETRACTED, RECEIVED)
MAX_DAYS: Final = 3660  # a period longer than ten years is refused (PeriodError)


class PeriodError(ValueError):
    """A period the dashboard cannot show; the message says what to enter."""


@dataclass(frozen=True)
class Period:
    """Days ``start`` to ``end``, both included, in UTC."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise PeriodError("the end date must be the same as or after the start date")
        if (self.end - self.start).days > MAX_DAYS:
            raise PeriodError("choose a period of at most ten years")

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        """[from, until): midnight UTC at the start, midnight UTC after the end."""
        return (
            datetime.combine(self.start, time(), tzinfo=UTC),
            datetime.combine(self.end + timedelta(days=1), time(), tzinfo=UTC),
        )

    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    @classmethod
    def last_days(cls, n: int, today: date | None = None) -> Period:
        today = today or datetime.now(UTC).date()
        return cls(today - timedelta(days=n - 1), today)


@dataclass(frozen=True)
class Flow:
    """One provider -> recipient flow under one agreement version, over a period."""

    provider: str
    recipient: str
    agreement_id: str
    agreement_version: int
    disclosed: int = 0
    withheld: int = 0
    retracted: int = 0
    acknowledged: int = 0

    @property
    def total(self) -> int:
        return self.disclosed + self.withheld + self.retracted


@dataclass(frozen=True)
class ReasonCount:
    provider: str
    recipient: str
    agreement_id: str
    reason: str  # the reason's kind, e.g. "consent denied" (record numbers taken off)
    count: int


@dataclass(frozen=True)
class DayCount:
    day: date
    disclosed: int = 0
    withheld: int = 0
    retracted: int = 0
    acknowledged: int = 0
    not_covered: int = 0


@dataclass(frozen=True)
class NotCovered:
    provider: str
    event_type: str
    count: int


@dataclass(frozen=True)
class Pending:
    """Entries sent to ``recipient`` that it has not acknowledged yet (all time)."""

    recipient: str
    disclosures: int
    retractions: int
    oldest: datetime | None


@dataclass(frozen=True)
class EntryRow:
    """What the drill-down shows of an entry: no subject key, no field values."""

    seq: int
    decided_at: datetime
    event_type: str
    provider: str
    recipient: str
    agreement_id: str
    agreement_version: int
    outcome: str
    reason: str | None


@dataclass(frozen=True)
class LedgerSize:
    entries: int
    last_seq: int
    first_at: datetime | None
    last_at: datetime | None


_REASON_DETAIL = re.compile(r"\s*\((?:consent record|version|record) [^)]*\)\s*$")


def reason_kind(reason: str | None) -> str:
    """A reason without its record numbers: "consent denied (consent record 12)" -> "consent denied"."""
    if not reason:
        return "(no reason recorded)"
    return _REASON_DETAIL.sub("", reason).strip() or reason


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(period: Period, agreement_id: str | None = None) -> ColumnElement[bool]:
    start, until = period.bounds
    clause = and_(LedgerEntry.decided_at >= start, LedgerEntry.decided_at < until)
    if agreement_id:
        clause = and_(clause, LedgerEntry.agreement_id == agreement_id)
    return clause


def _day(engine: Engine) -> ColumnElement[Any]:
    """The UTC calendar day of decided_at, in the database's own terms."""
    if engine.dialect.name == "postgresql":
        return func.date(func.timezone("UTC", LedgerEntry.decided_at))
    return func.date(LedgerEntry.decided_at)  # SQLite keeps UTC wall time as text


def _rows(engine: Engine, stmt: Select[Any, *tuple[Any, ...]]) -> Sequence[Any]:
    with engine.connect() as conn:
        return conn.execute(stmt).all()


def flows(engine: Engine, period: Period, agreement_id: str | None = None) -> list[Flow]:
    """Counts per (provider, recipient, agreement version) and outcome, one query; sorted."""
    key = (LedgerEntry.provider, LedgerEntry.recipient, LedgerEntry.agreement_id, LedgerEntry.agreement_version)
    stmt = (
        select(*key, LedgerEntry.outcome, func.count())
        .where(_in(period, agreement_id), LedgerEntry.outcome.in_(FLOW_OUTCOMES))
        .group_by(*key, LedgerEntry.outcome)
    )
    counts: dict[tuple[str, str, str, int], dict[str, int]] = defaultdict(dict)
    for provider, recipient, agreement, version, outcome, n in _rows(engine, stmt):
        counts[(provider, recipient, agreement, version)][outcome] = int(n)
    return [
        Flow(p, r, a, v, c.get(DISCLOSED, 0), c.get(WITHHELD, 0), c.get(RETRACTED, 0), c.get(RECEIVED, 0))
        for (p, r, a, v), c in sorted(counts.items())
    ]


def withheld_by_reason(engine: Engine, period: Period, agreement_id: str | None = None) -> list[ReasonCount]:
    """WITHHELD entries per flow and kind of reason (counted per exact reason by SQL, then by kind)."""
    key = (LedgerEntry.provider, LedgerEntry.recipient, LedgerEntry.agreement_id, LedgerEntry.reason)
    stmt = select(*key, func.count()).where(_in(period, agreement_id), LedgerEntry.outcome == WITHHELD).group_by(*key)
    merged: dict[tuple[str, str, str, str], int] = defaultdict(int)
    for provider, recipient, agreement, reason, n in _rows(engine, stmt):
        merged[(provider, recipient, agreement, reason_kind(reason))] += int(n)
    return [ReasonCount(p, r, a, why, n) for (p, r, a, why), n in sorted(merged.items())]


def per_day(engine: Engine, period: Period, agreement_id: str | None = None) -> list[DayCount]:
    """Every day of the period (days with nothing included), counts per outcome."""
    day = _day(engine).label("day")
    stmt = (
        select(day, LedgerEntry.outcome, func.count())
        .where(_in(period, agreement_id))
        .group_by(day, LedgerEntry.outcome)
    )
    counts: dict[date, dict[str, int]] = defaultdict(dict)
    for value, outcome, n in _rows(engine, stmt):
        d = value if isinstance(value, date) else date.fromisoformat(str(value))
        counts[d][outcome] = int(n)
    return [
        DayCount(
            d,
            counts[d].get(DISCLOSED, 0),
            counts[d].get(WITHHELD, 0),
            counts[d].get(RETRACTED, 0),
            counts[d].get(RECEIVED, 0),
            counts[d].get(NOT_COVERED, 0),
        )
        for d in period.days()
    ]


def not_covered(engine: Engine, period: Period) -> list[NotCovered]:
    """Events no agreement covered, per provider and event type."""
    stmt = (
        select(LedgerEntry.provider, LedgerEntry.event_type, func.count())
        .where(_in(period), LedgerEntry.outcome == NOT_COVERED)
        .group_by(LedgerEntry.provider, LedgerEntry.event_type)
        .order_by(LedgerEntry.provider, LedgerEntry.event_type)
    )
    return [NotCovered(p, t, int(n)) for p, t, n in _rows(engine, stmt)]


def pending(engine: Engine, older_than: timedelta | None = None, now: datetime | None = None) -> list[Pending]:
    """Per recipient, disclosures and retractions with no receipt yet (the same rule as pending_receipts)."""
    receipt = aliased(LedgerEntry)
    acknowledged = exists().where(and_(receipt.refers_to == LedgerEntry.disclosure_id, receipt.outcome == RECEIVED))
    stmt = (
        select(LedgerEntry.recipient, LedgerEntry.outcome, func.count(), func.min(LedgerEntry.decided_at))
        .where(LedgerEntry.outcome.in_(sorted(ACKNOWLEDGEABLE)), ~acknowledged)
        .group_by(LedgerEntry.recipient, LedgerEntry.outcome)
    )
    if older_than is not None:
        stmt = stmt.where(LedgerEntry.decided_at <= (now or datetime.now(UTC)) - older_than)
    found: dict[str, dict[str, Any]] = defaultdict(lambda: {DISCLOSED: 0, RETRACTED: 0, "oldest": None})
    for recipient, outcome, n, oldest in _rows(engine, stmt):
        slot = found[recipient]
        slot[outcome] = int(n)
        when = _utc(oldest)
        if when is not None and (slot["oldest"] is None or when < slot["oldest"]):
            slot["oldest"] = when
    return [Pending(r, s[DISCLOSED], s[RETRACTED], s["oldest"]) for r, s in sorted(found.items())]


def entries(
    engine: Engine,
    period: Period,
    *,
    provider: str,
    recipient: str,
    agreement_id: str | None = None,
    outcome: str | None = None,
    after_seq: int = 0,
    limit: int = 200,
) -> list[EntryRow]:
    """The entries of one flow in the period, in seq order after ``after_seq``, at most ``limit``."""
    stmt = (
        select(
            LedgerEntry.seq,
            LedgerEntry.decided_at,
            LedgerEntry.event_type,
            LedgerEntry.provider,
            LedgerEntry.recipient,
            LedgerEntry.agreement_id,
            LedgerEntry.agreement_version,
            LedgerEntry.outcome,
            LedgerEntry.reason,
        )
        .where(_in(period, agreement_id), LedgerEntry.provider == provider, LedgerEntry.recipient == recipient)
        .where(LedgerEntry.seq > after_seq)
        .order_by(LedgerEntry.seq)
        .limit(limit)
    )
    if outcome:
        stmt = stmt.where(LedgerEntry.outcome == outcome)
    return [
        EntryRow(
            r.seq,
            _utc(r.decided_at) or r.decided_at,
            r.event_type,
            r.provider,
            r.recipient,
            r.agreement_id,
            r.agreement_version,
            r.outcome,
            r.reason,
        )
        for r in _rows(engine, stmt)
    ]


def ledger_size(engine: Engine) -> LedgerSize:
    """How many entries the ledger holds, its last seq, and the first and last decision times."""
    stmt = select(
        func.count(),
        func.coalesce(func.max(LedgerEntry.seq), 0),
        func.min(LedgerEntry.decided_at),
        func.max(LedgerEntry.decided_at),
    )
    n, last, first_at, last_at = _rows(engine, stmt)[0]
    return LedgerSize(int(n), int(last), _utc(first_at), _utc(last_at))


__all__ = [
    "DISCLOSED",
    "FLOW_OUTCOMES",
    "RETRACTED",
    "WITHHELD",
    "DayCount",
    "EntryRow",
    "Flow",
    "LedgerSize",
    "NotCovered",
    "Pending",
    "Period",
    "PeriodError",
    "ReasonCount",
    "entries",
    "flows",
    "ledger_size",
    "not_covered",
    "pending",
    "per_day",
    "reason_kind",
    "withheld_by_reason",
]
