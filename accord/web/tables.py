"""A table as the pages show it and as its CSV export writes it: one object, two renderings.

Each dashboard table is built once as a :class:`Table`; the HTML template and
:meth:`Table.csv` both read it, so "export any table as CSV" gives exactly the
cells on the page (a link's text; no markup; numbers without thousands separators). A cell an agency's text could
start with ``=``, ``+``, ``-``, ``@`` or a tab is prefixed with ``'`` in the CSV so a
spreadsheet does not run it as a formula (OWASP CSV injection).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Link:
    text: str
    href: str
    lines: bool = False  # the page breaks the text into lines at ", " (the CSV keeps one line)

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class Tag:
    """A GOV.UK tag (e.g. "Review overdue") after a cell's text."""

    text: str
    tag: str
    colour: str = "red"

    def __str__(self) -> str:
        return f"{self.text} {self.tag}" if self.tag else self.text  # as the page reads


Cell = str | int | Link | Tag


@dataclass(frozen=True)
class Table:
    key: str  # ?table=<key>&format=csv
    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: frozenset[int] = field(default_factory=frozenset)  # column indexes aligned as numbers
    row_header: bool = True  # the first cell of each row is a header (th scope=row)
    empty: str = "Nothing in this period."

    def text_rows(self, *, plain_numbers: bool = False) -> list[list[str]]:
        """The cells' text as the page shows it (1,234), or with ``plain_numbers`` as the CSV has it (1234)."""
        return [[_text(c, plain_numbers) for c in row] for row in self.rows]

    def csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\r\n")
        writer.writerow([_safe(h) for h in self.headers])
        for row in self.text_rows(plain_numbers=True):
            writer.writerow([_safe(c) for c in row])
        return out.getvalue()


def _text(cell: Cell, plain_numbers: bool = False) -> str:
    if isinstance(cell, int):
        return str(cell) if plain_numbers else f"{cell:,}"
    return str(cell)


def _safe(text: str) -> str:
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


__all__ = ["Cell", "Link", "Table", "Tag"]
