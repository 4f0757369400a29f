"""Topics on the real embedded broker: created with the settings' partitions, replication and min.insync.replicas.

The embedded broker (Tansu) is a single process, yet it accepts a replication factor
of 3 and reports three replicas per partition (Apache Kafka would refuse
INVALID_REPLICATION_FACTOR with fewer brokers than that). So these tests check what
Accord asks for, read back from the broker's own metadata and topic configs, without a
three-broker cluster; that the replicas are real is Apache Kafka's part.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from confluent_kafka.admin import ConfigResource

from agreements import load_dir, recipients_by_type
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicLayout, TopicNames, TopicSpec, create_topics, differences
from tests.bus import make_settings, settings_env


def accord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _catalogue(settings: Settings, layout: TopicLayout) -> list[TopicSpec]:
    partners = recipients_by_type(load_dir(settings.agreements_dir))
    return TopicNames(settings.topic_prefix).catalogue(partners, layout)


def _min_insync(settings: Settings, topic: str) -> str:
    admin = kafka.admin(settings)  # held until the answer is in: a collected client cancels its requests
    (future,) = admin.describe_configs([ConfigResource("topic", topic)], request_timeout=10).values()
    return str(future.result()["min.insync.replicas"].value)


def test_the_broker_holds_what_the_layout_asks_for(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    layout = TopicLayout(3, 2, {"custody": 6})
    specs = _catalogue(settings, layout)
    admin = kafka.admin(settings)
    assert set(create_topics(admin, specs).values()) == {"created"}
    meta = admin.list_topics(timeout=10).topics
    names = TopicNames(settings.topic_prefix)
    for s in specs:
        partitions = meta[s.name].partitions
        assert len(partitions) == s.partitions, s.name
        assert {len(p.replicas) for p in partitions.values()} == {3}, s.name
    assert len(meta[names.event("custody")].partitions) == 6
    assert len(meta[names.consent_preferences].partitions) == 6
    assert len(meta[names.event("referral")].partitions) == 4
    for topic in (names.event("custody"), names.agreements, names.partner("cps", "custody")):
        assert _min_insync(settings, topic) == "2", topic
    assert differences(admin, specs) == []


def test_an_existing_topic_that_differs_is_named_never_changed(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    admin = kafka.admin(settings)
    create_topics(admin, _catalogue(settings, TopicLayout()))
    wanted = _catalogue(settings, TopicLayout(3, 2, {"custody": 8}))
    assert set(create_topics(admin, wanted).values()) == {"exists"}
    custody = TopicNames(settings.topic_prefix).event("custody")
    lines = differences(admin, wanted)
    assert f"{custody}: has 4 partitions, the settings give 8" in lines
    assert f"{custody}: has 1 replicas, the settings give 3" in lines
    assert len(admin.list_topics(timeout=10).topics[custody].partitions) == 4  # untouched


def test_topics_create_takes_the_layout_from_the_environment(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    env = {
        **settings_env(settings),
        "ACCORD_TOPIC_REPLICATION_FACTOR": "3",
        "ACCORD_TOPIC_MIN_INSYNC_REPLICAS": "2",
        "ACCORD_TOPIC_PARTITIONS": '{"natal_care": 5}',
    }
    first = accord("topics", "create", env=env)
    assert first.returncode == 0, first.stderr
    names = TopicNames(settings.topic_prefix)
    meta = kafka.admin(settings).list_topics(timeout=10).topics
    assert len(meta[names.event("natal_care")].partitions) == 5
    assert {len(p.replicas) for p in meta[names.event("natal_care")].partitions.values()} == {3}
    assert _min_insync(settings, names.receipts) == "2"

    # The same topics asked for with other partitions: exit 1, each difference named, nothing changed.
    again = accord("topics", "create", env={**env, "ACCORD_TOPIC_PARTITIONS": '{"natal_care": 7}'})
    assert again.returncode == 1
    assert f"{names.event('natal_care')}: has 5 partitions, the settings give 7" in again.stderr
    assert "Traceback" not in again.stderr
    assert len(kafka.admin(settings).list_topics(timeout=10).topics[names.event("natal_care")].partitions) == 5


def test_min_insync_above_replication_is_refused_before_the_broker_is_asked(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    env = {**settings_env(settings), "ACCORD_TOPIC_REPLICATION_FACTOR": "2", "ACCORD_TOPIC_MIN_INSYNC_REPLICAS": "3"}
    result = accord("topics", "create", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("accord topics create: ACCORD_TOPIC_MIN_INSYNC_REPLICAS (3)")
    assert "ACCORD_TOPIC_REPLICATION_FACTOR (2)" in lines[0]
    topics = kafka.admin(settings).list_topics(timeout=10).topics
    assert not [t for t in topics if t.startswith(settings.topic_prefix)]  # nothing created


def test_a_partitions_setting_that_is_not_json_is_one_line(broker: str, tmp_path: Path) -> None:
    settings = make_settings(broker, "", tmp_path)
    result = accord("topics", "create", env={**settings_env(settings), "ACCORD_TOPIC_PARTITIONS": "custody=12"})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    # One line naming the setting (pydantic-settings names the field, topic_partitions), never a traceback.
    assert len(lines) == 1 and "topic_partitions" in lines[0].lower() and "Traceback" not in result.stderr
