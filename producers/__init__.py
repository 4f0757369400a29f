"""Agency side: publishing SDK and file ingest."""

from producers.ingest import IngestReport, Refusal, ingest_jsonl
from producers.publisher import Publisher, PublishReport, RefusedEvent

__all__ = ["IngestReport", "Publisher", "PublishReport", "Refusal", "RefusedEvent", "ingest_jsonl"]
