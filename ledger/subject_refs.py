"""Which entries name a subject among their ``subjects``: an index written with the tiles.

Why: a subject report finds a person wherever their key was shared, as an entry's
``subject_key`` (indexed in ledger_entries) or inside its ``subjects`` list (the
event's other people, stored as JSON text). Matching that text needs ``LIKE
'%"key"%'``, which no B-tree index serves, so on a large ledger every report read
every row. ``ledger_subject_refs`` holds one (subject_key, seq) row per key in an
entry's ``subjects``, so a report reads only the subject's own rows.

It is derived data, written in the same transactions as the tiles (ledger/tiles.py:
when a checkpoint is made, or when :func:`ledger.tiles.ensure` extends the store), so
it covers exactly the entries the tiles cover (``ledger.tiles.stored_end``). Entries
after that (newer than the newest checkpoint, at most one checkpoint interval's
worth) are still matched with LIKE, on a ``seq >`` range. Insert-only, like every
ledger table (``ON CONFLICT DO NOTHING``: writers at once write the same rows).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import BigInteger, Connection, Executable, String
from sqlalchemy.orm import Mapped, mapped_column

from ledger.tables import LedgerBase

__all__ = ["LedgerSubjectRef", "write_refs"]


class LedgerSubjectRef(LedgerBase):
    """Entry ``seq`` names ``subject_key`` in its ``subjects`` list."""

    __tablename__ = "ledger_subject_refs"

    subject_key: Mapped[str] = mapped_column(String, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


def refs(seq: int, subjects: Iterable[str]) -> list[tuple[str, int]]:
    return [(key, seq) for key in dict.fromkeys(subjects)]


def write_refs(conn: Connection, pairs: Sequence[tuple[str, int]]) -> None:
    """INSERT (subject_key, seq) rows, skipping any already stored."""
    if not pairs:
        return
    statement: Executable
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        statement = pg_insert(LedgerSubjectRef).on_conflict_do_nothing()
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        statement = sqlite_insert(LedgerSubjectRef).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"no subject index for dialect {conn.dialect.name!r}")
    conn.execute(statement, [{"subject_key": key, "seq": seq} for key, seq in pairs])
