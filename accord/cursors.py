"""Named positions a processor keeps in the database (e.g. the last consent record swept)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Engine, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class CursorBase(DeclarativeBase):
    pass


class Cursor(CursorBase):
    __tablename__ = "processor_cursors"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)


def init_cursors(engine: Engine) -> None:
    CursorBase.metadata.create_all(engine)


def get(engine: Engine, name: str) -> int:
    with engine.connect() as conn:
        return conn.execute(select(Cursor.position).where(Cursor.name == name)).scalar_one_or_none() or 0


def advance(engine: Engine, name: str, position: int) -> None:
    """Move the cursor forward (never back), whoever else moved it meanwhile."""
    with engine.begin() as conn:
        current = conn.execute(select(Cursor).where(Cursor.name == name).with_for_update()).first()
        if current is None:
            conn.execute(Cursor.__table__.insert().values(name=name, position=position))
        elif position > current.position:
            conn.execute(Cursor.__table__.update().where(Cursor.name == name).values(position=position))
