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
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "consume", "--partner", PARTNER, "--json", "--idle", "2", *args],
        env={**os.environ, **settings_env(bus.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )


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
    assert "Traceback" not in result.stderr
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
    [("--idle", "-1"), ("--idle", "nan"), ("--idle", "inf"), ("--idle", "soon"), ("--max", "-3"), ("--max", "0")],
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
