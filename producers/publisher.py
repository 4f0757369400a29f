"""The publishing SDK a source system uses to put events on the bus.

It checks every event before anything leaves the process: the schema, then the
plausibility rules the processor applies again (``schemas.validation``: NHS
numbers pass Modulus 11, event ids are UUIDs, dates of birth and timestamps are
plausible, strings and the encoded event are within the size limits). A refused
event raises RefusedEvent listing every problem, so the source system fixes them
all at once. Accepted events are keyed by subject key (so consent and events
co-partition), carry provenance headers, and every delivery failure is reported
rather than dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from confluent_kafka import KafkaError, Message, Producer

from accord.sharing.decide import subject_key
from agreements.model import SLUG
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import EVENT_TYPES, TopicNames
from schemas.serde import Catalogue, InvalidRecord, validate
from schemas.validation import Limits, Problem, event_problems, size_problem

__all__ = ["Publisher", "PublishReport", "RefusedEvent", "limits_of"]


class RefusedEvent(InvalidRecord):
    """The event was not sent; ``problems`` lists every reason, the message all of them.

    A subclass of InvalidRecord (and so of ValueError) so code that caught the
    schema refusal before the plausibility rules existed still catches this;
    ``field`` and ``problem`` are the first problem's.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("RefusedEvent needs at least one problem")
        self.problems = tuple(problems)
        self.field, self.problem = self.problems[0].field, self.problems[0].problem
        ValueError.__init__(self, "; ".join(str(p) for p in self.problems))


def limits_of(settings: Settings) -> Limits:
    return Limits(max_event_bytes=settings.max_event_bytes, max_string_bytes=settings.max_string_bytes)


NOT_CONFIRMED = "not confirmed by the broker"


@dataclass
class PublishReport:
    delivered: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (event id, error), one per event
    unconfirmed: int = 0  # of the failed: the broker had not answered when the flush gave up
    # Highest delivered offset + 1 per (topic, partition): what a processor must reach.
    end_offsets: dict[tuple[str, int], int] = field(default_factory=dict)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class Publisher:
    def __init__(
        self,
        settings: Settings,
        catalogue: Catalogue | None = None,
        producer: Producer | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ):
        self.names = TopicNames(settings.topic_prefix)
        self.catalogue = catalogue or Catalogue.default()
        self.producer = producer or kafka.producer(settings)
        self.limits = limits_of(settings)
        self.clock = clock
        self.report = PublishReport()
        # Event ids sent and not yet answered by a delivery report: what a flush that runs
        # out of time lists as failed, one by one (a raw send without an envelope is "?").
        self._unanswered: Counter[str] = Counter()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        headers = dict(msg.headers() or [])
        event_id = cast("bytes", headers.get(header.EVENT_ID) or b"?").decode()
        self._unanswered[event_id] -= 1
        if self._unanswered[event_id] <= 0:
            del self._unanswered[event_id]
        if err is not None:
            self.report.failed.append((event_id, err.str()))
            return
        self.report.delivered += 1
        tp = (cast("str", msg.topic()), cast("int", msg.partition()))
        self.report.end_offsets[tp] = max(self.report.end_offsets.get(tp, 0), cast("int", msg.offset()) + 1)

    def problems(
        self, event_type: str, record: Any, agency: str | None = None, *, check_schema: bool = True
    ) -> tuple[list[Problem], bytes | None]:
        """Every reason to refuse the event, and its encoding when the schema accepts it. Sends nothing.

        ``check_schema=False`` gives only the agency and plausibility problems (for a
        record whose JSON could not even be converted, so the schema has spoken already).
        """
        if event_type not in EVENT_TYPES:
            return [Problem("(event type)", f"unknown event type {str(event_type)[:40]!r}")], None
        if not isinstance(record, Mapping):
            return [Problem("(record)", f"expected a JSON object / dict, got {type(record).__name__}")], None
        problems: list[Problem] = []
        envelope = record.get("envelope")
        envelope = envelope if isinstance(envelope, Mapping) else {}
        if agency is not None and envelope.get("source_agency") != agency:
            problems.append(
                Problem(
                    "envelope.source_agency",
                    f"{_an_id(envelope.get('source_agency'))} is not {agency!r}, the publishing agency",
                )
            )
        schema_ok = check_schema
        try:
            if check_schema:
                validate(self.catalogue.schema(event_type), record)
        except InvalidRecord as exc:
            schema_ok = False
            problems.append(Problem(exc.field, exc.problem))
        except Exception as exc:  # noqa: BLE001 - a value too odd for the checker is still the caller's error
            schema_ok = False
            problems.append(Problem("(record)", f"cannot be checked against {event_type}: {type(exc).__name__}"))
        # The plausibility rules judge only values of the right type, so they add what the
        # schema check (which stops at its first complaint) did not already say.
        said = {p.field for p in problems}
        problems += [p for p in event_problems(event_type, record, self.clock(), self.limits) if p.field not in said]
        if not schema_ok:
            return problems, None
        try:
            value = self.catalogue.encode(event_type, dict(record), validated=True)
        except InvalidRecord as exc:  # e.g. a lone surrogate in a string: valid JSON, not UTF-8
            return [*problems, Problem(exc.field, exc.problem)], None
        too_big = size_problem(value, self.limits)
        if too_big is not None:
            problems.append(too_big)
        return problems, value

    def publish(self, event_type: str, record: dict[str, Any], agency: str | None = None) -> None:
        """Check and send one event; raises RefusedEvent listing every problem, sending nothing.

        ``agency``, when given, must be the envelope's source_agency (a file
        ingested for one agency cannot speak for another).
        """
        problems, value = self.problems(event_type, record, agency)
        if problems or value is None:
            raise RefusedEvent(problems or [Problem("(record)", "cannot be encoded")])
        try:
            key = subject_key(event_type, record).encode()
        except (KeyError, TypeError, AttributeError):
            raise RefusedEvent([Problem("(record)", "has no subject identifier to key it by")]) from None
        self._send(event_type, value, key, record["envelope"])

    def publish_raw(self, event_type: str, value: bytes, key: bytes | None = None) -> None:
        """Send already-encoded bytes as they are, for relays forwarding events a checked publisher made.

        Only the size bound applies here (RefusedEvent over ``max_event_bytes``):
        the bytes are not decoded, so a schema-valid but implausible event (a bad
        check digit, a date of birth in 2999) goes through, and so does garbage.
        The processor checks everything again and dead-letters what fails; tests
        use this to prove it does.
        """
        if event_type not in EVENT_TYPES:
            raise RefusedEvent([Problem("(event type)", f"unknown event type {str(event_type)[:40]!r}")])
        too_big = size_problem(value, self.limits)
        if too_big is not None:
            raise RefusedEvent([too_big])
        self._send(event_type, value, key, {})

    def _send(self, event_type: str, value: bytes, key: bytes | None, envelope: Mapping[str, Any]) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            (header.AGENCY, str(envelope.get("source_agency", "")).encode()),
            (header.SOURCE_SYSTEM, str(envelope.get("source_system", "")).encode()),
            (header.EVENT_ID, str(envelope.get("event_id", "")).encode()),
            (header.OCCURRED_AT, str(envelope.get("occurred_at", "")).encode()),
        ]
        while True:
            try:
                self.producer.produce(
                    self.names.event(event_type), key=key, value=value, headers=headers, on_delivery=self._on_delivery
                )
                self._unanswered[str(envelope.get("event_id") or "?")] += 1
                break
            except BufferError:
                self.producer.poll(0.1)  # local queue full: wait for deliveries, lose nothing
        self.producer.poll(0)

    def flush(self, timeout: float = 30.0) -> PublishReport:
        """Wait up to ``timeout`` s for the broker; every event it has not confirmed by then is in ``failed``."""
        if self.producer.flush(timeout):
            for event_id, n in sorted(self._unanswered.items()):
                self.report.failed += [(event_id, f"{NOT_CONFIRMED} within {timeout:g} s")] * n
            self.report.unconfirmed += sum(self._unanswered.values())
            self._unanswered.clear()
        return self.report


def _an_id(value: object) -> str:
    """An agency id a record gave, as a refusal may show it: quoted only when it has an id's form.

    Refusals go to files, logs and dead-letter headers; a field meant for an id can hold
    anything a source system put there, such as a name.
    """
    if isinstance(value, str) and len(value) <= 64 and re.fullmatch(SLUG, value):
        return repr(value)
    return "a value that is not an id (lower-case letters, digits and hyphens)" if value is not None else "nothing"
