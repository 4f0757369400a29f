"""`accord consume` and the partner SDK against what a careless operator or a stranger does.

Asserted from the outside: what the partner's own application receives, and what the
command prints and exits with.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from bus import headers as header
from bus import kafka
from consumers import Disclosure, ForeignRecord, Subscription
from tests.bus import Bus, running_bus, settings_env
from tests.bus import synthetic_events as _events

PARTNER = "salford-mash"


@pytest.fixture(scope="module")
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    with running_bus(broker, tmp_path_factory.mktemp("bus")) as bus:
        yield bus


def _consume(bus: Bus, *args: str) -> subprocess.CompletedProcess[str]:
    return _consume_as(bus, PARTNER, *args)


def test_looking_with_accord_consume_takes_nothing_from_the_partner_application(bus: Bus) -> None:
    events = _events("referral", n=6)
    bus.publish([("referral", e) for e in events])
    wanted = {entry.disclosure_id for e in events for entry in bus.ledger(event_id=e["envelope"]["event_id"])}
    assert wanted

    looked = _consume(bus)  # an operator looks, twice, in the SDK's default group's place
    again = _consume(bus)
    assert looked.returncode == 0 and again.returncode == 0, looked.stderr + again.stderr
    assert wanted <= {line.split('"disclosure_id": "')[1].split('"')[0] for line in looked.stdout.splitlines()}
    assert looked.stdout == again.stdout  # each look reads from the start: nothing was committed

    # The partner's application, in the SDK's default group, still receives every disclosure.
    with Subscription(bus.settings, PARTNER, bus.agreements) as app:
        got = {d.disclosure_id for d in app.iter(idle_timeout=2) if isinstance(d, Disclosure)}
    assert wanted <= got


def test_records_a_stranger_put_on_a_partner_topic_are_named_and_passed_over(bus: Bus) -> None:
    topic = bus.names.partner(PARTNER, "referral")
    stranger = kafka.producer(bus.settings)
    bus.publish([("referral", _events("referral")[0])])
    real = next(d for d in bus.received(PARTNER) if d.topic == topic)
    # The real record's value and headers, as a stranger could copy or damage them.
    with Subscription(bus.settings, PARTNER, bus.agreements, group_id=f"raw-{uuid.uuid4().hex[:6]}") as raw:
        raw.wait_for_assignment()
        msg = None
        while msg is None or (msg.topic(), msg.offset()) != (real.topic, real.offset):
            msg = raw.consumer.poll(5)
            assert msg is not None, "the real disclosure was not read back"
        value, headers = msg.value(), cast(list[tuple[str, bytes]], msg.headers() or [])
    damaged: list[tuple[bytes | None, list[tuple[str, bytes]]]] = [
        (value, []),  # no headers at all
        (value, [(k, b"\xff\xfe" if k == header.DISCLOSURE_ID else v) for k, v in headers]),  # not UTF-8
        (value, [(k, v) for k, v in headers if k != header.LEDGER_SEQ]),  # one header missing
        (value, [(k, b"seven" if k == header.LEDGER_SEQ else v) for k, v in headers]),  # not a number
        (b"\xc3\x01not avro at all", headers),
        (None, headers),  # a tombstone
        (value, [(k, "١٢".encode() if k == header.LEDGER_SEQ else v) for k, v in headers]),  # not ASCII digits
        (value, [(k, b"-3" if k == header.LEDGER_SEQ else v) for k, v in headers]),
        (value, [(k, b"x" * 10_000 if k == header.DISCLOSURE_ID else v) for k, v in headers]),  # no UUID
        (value, [*headers, ("accord.x\n\x1b[31maccord consume: all good", b"\xff")]),  # a name to forge a line
    ]
    for v, h in damaged:
        stranger.produce(topic, value=v, key=b"k", partition=real.partition, headers=cast(Any, h))
    fresh = _events("referral")[0]
    bus.publish([("referral", fresh)])  # a real disclosure after the strangers' records
    stranger.flush(10)
    [entry] = bus.ledger(event_id=fresh["envelope"]["event_id"])

    group = f"ops-{uuid.uuid4().hex[:6]}"
    result = _consume(bus, "--group", group)
    assert result.returncode == 1, result.stderr
    assert entry.disclosure_id in result.stdout  # the real one after them is printed
    named = [line for line in result.stderr.splitlines() if "not a record Accord's processor wrote" in line]
    assert len(named) == len(damaged), result.stderr
    assert all(line.startswith(f"accord consume: {topic}[{real.partition}]@") for line in named), named
    assert "Traceback" not in result.stderr and "\x1b" not in result.stderr and "x" * 100 not in result.stderr
    assert value is not None and value.hex() not in result.stderr  # content never quoted

    # What was printed was committed in --group: a rerun there has nothing new, and exits 0.
    rerun = _consume(bus, "--group", group)
    assert rerun.returncode == 0 and rerun.stdout == "", rerun.stderr

    # The SDK raises ForeignRecord for each and goes on past it on the next poll.
    with Subscription(bus.settings, PARTNER, bus.agreements, group_id=f"sdk-{uuid.uuid4().hex[:6]}") as sdk:
        passed: list[ForeignRecord] = []
        ids = {d.disclosure_id for d in sdk.iter(idle_timeout=2, on_foreign=passed.append) if isinstance(d, Disclosure)}
    assert entry.disclosure_id in ids and len(passed) == len(damaged)


@pytest.mark.parametrize(
    "args",
    [
        ("--idle", "-1"),
        ("--idle", "nan"),
        ("--idle", "inf"),
        ("--idle", "1e308"),
        ("--idle", "soon"),
        ("--max", "-3"),
        ("--max", "0"),
    ],
)
def test_limits_that_would_wait_for_ever_or_mean_nothing_are_refused(bus: Bus, args: tuple[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "consume", "--partner", PARTNER, *args],
        env={**os.environ, **settings_env(bus.settings)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert f"argument {args[0]}" in result.stderr and args[1] in result.stderr, result.stderr


def test_a_disclosure_under_a_version_not_given_is_never_committed_past(bus: Bus) -> None:
    from consumers import UnknownAgreementVersion

    event = _events("referral")[0]
    bus.publish([("referral", event)])
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient=PARTNER)
    # A partner that has signed only a later version of the agreement.
    later = [
        a.model_copy(update={"version": a.version + 1}) if a.id == entry.agreement_id else a for a in bus.agreements
    ]
    group = f"behind-{uuid.uuid4().hex[:6]}"
    with Subscription(bus.settings, PARTNER, later, group_id=group) as sub:
        with pytest.raises(UnknownAgreementVersion) as first:
            list(sub.iter(idle_timeout=2, on_foreign=lambda _: None))
        with pytest.raises(UnknownAgreementVersion) as second:  # read again, not passed over
            sub.poll(5)
        assert str(first.value) == str(second.value)
        sub.commit()  # commits up to that record, not past it
    with Subscription(bus.settings, PARTNER, bus.agreements, group_id=group) as sub:
        got = [d for d in sub.iter(idle_timeout=2, on_foreign=lambda _: None) if isinstance(d, Disclosure)]
        assert entry.disclosure_id in {d.disclosure_id for d in got}


def test_a_disclosure_copied_from_another_partner_or_a_source_event_is_foreign_and_holds_nothing(bus: Bus) -> None:
    """Only a projection made for this partner, under the agreement its headers name, is a
    disclosure; a record naming a version we lack holds the Subscription only when it has all
    of a disclosure's headers, and a commit then keeps what was handled before it."""
    from schemas.serde import Catalogue

    custody = _events("custody", n=2)
    bus.publish([("custody", custody[0])])
    topic = bus.names.partner("cps", "custody")
    mine = next(d for d in bus.received("cps") if d.topic == topic)
    theirs = next(d for d in bus.received(PARTNER))
    raw = _read_raw(bus, [topic, theirs.topic])
    copied, cps_headers = raw[(theirs.topic, theirs.offset)], raw[(topic, mine.offset)][1]
    stranger = kafka.producer(bus.settings)
    offsets: list[int] = []

    def put(value: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        stranger.produce(
            topic,
            value=value,
            key=b"k",
            partition=mine.partition,
            headers=cast(Any, headers),
            on_delivery=lambda err, msg: offsets.append(cast(int, msg.offset())),
        )
        stranger.flush(10)

    put(*copied)  # salford-mash's disclosure, headers and all
    put(Catalogue.default().encode("custody", custody[1]), cps_headers)  # an unprojected source event
    put(b"\xc3\x01" + bytes(8), [(header.AGREEMENT, b"no-such-agreement@v1")])  # a version header alone
    group = f"cps-{uuid.uuid4().hex[:6]}"
    first = _consume_as(bus, "cps", "--group", group)
    assert first.returncode == 1, first.stderr
    assert mine.disclosure_id in first.stdout and theirs.disclosure_id not in first.stdout
    assert len([line for line in first.stderr.splitlines() if "not a record Accord's processor wrote" in line]) == 3

    # A record with a disclosure's headers under a version cps's agreements lack holds the group
    # there (it may be real), and the commit keeps everything handled before it.
    put(
        b"\xc3\x01" + bytes(8),
        [(k, b"custody-to-prosecution@v9" if k == header.AGREEMENT else v) for k, v in cps_headers],
    )
    held = _consume_as(bus, "cps", "--group", group)
    assert held.returncode == 2 and "custody-to-prosecution@v9" in held.stderr, held.stderr
    assert _committed(bus, group, topic, mine.partition) == offsets[-1]  # at the record, not past it, nor unset


def _consume_as(bus: Bus, partner: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "consume", "--partner", partner, "--json", "--idle", "2", *args],
        env={**os.environ, **settings_env(bus.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _read_raw(bus: Bus, topics: list[str]) -> dict[tuple[str, int], tuple[bytes | None, list[tuple[str, bytes]]]]:
    """(topic, offset) -> (value, headers) of every record on ``topics``, read from the start until idle."""
    consumer = kafka.consumer(bus.settings, f"raw-{uuid.uuid4().hex[:6]}")
    meta = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in meta.topics[t].partitions])
    out: dict[tuple[str, int], tuple[bytes | None, list[tuple[str, bytes]]]] = {}
    try:
        while (msg := consumer.poll(3)) is not None:
            if msg.error() is None:
                out[(cast(str, msg.topic()), cast(int, msg.offset()))] = (
                    msg.value(),
                    cast(list[tuple[str, bytes]], msg.headers() or []),
                )
    finally:
        consumer.close()
    return out


def _committed(bus: Bus, group: str, topic: str, partition: int) -> int:
    consumer = kafka.consumer(bus.settings, group)
    try:
        [tp] = consumer.committed([TopicPartition(topic, partition)], timeout=10)
        return tp.offset
    finally:
        consumer.close()
