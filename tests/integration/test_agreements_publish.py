"""`accord agreements publish` against what is already on the feed, on the real broker.

Judged from the feed itself: the first valid publication of a version is the one every
processor holds, and the last is the one a compacted topic keeps; both must be the same.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from accord.processor import agreement_feed
from accord.processor.agreement_feed import PublishConflict, Published, publish_agreements, published_versions
from agreements import Agreement, load_dir
from bus import kafka
from bus.settings import PACKAGE_ROOT, Settings
from bus.topics import TopicNames

EXAMPLES = load_dir(PACKAGE_ROOT / "agreements" / "examples")


def _settings(broker: str) -> Settings:
    return Settings(bootstrap_servers=broker, topic_prefix=f"t{uuid.uuid4().hex[:8]}.")


def _feed(settings: Settings) -> list[tuple[str, bytes]]:
    """(key, value) of every record on the feed, in offset order."""
    consumer = kafka.consumer(settings, f"feed-{uuid.uuid4().hex[:6]}")
    consumer.assign([TopicPartition(TopicNames(settings.topic_prefix).agreements, 0, OFFSET_BEGINNING)])
    out = []
    try:
        while (msg := consumer.poll(3)) is not None:
            if msg.error() is None:
                out.append(((msg.key() or b"").decode(), msg.value() or b""))
    finally:
        consumer.close()
    return out


def _variant(fields_dropped: str) -> Agreement:
    base = next(a for a in EXAMPLES if a.id == "custody-to-prosecution")
    fields = {t: tuple(f for f in fs if f != fields_dropped) for t, fs in base.fields.items()}
    return base.model_copy(update={"version": 4, "fields": fields})


def test_two_publishers_of_one_new_version_at_once_one_wins_and_the_feed_keeps_its_content(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both read the feed before either published (a barrier holds them there): before, both
    succeeded, processors held the first and a compacted feed would keep the second."""
    settings = _settings(broker)
    publish_agreements(settings, EXAMPLES)
    a, b = _variant("subject.family_name"), _variant("subject.given_names")
    assert a != b and a.key == b.key
    barrier = threading.Barrier(2, timeout=30)
    reads: dict[int, int] = {}
    real = agreement_feed.published_versions

    def read_then_wait(s: Settings, timeout_s: float) -> agreement_feed.FeedState:
        found = real(s, timeout_s)
        me = threading.get_ident()
        reads[me] = reads.get(me, 0) + 1
        if reads[me] == 1:
            barrier.wait()  # each has read the feed without the other's publication
        return found

    monkeypatch.setattr(agreement_feed, "published_versions", read_then_wait)
    outcomes: dict[str, Any] = {}

    def publish(name: str, agreement: Agreement) -> None:
        try:
            outcomes[name] = publish_agreements(settings, [agreement])
        except PublishConflict as exc:
            outcomes[name] = exc

    threads = [threading.Thread(target=publish, args=(n, x)) for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [n for n, o in outcomes.items() if isinstance(o, Published) and o.new == 1]
    losers = [o for o in outcomes.values() if isinstance(o, PublishConflict)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    assert "another publisher" in str(losers[0])
    winner = {"a": a, "b": b}[winners[0]]

    records = [Agreement.model_validate_json(v) for k, v in _feed(settings) if k == a.key]
    assert records[0] == winner and records[-1] == winner  # what processors hold, what compaction keeps
    monkeypatch.undo()
    assert published_versions(settings, 10).held[a.key] == winner


def test_a_version_published_only_invalidly_is_not_on_the_feed(broker: str) -> None:
    """A record under a version's key that no processor accepts made the version unpublishable
    ("published with other content")."""
    settings = _settings(broker)
    publish_agreements(settings, [a for a in EXAMPLES if a.id != "referral-to-mash"])
    producer = kafka.producer(settings)
    key = next(a.key for a in EXAMPLES if a.id == "referral-to-mash")
    producer.produce(TopicNames(settings.topic_prefix).agreements, key=key.encode(), value=b"{not json")
    producer.flush(10)
    assert publish_agreements(settings, EXAMPLES).new == 1
    assert published_versions(settings, 10).held[key] == next(a for a in EXAMPLES if a.key == key)
    assert publish_agreements(settings, EXAMPLES) == Published(0, 0, len(EXAMPLES))


def _produce(settings: Settings, key: str, value: bytes) -> None:
    producer = kafka.producer(settings)
    producer.produce(TopicNames(settings.topic_prefix).agreements, key=key.encode(), value=value)
    producer.flush(10)


def test_a_publication_processors_refuse_or_filed_under_another_key_is_not_held(broker: str) -> None:
    """Judged as processors judge: one naming a recipient missing from the registry, or a valid
    version under another version's key, is not the version held (publish said 'published with
    other content' for the first, and took the second as published)."""
    settings = _settings(broker)
    target = next(a for a in EXAMPLES if a.id == "custody-to-youth-offending")
    publish_agreements(settings, [a for a in EXAMPLES if a != target])
    unregistered = target.model_copy(update={"recipients": (*target.recipients, "nobody-partner")})
    _produce(settings, target.key, unregistered.model_dump_json().encode())
    _produce(settings, "something-else@v1", target.model_dump_json().encode())
    assert target.key not in published_versions(settings, 10).held
    assert publish_agreements(settings, EXAMPLES).new == 1
    feed = published_versions(settings, 10)
    assert feed.held[target.key] == target and feed.last[target.key] == target


def test_a_feed_left_ending_in_another_publishers_content_is_put_right(broker: str) -> None:
    """A publisher that lost a race and stopped before putting the winner back left its own content
    last under the key, which a compacted topic keeps: the next publish of the winner's folder writes
    the winner again (it said '0 published' and left it)."""
    settings = _settings(broker)
    publish_agreements(settings, EXAMPLES)
    held = next(a for a in EXAMPLES if a.id == "referral-to-mash")
    other = held.model_copy(update={"title": held.title + " (another publisher's)"})
    _produce(settings, held.key, other.model_dump_json().encode())
    assert published_versions(settings, 10).last[held.key] == other
    assert publish_agreements(settings, EXAMPLES) == Published(0, 1, len(EXAMPLES))
    feed = published_versions(settings, 10)
    assert feed.held[held.key] == held and feed.last[held.key] == held
    assert publish_agreements(settings, EXAMPLES) == Published(0, 0, len(EXAMPLES))


def test_a_publication_it_cannot_check_afterwards_is_not_called_unpublished(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker stalls after the versions were sent: publish said 'nothing was published' though
    the version was on the feed and deciding. It now says it published and could not check."""
    settings = _settings(broker)
    real = agreement_feed.published_versions
    calls = {"n": 0}

    def stalls_the_second_time(s: Settings, timeout_s: float) -> agreement_feed.FeedState:
        calls["n"] += 1
        if calls["n"] == 2:
            raise agreement_feed.FeedNotReached("the agreements feed could not be read to its end")
        return real(s, timeout_s)

    monkeypatch.setattr(agreement_feed, "published_versions", stalls_the_second_time)
    with pytest.raises(agreement_feed.PublishUnchecked, match=r"published to .* run `accord agreements publish` again"):
        publish_agreements(settings, EXAMPLES)
    monkeypatch.undo()
    assert set(published_versions(settings, 10).held) == {a.key for a in EXAMPLES}
    assert publish_agreements(settings, EXAMPLES) == Published(0, 0, len(EXAMPLES))
