"""The consent store: an append-only history of preferences in the ledger database.

The processor reads the history of every subject in a batch with one query
just before deciding, so a change recorded before an event is processed applies
to it (invariant I5).

:func:`record` files a preference only if it would apply as meant
(consent.model.check_preference): the subject key normalised, every scope known.
The caller passes the known scopes in (:class:`consent.model.KnownScopes`, from
the partner registry); the store reads no files.

Records are written one at a time (:data:`WRITER_LOCK_KEY`), so their ids commit in
order: the retraction sweep reads the records after the last id it handled, and a
record given an id before another but committed after it would fall behind that
cursor, its withdrawal never swept and never relayed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    DateTime,
    Engine,
    Integer,
    Row,
    String,
    any_,
    bindparam,
    insert,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bus import advisory_locks
from consent.model import ConsentDecision, ConsentRecord, InvalidPreference, KnownScopes, check_preference

# pg_advisory_xact_lock key serialising consent writers (first 8 bytes of sha256("accord.consent")).
# SQLite needs none: an insert holds the database's write lock until its commit.
WRITER_LOCK_KEY = advisory_locks.key("accord.consent")


class ConsentBase(DeclarativeBase):
    pass


class ConsentRow(ConsentBase):
    __tablename__ = "consent_records"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subject_key: Mapped[str] = mapped_column(String(128), index=True)
    purpose: Mapped[str | None] = mapped_column(String(64))
    recipient: Mapped[str | None] = mapped_column(String(64))
    recipient_class: Mapped[str | None] = mapped_column(String(64))
    decision: Mapped[str] = mapped_column(String(8))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # ISO/IEC TS 27560 asks how and by whom consent was collected, and for evidence.
    collected_by: Mapped[str] = mapped_column(String(128))
    method: Mapped[str | None] = mapped_column(String(64))
    evidence_ref: Mapped[str | None] = mapped_column(String(256))


def utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything here is stored in UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# The latest expiry a database returns as a datetime (Python's and PostgreSQL's dates meet below year 10000).
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)


def _checked_expiry(expires_at: datetime | None, now: datetime) -> datetime | None:
    """The expiry in UTC, stored as such on every database; InvalidPreference when it could never apply.

    A time past year 9999 once in UTC was accepted, and no reader could load it back:
    the processor then waited on "the database" for ever, deciding nothing.
    """
    if expires_at is None:
        return None
    if expires_at.tzinfo is None:
        raise InvalidPreference("expires_at", "the expiry time must carry a time zone")
    too_late = InvalidPreference("expires_at", f"the expiry time must be before {LATEST_EXPIRY:%Y-%m-%d} (UTC)")
    try:
        utc = expires_at.astimezone(UTC)
    except OverflowError:
        raise too_late from None
    if utc >= LATEST_EXPIRY:
        raise too_late
    if utc <= now:
        raise InvalidPreference("expires_at", "the expiry time has passed: the preference would never apply")
    return utc


def record(
    engine: Engine,
    subject_key: str,
    decision: ConsentDecision,
    *,
    known: KnownScopes,
    purpose: str | None = None,
    recipient: str | None = None,
    recipient_class: str | None = None,
    expires_at: datetime | None = None,
    collected_by: str = "accord-cli",
    method: str | None = None,
    evidence_ref: str | None = None,
) -> ConsentRecord:
    """Append one preference; :class:`InvalidPreference` (a ValueError) when it would never apply as meant.

    ``subject_key`` may be a bare NHS number: it is recorded as ``nhs:<number>``.
    """
    subject_key = check_preference(
        subject_key, known, purpose=purpose, recipient=recipient, recipient_class=recipient_class
    )
    now = datetime.now(UTC)
    expires_at = _checked_expiry(expires_at, now)
    for name, value, most in (
        ("collected_by", collected_by, 128),
        ("method", method, 64),
        ("evidence_ref", evidence_ref, 256),
    ):
        if value is not None and (len(value) > most or not value.isprintable()):
            raise InvalidPreference(name, f"at most {most} printable characters")
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # The id is drawn after the lock: ids commit in their order (the module's docstring).
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITER_LOCK_KEY})
        new_id = conn.execute(
            insert(ConsentRow).returning(ConsentRow.id),
            {
                "subject_key": subject_key,
                "purpose": purpose,
                "recipient": recipient,
                "recipient_class": recipient_class,
                "decision": decision.value,
                "recorded_at": now,
                "expires_at": expires_at,
                "collected_by": collected_by,
                "method": method,
                "evidence_ref": evidence_ref,
            },
        ).scalar_one()
    return ConsentRecord(new_id, subject_key, purpose, recipient, decision, now, recipient_class, expires_at)


def history(target: Engine | Connection, subject_keys: Iterable[str]) -> dict[str, list[ConsentRecord]]:
    """Every record of the given subjects, oldest first, in one query.

    On a Connection it runs there (the processor reads a batch's replays and consent on
    one connection: one check-out, one liveness ping). On PostgreSQL the keys go as one
    array (``= ANY``): the statement is compiled once, where an ``IN`` list is compiled
    again for each number of keys.
    """
    keys = sorted(set(subject_keys))
    out: dict[str, list[ConsentRecord]] = {}
    if not keys:
        return out
    if isinstance(target, Connection):
        rows = _history_rows(target, keys)
    else:
        with target.connect() as conn:
            rows = _history_rows(conn, keys)
    for r in rows:
        out.setdefault(r.subject_key, []).append(
            ConsentRecord(
                r.id,
                r.subject_key,
                r.purpose,
                r.recipient,
                ConsentDecision(r.decision),
                utc(r.recorded_at),
                r.recipient_class,
                utc(r.expires_at) if r.expires_at else None,
            )
        )
    return out


_BY_SUBJECT_PG = (
    select(ConsentRow)
    .where(ConsentRow.subject_key == any_(bindparam("keys", type_=ARRAY(String))))
    .order_by(ConsentRow.id)
)


def _history_rows(conn: Connection, keys: list[str]) -> Sequence[Row[Any]]:
    if conn.dialect.name == "postgresql":
        return conn.execute(_BY_SUBJECT_PG, {"keys": keys}).all()
    return conn.execute(select(ConsentRow).where(ConsentRow.subject_key.in_(keys)).order_by(ConsentRow.id)).all()
