"""Partners' receipts: checked against the ledger, recorded once, and pending ones listed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from bus import kafka
from consumers import Disclosure, Subscription
from consumers.receipts import Receipt, ReceiptSender, receipt_id
from ledger import EntryDraft, append, verify
from ledger.receipts import ReceiptClaim, check_claim, pending_receipts, record_receipts
from producers.synthetic import build_scenario
from tests.bus import Bus, headers_of, running_bus, settings_env
from tests.conftest import RoleDatabase
from tests.integration.test_ledger import draft, not_covered

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _claim(disclosure_id: str, partner: str, rid: str | None = None) -> ReceiptClaim:
    return ReceiptClaim(rid or receipt_id(disclosure_id, partner), disclosure_id, partner, NOW)


# --------------------------------------------------------------------------- pure checks


def test_receipt_id_is_stable_and_per_partner() -> None:
    assert receipt_id("d1", "cps") == receipt_id("d1", "cps")
    assert len({receipt_id("d1", "cps"), receipt_id("d1", "hmcts"), receipt_id("d2", "cps")}) == 3


def _refusal(claim: ReceiptClaim, expected_id: str, acknowledged: EntryDraft | None) -> str:
    """check_claim's answer for a claim it must refuse."""
    refusal = check_claim(claim, expected_id, acknowledged)
    assert refusal is not None
    return refusal


def test_check_claim() -> None:
    sent = replace(draft(1), recipient="cps", outcome="DISCLOSED")
    assert check_claim(_claim(sent.disclosure_id, "cps"), receipt_id(sent.disclosure_id, "cps"), sent) is None
    wrong_partner = check_claim(_claim(sent.disclosure_id, "hmcts"), receipt_id(sent.disclosure_id, "hmcts"), sent)
    assert wrong_partner == "receipt from partner 'hmcts' for a disclosure sent to another recipient"
    assert "was sent" in _refusal(_claim("nope", "cps"), receipt_id("nope", "cps"), None)
    withheld = replace(sent, outcome="WITHHELD")
    assert "was sent" in _refusal(_claim(sent.disclosure_id, "cps"), receipt_id(sent.disclosure_id, "cps"), withheld)
    # Nothing was sent for an event no agreement covers, to anyone (its recipient is "").
    uncovered = not_covered(sent)
    for partner in ("", "cps"):
        claim = _claim(sent.disclosure_id, partner)
        assert "was sent" in _refusal(claim, receipt_id(sent.disclosure_id, partner), uncovered)
    forged = _claim(sent.disclosure_id, "cps", rid="my-own-id")
    assert "uuid5" in _refusal(forged, receipt_id(sent.disclosure_id, "cps"), sent)


# --------------------------------------------------------------------------- ledger, as the app role


def test_record_receipts_once_and_only_from_the_recipient(role_db: RoleDatabase) -> None:
    engine = role_db.app
    d1 = replace(draft(1), recipient="cps", outcome="DISCLOSED", decided_at=NOW - timedelta(hours=2))
    d2 = replace(draft(2), recipient="cps", outcome="DISCLOSED", decided_at=NOW - timedelta(minutes=1))
    d3 = replace(draft(4), recipient="hmcts", outcome="DISCLOSED", decided_at=NOW - timedelta(hours=2))
    w = replace(draft(3), recipient="cps", outcome="WITHHELD")
    nc = not_covered(draft(5))
    append(engine, [d1, d2, d3, w, nc])
    assert [e.draft.disclosure_id for e in pending_receipts(engine)] == [
        d1.disclosure_id,
        d2.disclosure_id,
        d3.disclosure_id,
    ]

    out = record_receipts(
        engine,
        [
            _claim(d1.disclosure_id, "cps"),
            _claim(d3.disclosure_id, "cps"),
            _claim(w.disclosure_id, "cps"),
            _claim(d1.disclosure_id, "cps"),
            _claim(nc.disclosure_id, ""),
            _claim(nc.disclosure_id, "cps"),
        ],
        receipt_id,
        recorded_at=NOW,
    )
    assert [o.refusal is None for o in out] == [True, False, False, True, False, False]
    assert all(
        o.refusal is not None and "no disclosure with that id was sent" in o.refusal for o in (out[2], out[4], out[5])
    )
    assert out[0].appended is not None and out[3].appended is not None
    assert out[0].appended.new and not out[3].appended.new and out[0].appended.seq == out[3].appended.seq
    assert out[1].refusal is not None and "another recipient" in out[1].refusal
    # Recorded once, pointing at the disclosure; a replay records nothing.
    again = record_receipts(engine, [_claim(d1.disclosure_id, "cps")], receipt_id, recorded_at=NOW)
    assert again[0].appended is not None
    assert not again[0].appended.new
    from ledger import entries

    [receipt] = [e for e in entries(engine) if e.draft.outcome == "RECEIVED"]
    assert receipt.draft.refers_to == d1.disclosure_id and receipt.draft.recipient == "cps"
    assert receipt.draft.disclosure_id == receipt_id(d1.disclosure_id, "cps")
    assert receipt.draft.fields == ()
    # The receipt keeps the disclosure's event context, its digest and other subjects included.
    assert (receipt.draft.event_digest, receipt.draft.subjects) == (d1.event_digest, d1.subjects)
    assert d1.event_digest and d1.subjects
    assert verify(engine).ok

    assert [e.draft.disclosure_id for e in pending_receipts(engine)] == [d2.disclosure_id, d3.disclosure_id]
    assert [e.draft.disclosure_id for e in pending_receipts(engine, partner="cps")] == [d2.disclosure_id]
    older = pending_receipts(engine, older_than=timedelta(minutes=30), now=NOW)
    assert [e.draft.disclosure_id for e in older] == [d3.disclosure_id]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    with running_bus(broker, tmp_path_factory.mktemp("receipts")) as bus:
        yield bus


def _referrals(n: int) -> list[dict]:
    scenario = build_scenario(n_events=80, seed=random.SystemRandom().randrange(1 << 30))
    found = [e.record for e in scenario.events if e.event_type == "referral"]
    assert len(found) >= n
    return found[:n]


def _wait_for(probe, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("condition not met within timeout")


def _pending_cli(bus: Bus, *args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "ledger", "pending-receipts", "--json", *args],
        env={**os.environ, **settings_env(bus.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_partner_acknowledges_and_the_receipt_lands_in_the_ledger(bus: Bus) -> None:
    acked_event, unacked_event = _referrals(2)
    bus.publish([("referral", acked_event), ("referral", unacked_event)])
    [acked] = bus.ledger(event_id=acked_event["envelope"]["event_id"])
    [unacked] = bus.ledger(event_id=unacked_event["envelope"]["event_id"])
    assert acked.recipient == unacked.recipient == "salford-mash"

    group = f"{bus.settings.topic_prefix}mash.{uuid.uuid4().hex[:6]}"
    with Subscription(bus.settings, "salford-mash", bus.agreements, group_id=group) as sub:
        for d in sub.iter(idle_timeout=1.5):
            assert isinstance(d, Disclosure)  # nothing is retracted here
            if d.disclosure_id == acked.disclosure_id:
                sub.acknowledge(d)  # the partner's code has handled it
        sub.commit()

    [receipt] = _wait_for(lambda: bus.ledger(refers_to=acked.disclosure_id, outcome="RECEIVED"))
    assert receipt.disclosure_id == receipt_id(acked.disclosure_id, "salford-mash")
    assert (receipt.recipient, receipt.event_id) == ("salford-mash", acked.event_id)
    assert bus.ledger(refers_to=unacked.disclosure_id) == []

    pending = {p["disclosure_id"] for p in _pending_cli(bus, "--partner", "salford-mash")}
    assert unacked.disclosure_id in pending and acked.disclosure_id not in pending
    assert _pending_cli(bus, "--partner", "salford-mash", "--older-than", "3600") == []
    assert verify(bus.engine).ok


def test_a_receipt_for_another_partners_disclosure_is_refused_and_dead_lettered(bus: Bus) -> None:
    [event] = _referrals(1)
    bus.publish([("referral", event)])
    [mash] = bus.ledger(event_id=event["envelope"]["event_id"])

    # "cps" claims it received salford-mash's disclosure; no broker ACL stops it sending.
    sender = ReceiptSender(kafka.producer(bus.settings), bus.names.receipts, "cps")
    forged = sender.send(mash.disclosure_id)
    sender.flush()
    consumer = kafka.consumer(bus.settings, f"dlq-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([bus.names.dead_letter])
    found = None
    try:
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.key() == mash.disclosure_id.encode():
                found = msg
    finally:
        consumer.close()
    assert found is not None, "the forged receipt never reached the dead-letter topic"
    headers = {k: v.decode() for k, v in headers_of(found).items()}
    assert headers["accord.source_topic"] == bus.names.receipts
    assert headers["accord.error"] == "ReceiptRefused"
    assert headers["accord.reason"] == "receipt from partner 'cps' for a disclosure sent to another recipient"
    assert bus.ledger(disclosure_id=forged.receipt_id) == []
    assert bus.ledger(refers_to=mash.disclosure_id) == []


def test_receipt_round_trips() -> None:
    from consumers.receipts import decode_receipt, encode_receipt, with_receipt_schema

    catalogue = with_receipt_schema()
    r = Receipt.of("d1", "cps", NOW)
    assert decode_receipt(catalogue, encode_receipt(catalogue, r)) == r
