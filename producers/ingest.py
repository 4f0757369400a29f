"""File ingest: publish a JSON-lines file of events, refusing bad lines one by one.

A bad line never stops the good ones; each refusal names the line and every
problem on it (field and what is wrong), so the source system's engineer can
fix and resend just those lines in one go. Each line is checked and sent by
``producers.json_event.publish_json``, the path the outbox relay's rows take too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from producers.json_event import publish_json
from producers.publisher import Publisher, PublishReport
from schemas.validation import Problem

_PROGRESS_EVERY = 1000  # lines between on_progress calls


@dataclass(frozen=True)
class Refusal:
    line: int
    problems: tuple[Problem, ...]

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def problem(self) -> str:
        return self.problems[0].problem

    def describe(self, path: Path) -> str:
        """``file:line: field: problem; field: problem``: every problem of the line, in field order."""
        return f"{path}:{self.line}: " + "; ".join(str(p) for p in self.problems)


@dataclass
class IngestReport:
    read: int = 0
    refused: list[Refusal] = field(default_factory=list)
    published: PublishReport | None = None


def ingest_jsonl(
    path: Path,
    event_type: str,
    agency: str,
    publisher: Publisher,
    *,
    on_progress: Callable[[int], None] | None = None,
) -> IngestReport:
    """Publish every good line of ``path``; ``on_progress(n)`` gets the bytes read, every 1,000 lines and at the end."""
    report = IngestReport()
    publisher.catalogue.schema(event_type)  # an unknown --type is the command's error, before any line is read
    unreported = 0  # bytes read since on_progress was last called
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, start=1):
            if on_progress is not None:
                unreported += len(raw)
                if number % _PROGRESS_EVERY == 0:
                    on_progress(unreported)
                    unreported = 0
            if not raw.strip():
                continue
            report.read += 1
            try:
                line = raw.decode("utf-8").rstrip("\r\n")  # a truncated line's problem names its column
            except UnicodeDecodeError as exc:
                report.refused.append(Refusal(number, (Problem("(line)", f"not valid UTF-8 at byte {exc.start + 1}"),)))
                continue
            problems = publish_json(publisher, event_type, line, agency, what="(json)")
            if problems:
                report.refused.append(Refusal(number, tuple(problems)))
    if on_progress is not None and unreported:
        on_progress(unreported)
    report.published = publisher.flush()
    return report
