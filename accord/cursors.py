"""Named positions a processor keeps in the database (e.g. the last consent record swept)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Engine, String, select
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
    """Create the cursor table if it is missing; two workers starting together may both try."""
    try:
        CursorBase.metadata.create_all(engine)
    except (IntegrityError, OperationalError, ProgrammingError):
        # The other one won the race (or, as the app role, we may not create tables at all):
        # the table must be there now, or the first read says so.
        with engine.connect() as conn:
            conn.execute(select(Cursor.position).limit(1))


def get(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(Cursor.position).where(Cursor.name == name)).scalar_one_or_none() or 0


def advance(engine: Engine, name: str, position: int) -> None:
    """Move the cursor forward (never back), whoever else moved it meanwhile.

    The row is created with ON CONFLICT DO NOTHING first: two workers creating the same
    cursor at once must not fail (one of them used to exit with an IntegrityError).
    """
    with engine.begin() as conn:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(insert(Cursor).values(name=name, position=0).on_conflict_do_nothing(index_elements=["name"]))
        current = conn.execute(select(Cursor).where(Cursor.name == name).with_for_update()).first()
        if current is not None and position > current.position:
            conn.execute(Cursor.__table__.update().where(Cursor.name == name).values(position=position))
