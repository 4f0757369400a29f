"""Named positions a processor keeps in the database (e.g. the last consent record swept)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Engine, ScalarSelect, String, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class CursorBase(DeclarativeBase):
    pass


class Cursor(CursorBase):
    __tablename__ = "processor_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


def init_cursors(engine: Engine) -> None:
    """Make sure the cursor table is there before the first read.

    PostgreSQL: `accord ledger init` made it (ledger/migrations), and the bus runs no DDL
    there: it is only read. SQLite (dev only): created if missing; two workers starting
    together may both try.
    """
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(select(Cursor.position).limit(1))
        return
    try:
        CursorBase.metadata.create_all(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        # The other one won the race (or, as the app role, we may not create tables at all):
        # the table must be there now, or the first read says so.
        with engine.connect() as conn:
            conn.execute(select(Cursor.position).limit(1))


def position(name: str) -> ScalarSelect[int]:
    """The cursor's position as a scalar subquery (NULL before its first advance), to read with other things."""
    return select(Cursor.position).where(Cursor.name == name).scalar_subquery()


def get(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(position(name))).scalar_one_or_none() or 0


def advance(engine: Engine, name: str, position: int) -> None:
    """Move the cursor forward (never back), whoever else moved it meanwhile.

    One upsert that keeps the larger position: two workers creating or moving the same
    cursor at once must not fail (one of them used to exit with an IntegrityError).
    """
    with engine.begin() as conn:
        postgres = conn.dialect.name == "postgresql"
        stmt = (pg_insert if postgres else sqlite_insert)(Cursor).values(name=name, position=position)
        larger = (func.greatest if postgres else func.max)(Cursor.position, stmt.excluded.position)
        conn.execute(stmt.on_conflict_do_update(index_elements=["name"], set_={"position": larger}))
