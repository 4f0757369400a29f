"""The outbox relay's pure parts: table names, the lock key, the source URL, which database errors are waits,
and one row checked and handed to the publisher (``producers.json_event``, which ``accord publish`` shares).

No broker, no database: the publisher is given a stand-in producer that keeps what it
was handed, so the test sees exactly the key, bytes and headers that would be sent.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from bus import headers as header
from bus.settings import Settings
from producers.ingest import ingest_jsonl
from producers.json_event import publish_json
from producers.outbox import (
    LOCK_NAMESPACE,
    MAX_REASON,
    OutboxTables,
    RelayError,
    _database_gone,
    _kind,
    _one_line,
    _signed,
    lock_key,
    source_engine,
)
from producers.publisher import Publisher
from schemas.validation import Problem

CREATED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
GOOD_NHS, BAD_NHS = "9434765919", "9434765918"


class KeptProducer:
    """Keeps every record handed to it; delivers nothing (no broker in a unit test)."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def produce(self, topic: str, key: bytes | None = None, value: bytes | None = None, **kw: Any) -> None:
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": kw.get("headers")})

    def poll(self, _timeout: float = 0) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        return 0


def _publisher() -> tuple[Publisher, KeptProducer]:
    producer = KeptProducer()
    return Publisher(Settings(), producer=producer, clock=lambda: CREATED_AT), producer  # type: ignore[arg-type]


def _referral(nhs: str | None = GOOD_NHS) -> dict[str, Any]:
    return {
        "envelope": {
            "event_id": str(uuid.UUID(int=7)),
            "occurred_at": "2026-03-01T10:15:00Z",
            "recorded_at": "2026-03-01T10:20:00.123+00:00",
            "source_agency": "salford-council",
            "source_system": "liquidlogic-lcs",
        },
        "referral_id": "REF-SAL-26-00001",
        "referrer": {"agency": "salford-council", "role": "social worker"},
        "subject": {
            "subject_kind": "CHILD",
            "local_id": "LCS-000123",
            "nhs_number": nhs,
            "given_names": "Ava",
            "family_name": "Testperson",
            "date_of_birth": "2015-06-01",
            "address": None,
        },
        "concern_categories": ["NEGLECT"],
        "urgency": "ROUTINE",
        "narrative": "Synthetic narrative.",
    }


def _check(event_type: str, payload: Any, agency: str | None = None) -> tuple[list[Problem], KeptProducer]:
    publisher, producer = _publisher()
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return publish_json(publisher, event_type, text, agency, what="(payload)"), producer


def test_a_good_row_is_sent_keyed_by_subject_with_its_provenance() -> None:
    problems, producer = _check("referral", _referral())
    assert problems == []
    [sent] = producer.sent
    assert sent["topic"] == "events.referral.v1"
    assert sent["key"] == f"nhs:{GOOD_NHS}".encode()
    headers = dict(sent["headers"])
    assert headers[header.EVENT_ID] == str(uuid.UUID(int=7)).encode()
    assert headers[header.AGENCY] == b"salford-council"
    assert sent["value"][:2] == b"\xc3\x01"


def test_the_same_row_checked_again_gives_the_same_key_bytes_and_headers() -> None:
    """What a re-publish after a crash relies on: the row alone decides what is sent."""
    _, first = _check("referral", _referral())
    reordered = json.loads(json.dumps(_referral()))
    reordered["subject"] = dict(reversed(list(reordered["subject"].items())))  # jsonb does not keep key order
    _, second = _check("referral", reordered)
    assert first.sent == second.sent


@pytest.mark.parametrize(
    ("event_type", "payload", "field", "words"),
    [
        ("parking_ticket", _referral(), "(event type)", "unknown event type"),
        ("referral", ["an", "array"], "(payload)", "must be a JSON object"),
        ("referral", '{"envelope": ', "(payload)", "not valid JSON"),
        ("referral", "[" * 100_000 + "]" * 100_000, "(payload)", "nested too deeply"),
        # PostgreSQL's jsonb keeps 1e5000::numeric as 5001 digits; json.loads raised a bare ValueError.
        ("referral", '{"x": 1' + "0" * 5000 + "}", "(payload)", "a number with too many digits"),
        ("referral", _referral(BAD_NHS), "subject.nhs_number", "Modulus 11"),
        ("referral", {**_referral(), "urgency": "WHENEVER"}, "urgency", ""),
        ("referral", {k: v for k, v in _referral().items() if k != "narrative"}, "narrative", ""),
    ],
)
def test_a_bad_row_is_refused_naming_the_field_and_nothing_is_sent(
    event_type: str, payload: Any, field: str, words: str
) -> None:
    problems, producer = _check(event_type, payload)
    assert producer.sent == []
    assert problems and problems[0].field == field, problems
    assert words in problems[0].problem


def test_a_file_line_and_an_outbox_row_are_refused_alike(tmp_path: Path) -> None:
    """``accord publish``'s ingester and the relay take the one path: the same problems, only the JSON's name differs."""
    deep = '{"narrative": ' + "[" * 100_000 + "]" * 100_000 + "}"
    lines = [
        json.dumps(_referral(BAD_NHS)),
        '{"envelope": ',
        json.dumps(["an", "array"]),
        json.dumps({**_referral(), "urgency": "WHENEVER"}),
        json.dumps({k: v for k, v in _referral().items() if k != "narrative"}),
        deep,
        json.dumps({"narrative": "x" * (16 * Settings().max_event_bytes + 1)}),
        json.dumps({**_referral(), "envelope": {**_referral()["envelope"], "occurred_at": "last Tuesday"}}),
        json.dumps(_referral()),
    ]
    path = tmp_path / "referrals.jsonl"
    path.write_text("\n".join(lines) + "\n")
    publisher, file_sent = _publisher()
    report = ingest_jsonl(path, "referral", "salford-council", publisher)
    from_file = {r.line: list(r.problems) for r in report.refused}
    assert set(from_file) == set(range(1, len(lines))), "the good last line was refused, or a bad one sent"
    for number, line in enumerate(lines[:-1], start=1):
        from_outbox, row_sent = _check("referral", line, agency="salford-council")
        renamed = [Problem("(json)" if p.field == "(payload)" else p.field, p.problem) for p in from_outbox]
        assert from_file[number] == renamed, (number, from_file[number], from_outbox)
        assert row_sent.sent == []
    assert len(file_sent.sent) == 1 and _check("referral", lines[-1])[1].sent == file_sent.sent


def test_sizes_are_the_publishers() -> None:
    settings = Settings()
    long_string = _referral()
    long_string["narrative"] = "x" * (settings.max_string_bytes + 1)
    problems, producer = _check("referral", long_string)
    assert [p.field for p in problems] == ["narrative"] and producer.sent == []
    big = _referral()
    big["concern_categories"] = ["NEGLECT"] * (settings.max_event_bytes // 8 + 1)
    problems, producer = _check("referral", big)
    assert problems and "over the limit" in problems[-1].problem and producer.sent == []
    huge = "x" * (16 * settings.max_event_bytes + 1)
    problems, _ = _check("referral", json.dumps({"narrative": huge}))
    assert problems[0].field == "(payload)" and "far over the limit" in problems[0].problem


def test_the_rows_own_time_is_the_clock_of_the_plausibility_rules() -> None:
    """An occurred_at two days after the row was written is implausible, however late the relay reads it."""
    late = _referral()
    late["envelope"]["occurred_at"] = "2026-03-03T12:00:00Z"
    problems, _ = _check("referral", late)
    assert [p.field for p in problems] == ["envelope.occurred_at"]
    assert "in the future" in problems[0].problem


def test_an_agency_given_refuses_rows_of_another() -> None:
    problems, producer = _check("referral", _referral(), agency="met-police")
    assert [p.field for p in problems] == ["envelope.source_agency"] and producer.sent == []
    assert problems[0].problem == "'salford-council' is not 'met-police', the publishing agency"
    assert _check("referral", _referral(), agency="salford-council")[0] == []


def test_an_agency_field_holding_something_else_is_not_quoted() -> None:
    """A source system that put a person's name where the agency goes: the refusal must not carry it."""
    record = _referral()
    record["envelope"]["source_agency"] = "Ava Okafor"
    problems, _ = _check("referral", record, agency="salford-council")
    [agency] = [p.problem for p in problems if p.field == "envelope.source_agency"]
    assert "Ava" not in agency and agency.startswith("a value that is not an id"), agency


def test_no_reason_repeats_a_value() -> None:
    record = _referral(BAD_NHS)
    record["envelope"]["occurred_at"] = "last Tuesday at Ava's"
    record["subject"]["date_of_birth"] = "2999-01-01"
    problems, _ = _check("referral", record)
    reason = _one_line(problems)
    for value in (BAD_NHS, "last Tuesday", "Ava", "2999"):
        assert value not in reason, reason


def test_a_reason_is_one_bounded_line() -> None:
    many = [Problem(f"field{i}", "is wrong\nacross lines") for i in range(200)]
    reason = _one_line(many)
    assert "\n" not in reason and len(reason) == MAX_REASON and reason.endswith("...")


@pytest.mark.parametrize(
    ("given", "outbox", "position", "dead"),
    [
        ("accord_outbox", '"accord_outbox"', '"accord_outbox_position"', '"accord_outbox_dead_letters"'),
        ("cases.outbox", '"cases"."outbox"', '"cases"."outbox_position"', '"cases"."outbox_dead_letters"'),
    ],
)
def test_table_names(given: str, outbox: str, position: str, dead: str) -> None:
    t = OutboxTables.of(given)
    assert (t.outbox_sql, t.position_sql, t.dead_letters_sql) == (outbox, position, dead)
    assert t.dead_letters == given + "_dead_letters"


@pytest.mark.parametrize("bad", ["", "a.b.c", 'x"; drop table y; --', "1outbox", "o" * 60, "outbox name"])
def test_a_table_name_that_is_not_a_plain_identifier_is_refused(bad: str) -> None:
    with pytest.raises(RelayError, match="ACCORD_RELAY_TABLE"):
        OutboxTables.of(bad)


def test_the_lock_key_is_accords_namespace_and_the_tables_oid() -> None:
    assert lock_key(16_384) >> 32 == LOCK_NAMESPACE and lock_key(16_384) & 0xFFFFFFFF == 16_384
    assert lock_key(16_384) != lock_key(16_385)
    high = lock_key(0xFFFFFFFF)
    assert -(1 << 63) <= _signed(high) < 1 << 63 and _signed(high) % (1 << 64) == high


def test_a_source_url_is_required_and_must_be_postgresql() -> None:
    with pytest.raises(RelayError, match="ACCORD_RELAY_SOURCE_URL is not set"):
        source_engine(Settings(relay_source_url=""))
    with pytest.raises(RelayError, match="PostgreSQL only"):
        source_engine(Settings(relay_source_url="sqlite:///outbox.db"))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://relay_role:s3cret-pw@cases-db.internal:notaport/cases",  # int() of the port
        "postgresql+psycopg://relay_role:s3cret-pw@cases-db.internal:5432x/cases",
        "not a url s3cret-pw",
    ],
)
def test_a_source_url_that_does_not_parse_names_the_variable_and_never_repeats_it(url: str) -> None:
    with pytest.raises(RelayError) as raised:
        source_engine(Settings(relay_source_url=url))
    line = str(raised.value)
    assert line.startswith("ACCORD_RELAY_SOURCE_URL is not a URL") and "\n" not in line
    assert "s3cret-pw" not in line and "notaport" not in line and "cases-db.internal" not in line


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("postgresql://relay_role:s3cret-pw@cases-db.internal:5432/cases", "psycopg2"),  # SQLAlchemy's default driver
        ("postgresql+psycopg2://relay_role:s3cret-pw@cases-db.internal/cases", "psycopg2"),
        ("postgresql+asyncpg://relay_role:s3cret-pw@cases-db.internal/cases", "asyncpg"),
        ("postgresql+pg8000://relay_role:s3cret-pw@cases-db.internal/cases", "pg8000"),
    ],
)
def test_a_postgresql_driver_other_than_psycopg_is_refused_with_the_fix(url: str, named: str) -> None:
    with pytest.raises(RelayError) as raised:
        source_engine(Settings(relay_source_url=url))
    line = str(raised.value)
    assert f"psycopg 3 only, not {named}" in line and "postgresql+psycopg://" in line
    assert "s3cret-pw" not in line and "cases-db.internal" not in line


def _db_error(orig: Exception, *, invalidated: bool = False) -> DBAPIError:
    wrapped = DBAPIError.instance("UPDATE t", {}, orig, psycopg.Error, connection_invalidated=invalidated)
    assert isinstance(wrapped, DBAPIError)  # as SQLAlchemy wraps a driver's error
    return wrapped


@pytest.mark.parametrize(
    ("orig", "gone"),
    [
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),  # no SQLSTATE: cut
        (psycopg.errors.ConnectionTimeout("connection timeout expired"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),  # 57P01
        (psycopg.errors.CrashShutdown("crash"), True),  # 57P02
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),  # 57P03
        (psycopg.errors.TooManyConnections("too many"), True),  # 53300
        (psycopg.errors.lookup("08006")("connection failure"), True),
        (psycopg.errors.RaiseException("a trigger said no"), False),  # P0001
        (psycopg.errors.CheckViolation("check"), False),  # 23514
        (psycopg.errors.InvalidColumnReference("no unique constraint for ON CONFLICT"), False),  # 42P10
        (psycopg.errors.InsufficientPrivilege("permission denied"), False),  # 42501
        (psycopg.errors.DiskFull("could not extend file"), False),  # 53100: tried a few times, then stops
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),  # 57014: likewise
        (psycopg.errors.UndefinedTable("gone"), False),
    ],
)
def test_only_a_lost_connection_is_the_database_gone(orig: Exception, gone: bool) -> None:
    assert _database_gone(_db_error(orig)) is gone


def test_an_invalidated_connection_without_a_sqlstate_is_gone_and_a_refusal_names_only_kind_and_sqlstate() -> None:
    assert _database_gone(_db_error(psycopg.DatabaseError("?"), invalidated=True))
    refusal = _db_error(psycopg.errors.RaiseException(f"nhs number {GOOD_NHS} is not allowed"))
    assert _kind(refusal) == "RaiseException, SQLSTATE P0001"
