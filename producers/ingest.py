"""File ingest: publish a JSON-lines file of events, refusing bad lines one by one.

A bad line never stops the good ones; each refusal names the line and every
problem on it (field and what is wrong), so the source system's engineer can
fix and resend just those lines in one go.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from producers.publisher import Publisher, PublishReport
from schemas.serde import InvalidRecord, from_json
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
    schema = publisher.catalogue.schema(event_type)
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
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                report.refused.append(Refusal(number, (Problem("(line)", f"not valid UTF-8 at byte {exc.start + 1}"),)))
                continue
            problems = _line_problems(line, event_type, agency, publisher, schema)
            if problems:
                report.refused.append(Refusal(number, tuple(problems)))
    if on_progress is not None and unreported:
        on_progress(unreported)
    report.published = publisher.flush()
    return report


def _line_problems(line: str, event_type: str, agency: str, publisher: Publisher, schema: object) -> list[Problem]:
    """Publish one line; the problems that refused it, or [] when it was sent."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f": {exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ": nested too deeply"
        return [Problem("(json)", f"not valid JSON{where}")]
    if not isinstance(data, dict):
        return [Problem("(json)", "each line must be a JSON object")]
    try:
        record = from_json(schema, data)
    except InvalidRecord as exc:
        # A timestamp or date that does not parse: report it with whatever else the raw line shows.
        problems, _ = publisher.problems(event_type, data, agency, check_schema=False)
        return [Problem(exc.field, exc.problem)] + [p for p in problems if p.field != exc.field]
    try:
        publisher.publish(event_type, record, agency=agency)
    except InvalidRecord as exc:
        return list(getattr(exc, "problems", None) or [Problem(exc.field, exc.problem)])
    return []
