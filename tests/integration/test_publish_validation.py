"""The publisher refuses implausible events before they reach the bus: `accord publish` and the SDK, on the real broker."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from agreements import load_dir, recipients_by_type
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames, create_topics
from producers import Publisher, RefusedEvent
from producers.synthetic import build_scenario
from schemas.serde import Catalogue, from_json, load_schema
from tests.bus import make_settings, read_topic

ACCORD = Path(sys.executable).parent / "accord"
AGENCY = "salford-council"
GOOD_NHS = "9434765919"
BAD_NHS = "9434765918"  # one off the check digit


def referrals(n: int) -> list[dict[str, Any]]:
    events = [e.record for e in build_scenario(n_events=200, seed=5).events if e.agency == AGENCY]
    assert len(events) >= n
    return [copy.deepcopy(r) for r in events[:n]]


def as_json(record: dict[str, Any]) -> dict[str, Any]:
    from schemas.serde import to_json

    return to_json(record)


@pytest.fixture
def settings(broker: str, tmp_path: Path) -> Settings:
    settings = make_settings(broker, "", tmp_path)
    agreements = load_dir(settings.agreements_dir)
    create_topics(kafka.admin(settings), TopicNames(settings.topic_prefix).catalogue(recipients_by_type(agreements)))
    return settings


def on_topic(settings: Settings, event_type: str) -> list[tuple[str, bytes]]:
    """(event id header, value) of everything on the event topic, read with a fresh group until idle."""
    topic = TopicNames(settings.topic_prefix).event(event_type)
    found: list[tuple[str, bytes]] = []
    for headers, value in read_topic(settings, topic):
        assert value is not None  # an event is never a tombstone
        found.append((headers["accord.event_id"].decode(), value))
    return found


def run_publish(settings: Settings, path: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
        "ACCORD_STATE_DIR": str(settings.state_dir),
    }
    return subprocess.run(
        [str(ACCORD), "publish", "--agency", AGENCY, "--type", "referral", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_accord_publish_refuses_each_implausible_line_with_every_problem_and_publishes_the_rest(
    settings: Settings, tmp_path: Path
) -> None:
    records = referrals(9)
    lines = [as_json(r) for r in records]
    lines[1]["subject"]["nhs_number"] = BAD_NHS
    lines[2]["envelope"]["event_id"] = "not-a-uuid"
    lines[4]["subject"]["date_of_birth"] = "2999-01-01"
    lines[5]["envelope"]["occurred_at"] = "1850-01-01T00:00:00.000Z"
    lines[6]["narrative"] = "n" * 2_097_152
    lines[7]["subject"]["nhs_number"] = BAD_NHS
    lines[7]["subject"]["date_of_birth"] = "2999-01-01"
    path = tmp_path / "referrals.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    encoded_big = len(Catalogue.default().encode("referral", from_json(load_schema("referral"), lines[6])))

    result = run_publish(settings, path)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stdout.strip() == "9 lines read, 3 published, 6 refused, 0 failed delivery"
    assert result.stderr.splitlines() == [
        f"{path}:2: subject.nhs_number: fails the Modulus 11 check (mistyped?)",
        f"{path}:3: envelope.event_id: is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits)",
        f"{path}:5: subject.date_of_birth: is in the future",
        f"{path}:6: envelope.occurred_at: is before 1900-01-01 (implausibly early)",
        f"{path}:7: narrative: is 2097152 bytes (UTF-8), over the limit of 65536 bytes; "
        f"(record): encoded event is {encoded_big} bytes, over the limit of 524288 bytes",
        f"{path}:8: subject.nhs_number: fails the Modulus 11 check (mistyped?); subject.date_of_birth: is in the future",
    ]
    assert BAD_NHS not in result.stderr  # a refusal never repeats the number
    published = on_topic(settings, "referral")
    good = [records[i]["envelope"]["event_id"] for i in (0, 3, 8)]
    assert sorted(event_id for event_id, _ in published) == sorted(good)
    catalogue = Catalogue.default()
    assert sorted(catalogue.decode(value)[1]["envelope"]["event_id"] for _, value in published) == sorted(good)


def test_limits_come_from_the_settings(settings: Settings, tmp_path: Path) -> None:
    record = as_json(referrals(1)[0])
    record["narrative"] = "n" * 100
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps(record) + "\n")
    env_settings = settings.model_copy(update={"max_string_bytes": 64})
    result = subprocess.run(
        [str(ACCORD), "publish", "--agency", AGENCY, "--type", "referral", str(path)],
        env={
            **os.environ,
            "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
            "ACCORD_STATE_DIR": str(settings.state_dir),
            "ACCORD_MAX_STRING_BYTES": str(env_settings.max_string_bytes),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"{path}:1: narrative: is 100 bytes (UTF-8), over the limit of 64 bytes"]
    assert on_topic(settings, "referral") == []


def test_a_line_that_is_not_utf8_is_refused_and_the_next_published(settings: Settings, tmp_path: Path) -> None:
    good = referrals(1)[0]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b'{"narrative": "caf\xe9"}\n' + (to_json_line_of(good) + "\n").encode())
    result = run_publish(settings, path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"{path}:1: (line): not valid UTF-8 at byte 19"]
    assert [event_id for event_id, _ in on_topic(settings, "referral")] == [good["envelope"]["event_id"]]


def to_json_line_of(record: dict[str, Any]) -> str:
    return json.dumps(as_json(record))


# --------------------------------------------------------------------------- the SDK


def test_sdk_publish_raises_one_exception_listing_every_problem_and_sends_nothing(settings: Settings) -> None:
    publisher = Publisher(settings)
    record = referrals(1)[0]
    record["subject"]["nhs_number"] = ""
    record["envelope"]["event_id"] = record["envelope"]["event_id"].upper()
    record["envelope"]["recorded_at"] = datetime(2999, 1, 1, tzinfo=UTC)
    record["subject"]["date_of_birth"] = date(1850, 1, 1)
    with pytest.raises(RefusedEvent) as info:
        publisher.publish("referral", record, agency=AGENCY)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == (
        "envelope.event_id: is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits); "
        "envelope.recorded_at: is more than a day in the future; "
        "subject.nhs_number: is empty (expected 10 digits); "
        "subject.date_of_birth: implies an age over 125 years"
    )
    assert [p.field for p in info.value.problems] == [
        "envelope.event_id",
        "envelope.recorded_at",
        "subject.nhs_number",
        "subject.date_of_birth",
    ]
    # The schema's complaint comes first, then whatever the rules can still judge.
    with pytest.raises(RefusedEvent) as info:
        publisher.publish("referral", {**record, "subject": {**referrals(1)[0]["subject"], "given_names": 7}})
    assert str(info.value) == (
        "subject.given_names: expected string, got a value of type int; "
        "envelope.event_id: is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits); "
        "envelope.recorded_at: is more than a day in the future"
    )
    with pytest.raises(RefusedEvent, match="unknown event type"):
        publisher.publish("parking_fine", record)
    report = publisher.flush()
    assert report.delivered == 0 and not report.failed
    assert on_topic(settings, "referral") == []


def test_publish_raw_applies_only_the_size_bound(settings: Settings) -> None:
    """The processor's own checks are tested by publishing implausible events raw."""
    catalogue = Catalogue.default()
    implausible = referrals(1)[0]
    implausible["subject"]["nhs_number"] = BAD_NHS
    implausible["subject"]["date_of_birth"] = date(2999, 1, 1)
    value = catalogue.encode("referral", implausible)
    publisher = Publisher(settings.model_copy(update={"max_event_bytes": 2048}))
    publisher.publish_raw("referral", value, key=b"raw")
    publisher.publish_raw("referral", b"not avro at all", key=b"raw")
    with pytest.raises(RefusedEvent, match=r"^\(record\): encoded event is 2049 bytes, over the limit of 2048 bytes$"):
        publisher.publish_raw("referral", b"x" * 2049)
    report = publisher.flush()
    assert report.delivered == 2 and not report.failed
    values = [v for _, v in on_topic(settings, "referral")]
    assert values == [value, b"not avro at all"] or sorted(values) == sorted([value, b"not avro at all"])


def test_accord_publish_with_no_broker_lists_each_event_not_delivered_and_names_the_servers(tmp_path: Path) -> None:
    from tests.ports import free_port

    servers = f"127.0.0.1:{free_port()}"  # nothing listens there
    records = referrals(3)
    path = tmp_path / "referrals.jsonl"
    path.write_text("".join(json.dumps(as_json(r)) + "\n" for r in records), encoding="utf-8")
    done = run_publish(Settings(bootstrap_servers=servers, state_dir=tmp_path), path)
    assert done.returncode == 1
    assert done.stdout.strip().splitlines()[-1] == "3 lines read, 0 published, 0 refused, 3 failed delivery"
    lines = done.stderr.strip().splitlines()
    ids = sorted(r["envelope"]["event_id"] for r in records)
    assert lines[:3] == [f"delivery failed: event {i}: not confirmed by the broker within 30 s" for i in ids]
    assert lines[3:] == [
        f"accord publish: no Kafka broker at {servers} confirmed 3 event(s): check that the broker is running and "
        "ACCORD_BOOTSTRAP_SERVERS points at it; publishing the file again is safe (a re-sent event keeps its id, "
        "and the processor records it once)"
    ]  # and none of librdkafka's own reconnect lines
