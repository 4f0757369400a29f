"""The topic layout: partitions, replication and min.insync.replicas from the settings, refused when they cannot work."""

from __future__ import annotations

import pytest

from bus.settings import Settings
from bus.topics import EVENT_TOPIC_PARTITIONS, EVENT_TYPES, TopicLayout, TopicLayoutError, TopicNames, TopicSpec

PARTNERS = {"custody": {"cps"}, "referral": {"salford-mash"}}


def _by_name(layout: TopicLayout | None) -> dict[str, TopicSpec]:
    return {s.name: s for s in TopicNames("t.").catalogue(PARTNERS, layout)}


def test_default_layout_is_one_brokers() -> None:
    specs = TopicNames("t.").catalogue(PARTNERS)
    assert {s.replication_factor for s in specs} == {1}
    assert {s.config["min.insync.replicas"] for s in specs} == {"1"}
    assert specs == TopicNames("t.").catalogue(PARTNERS, TopicLayout.of(Settings()))


def test_every_topic_gets_the_replication_and_min_insync_of_the_settings() -> None:
    layout = TopicLayout.of(Settings(topic_replication_factor=3, topic_min_insync_replicas=2))
    specs = TopicNames("t.").catalogue(PARTNERS, layout)
    assert len(specs) == len(EVENT_TYPES) + 5 + 2  # events, five bus topics, two partner topics
    for s in specs:
        assert (s.replication_factor, s.config["min.insync.replicas"]) == (3, "2"), s.name


def test_configs_of_their_own_are_kept() -> None:
    names = TopicNames("t.")
    specs = _by_name(TopicLayout(3, 2))
    assert specs[names.agreements].config == {"cleanup.policy": "compact", "min.insync.replicas": "2"}
    assert specs[names.ledger_checkpoints].config == {"retention.ms": "-1", "min.insync.replicas": "2"}


def test_event_partitions_from_settings_and_the_keyed_topics_follow_the_largest() -> None:
    names = TopicNames("t.")
    layout = TopicLayout.of(Settings(topic_partitions={"custody": 12}))
    specs = _by_name(layout)
    partitions = {name: s.partitions for name, s in specs.items()}
    assert partitions[names.event("custody")] == 12
    for t in EVENT_TYPES:
        if t != "custody":
            assert partitions[names.event(t)] == EVENT_TOPIC_PARTITIONS[t]  # not named: the catalogue's
    # Keyed by subject key (consent) and disclosure id (receipts): as many as the largest event topic.
    assert partitions[names.consent_preferences] == partitions[names.receipts] == 12
    # Read in order: one partition whatever the settings say.
    for one in (names.agreements, names.ledger_checkpoints, names.dead_letter, names.partner("cps", "custody")):
        assert partitions[one] == 1, one


def test_same_count_everywhere_keeps_consent_co_partitioned_with_every_event_topic() -> None:
    names = TopicNames("t.")
    specs = _by_name(TopicLayout(partitions={t: 8 for t in EVENT_TYPES}))
    counts = {specs[names.event(t)].partitions for t in EVENT_TYPES}
    assert counts == {8} == {specs[names.consent_preferences].partitions}


@pytest.mark.parametrize(
    ("rf", "isr", "names"),
    [
        (1, 2, ("ACCORD_TOPIC_MIN_INSYNC_REPLICAS (2)", "ACCORD_TOPIC_REPLICATION_FACTOR (1)")),
        (2, 3, ("ACCORD_TOPIC_MIN_INSYNC_REPLICAS (3)", "ACCORD_TOPIC_REPLICATION_FACTOR (2)")),
    ],
)
def test_min_insync_above_replication_is_one_line_naming_both(rf: int, isr: int, names: tuple[str, ...]) -> None:
    with pytest.raises(TopicLayoutError) as caught:
        TopicLayout.of(Settings(topic_replication_factor=rf, topic_min_insync_replicas=isr))
    text = str(caught.value)
    assert "\n" not in text
    for name in names:
        assert name in text


def test_equal_min_insync_and_replication_is_allowed() -> None:
    assert TopicLayout.of(Settings(topic_replication_factor=3, topic_min_insync_replicas=3)).min_insync_replicas == 3


def test_an_unknown_event_type_in_the_partitions_is_refused_by_name() -> None:
    with pytest.raises(TopicLayoutError, match="ACCORD_TOPIC_PARTITIONS names custdy, not an event type"):
        TopicLayout.of(Settings(topic_partitions={"custdy": 12}))


@pytest.mark.parametrize("count", [0, -3])
def test_fewer_than_one_partition_is_refused(count: int) -> None:
    with pytest.raises(TopicLayoutError, match="ACCORD_TOPIC_PARTITIONS gives custody fewer than 1 partition"):
        TopicLayout.of(Settings(topic_partitions={"custody": count}))


def test_partitions_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCORD_TOPIC_PARTITIONS", '{"referral": 6}')
    monkeypatch.setenv("ACCORD_TOPIC_REPLICATION_FACTOR", "3")
    monkeypatch.setenv("ACCORD_TOPIC_MIN_INSYNC_REPLICAS", "2")
    layout = TopicLayout.of(Settings())
    assert (layout.event_partitions("referral"), layout.replication_factor, layout.min_insync_replicas) == (6, 3, 2)
