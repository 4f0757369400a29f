"""File ingest: publish a JSON-lines file of events, refusing bad lines one by one.

A bad line never stops the good ones; each refusal names the line and field so
the source system's engineer can fix and resend just those.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from producers.publisher import Publisher, PublishReport
from schemas.serde import InvalidRecord, from_json


@dataclass(frozen=True)
class Refusal:
    line: int
    field: str
    problem: str

    def describe(self, path: Path) -> str:
        return f"{path}:{self.line}: {self.field}: {self.problem}"


@dataclass
class IngestReport:
    read: int = 0
    refused: list[Refusal] = field(default_factory=list)
    published: PublishReport | None = None


def ingest_jsonl(path: Path, event_type: str, agency: str, publisher: Publisher) -> IngestReport:
    report = IngestReport()
    schema = publisher.catalogue.schema(event_type)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            report.read += 1
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                report.refused.append(Refusal(number, "(json)", f"not valid JSON: {exc.msg} at column {exc.colno}"))
                continue
            if not isinstance(data, dict):
                report.refused.append(Refusal(number, "(json)", "each line must be a JSON object"))
                continue
            try:
                publisher.publish(event_type, from_json(schema, data), agency=agency)
            except InvalidRecord as exc:
                report.refused.append(Refusal(number, exc.field, exc.problem))
    report.published = publisher.flush()
    return report
