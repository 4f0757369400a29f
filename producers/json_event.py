"""One event given as JSON text, checked and handed to the publisher: the one path for files and outboxes.

A line of a JSON-lines file (``producers.ingest``, ``accord publish``) and the payload of
an outbox row (``producers.outbox``, ``accord relay``) are the same thing: an event as a
JSON object, timestamps and dates as ISO 8601 strings. Both go through
:func:`publish_json`, so what one refuses the other refuses, with the same problems.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from producers.publisher import Publisher
from schemas.serde import InvalidRecord, from_json
from schemas.validation import Problem

__all__ = ["MAX_JSON_FACTOR", "publish_json"]

MAX_JSON_FACTOR = 16  # JSON over 16 x ACCORD_MAX_EVENT_BYTES is refused before it is parsed


def publish_json(publisher: Publisher, event_type: str, text: str, agency: str | None, *, what: str) -> list[Problem]:
    """Check one event's JSON and publish it; the problems that refused it, or [] when it was sent.

    ``what`` names the JSON in a problem (``(json)`` for a file's line, ``(payload)`` for
    an outbox row). A Problem never repeats a value. The steps:

    1. the size: JSON far over the event limit cannot encode under it, and parsing it
       would only cost memory;
    2. the JSON: valid, not nested too deeply, and one object;
    3. the event type: one the catalogue holds (else the SDK's own problem for it);
    4. timestamps and dates from their ISO strings (``from_json``); one that does not
       convert is reported with whatever else the raw object shows;
    5. ``Publisher.publish``: the schema, the plausibility rules and the sizes; it sends
       nothing it refuses.
    """
    # 1.
    limit = publisher.limits.max_event_bytes
    if len(text) > MAX_JSON_FACTOR * limit:
        return [Problem(what, f"is {len(text)} characters of JSON, far over the limit of {limit}")]
    # 2.
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        where = f": {exc.msg} at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ": nested too deeply"
        return [Problem(what, f"not valid JSON{where}")]
    except ValueError:  # an integer over Python's 4,300 digits: one bad row stopped the relay for good
        return [Problem(what, "not valid JSON: a number with too many digits")]
    if not isinstance(data, Mapping):
        return [Problem(what, "must be a JSON object (the event)")]
    # 3.
    try:
        schema = publisher.catalogue.schema(event_type)
    except Exception:  # noqa: BLE001 - any name the catalogue does not hold is the event's problem, said by the SDK
        problems, _ = publisher.problems(event_type, data, agency)
        return problems or [Problem("(event type)", "unknown event type")]
    # 4.
    try:
        record = from_json(schema, data)
    except InvalidRecord as exc:
        problems, _ = publisher.problems(event_type, data, agency, check_schema=False)
        return [Problem(exc.field, exc.problem)] + [p for p in problems if p.field != exc.field]
    except RecursionError:
        return [Problem(what, "nested too deeply")]
    # 5.
    try:
        publisher.publish(event_type, record, agency=agency)
    except InvalidRecord as exc:  # RefusedEvent (every problem) is one
        return list(getattr(exc, "problems", None) or [Problem(exc.field, exc.problem)])
    return []
