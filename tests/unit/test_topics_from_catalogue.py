"""bus.topics takes its event types and their partitions from the event catalogue."""

from __future__ import annotations

from bus.topics import EVENT_PARTITIONS, EVENT_TYPES, TopicNames
from schemas import catalogue


def test_event_types_are_the_catalogues() -> None:
    assert set(EVENT_TYPES) == {"custody", "referral", "natal_care"} == set(catalogue.default().names())


def test_each_event_topic_has_its_types_partitions() -> None:
    names = TopicNames("t.")
    specs = {s.name: s for s in names.catalogue({"referral": {"salford-mash"}})}
    for t in catalogue.default():
        assert specs[names.event(t.name)].partitions == t.partitions == 4
    assert specs[names.consent_preferences].partitions == EVENT_PARTITIONS == 4
    assert names.event_type_of("t.events.natal_care.v1") == "natal_care"
