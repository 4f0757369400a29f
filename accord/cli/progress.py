"""Progress lines for long commands, on a terminal only.

The library reports progress through optional ``on_progress(n)`` callbacks and never
prints; this shell turns them into a tqdm bar on stderr when stderr is a terminal, and
into nothing otherwise, so pipes, files and tests see exactly the output they always
did. A progress line holds a stage's name and counts, never a record's contents.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["Tick", "progress", "shown"]

Tick = Callable[[int], None]


def shown() -> bool:
    """Whether progress is drawn: stderr is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _nothing(n: int = 1) -> None:
    pass


@contextmanager
def progress(total: int | None, what: str, unit: str = "it") -> Iterator[Tick]:
    """A ``tick(n=1)`` for one stage of ``total`` units (None: unknown), drawn only on a terminal.

    ``unit="B"`` counts bytes (shown scaled: kB, MB). The bar is erased when the stage
    ends, so a terminal's final output is the command's own.
    """
    if not shown():
        yield _nothing
        return
    from tqdm import tqdm  # type: ignore[import-untyped]  # tqdm ships no type information

    bar = tqdm(
        total=total,
        desc=what,
        unit=unit,
        unit_scale=unit == "B",
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )

    def tick(n: int = 1) -> None:
        bar.update(n)

    try:
        yield tick
    finally:
        bar.close()
