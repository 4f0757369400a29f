"""End to end on the real broker and PostgreSQL: publish -> processor -> ledger -> partner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

import consent
from accord.sharing.decide import disclosure_id, subject_key
from accord.sharing.pseudonymise import token
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from ledger import verify
from ledger.guard import install_guards
from tests.bus import TEST_PSEUDONYM_KEY, Bus, headers_of, running_bus, settings_env
from tests.bus import synthetic_events as _events

KNOWN = consent.KnownScopes.from_partners(load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"))


@pytest.fixture(scope="module")
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    """One processor per module; each test uses its own events and subjects."""
    with running_bus(broker, tmp_path_factory.mktemp("bus")) as bus:
        yield bus


def _leaf_paths(record: dict, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            paths |= _leaf_paths(value, f"{path}.")
        else:
            paths.add(path)
    return paths


def test_custody_event_reaches_cps_with_only_allowed_fields(bus: Bus) -> None:
    [event] = _events("custody", "met-police", where=lambda r: bool(r["subject"]["nhs_number"]))
    bus.publish([("custody", event)])

    event_id = event["envelope"]["event_id"]
    agreement = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
    did = disclosure_id(event_id, "cps", agreement.id, agreement.version)
    [got] = [d for d in bus.received("cps") if d.disclosure_id == did]

    assert _leaf_paths(got.record) == set(agreement.fields["custody"])
    assert got.record["subject"]["pnc_id"] == event["subject"]["pnc_id"]
    assert "nhs_number" not in got.record["subject"] and "address" not in got.record["subject"]
    [entry] = bus.ledger(disclosure_id=did)
    assert (entry.outcome, entry.recipient, entry.seq) == ("DISCLOSED", "cps", got.ledger_seq)
    # Explicit consent is required for liaison and diversion, and none was given.
    [withheld] = bus.ledger(event_id=event_id, recipient="liaison-diversion")
    assert withheld.outcome == "WITHHELD" and "explicit consent" in withheld.reason


def test_every_partner_record_has_a_ledger_entry(bus: Bus) -> None:
    bus.publish(
        [("custody", e) for e in _events("custody", n=5)] + [("natal_care", e) for e in _events("natal_care", n=5)]
    )
    received = bus.received("cps") + bus.received("hmcts") + bus.received("salford-health-visiting")
    assert len(received) >= 15
    for d in received:
        [entry] = bus.ledger(disclosure_id=d.disclosure_id)
        assert entry.outcome == "DISCLOSED" and entry.seq == d.ledger_seq


def test_denied_consent_withholds_and_nothing_reaches_the_partner(bus: Bus) -> None:
    event = _events("natal_care")[0]
    key = subject_key("natal_care", event)
    denial = consent.record(
        bus.engine, key, consent.ConsentDecision.DENY, known=KNOWN, recipient="salford-health-visiting"
    )
    bus.publish([("natal_care", event)])

    [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-health-visiting")
    assert entry.outcome == "WITHHELD"
    assert entry.reason == f"consent denied (consent record {denial.id})"
    assert entry.consent_version == denial.id
    assert entry.disclosure_id not in {d.disclosure_id for d in bus.received("salford-health-visiting")}


def test_permit_under_explicit_consent_discloses(bus: Bus) -> None:
    [event] = _events("custody", where=lambda r: bool(r["subject"]["nhs_number"]))
    consent.record(
        bus.engine,
        subject_key("custody", event),
        consent.ConsentDecision.PERMIT,
        known=KNOWN,
        recipient="liaison-diversion",
    )
    bus.publish([("custody", event)])
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="liaison-diversion")
    assert entry.outcome == "DISCLOSED"
    [got] = [d for d in bus.received("liaison-diversion") if d.disclosure_id == entry.disclosure_id]
    assert got.record["subject"]["nhs_number"] == event["subject"]["nhs_number"]


def test_bytes_that_are_not_avro_land_on_the_dead_letter_topic(bus: Bus) -> None:
    from bus import kafka

    payload = f"not avro {uuid.uuid4()}".encode()
    bus.publish([("referral", payload)])
    consumer = kafka.consumer(bus.settings, f"dlq-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([bus.names.dead_letter])
    try:
        found = None
        for _ in range(30):
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.value() == payload:
                found = msg
                break
    finally:
        consumer.close()
    assert found is not None, "the unreadable event never reached the dead-letter topic"
    headers = headers_of(found)
    assert headers["accord.source_topic"].decode() == bus.names.event("referral")
    assert headers["accord.reason"], "a dead letter must carry a reason"


def test_replayed_event_appends_nothing_twice(bus: Bus) -> None:
    event = _events("referral")[0]
    bus.publish([("referral", event)])
    bus.publish([("referral", event)])  # a source system's retry: same event id
    entries = bus.ledger(event_id=event["envelope"]["event_id"])
    assert len(entries) == 1 and entries[0].recipient == "salford-mash"
    received = [d for d in bus.received("salford-mash") if d.disclosure_id == entries[0].disclosure_id]
    assert len(received) == 2 and {d.ledger_seq for d in received} == {entries[0].seq}


def test_withdrawing_consent_after_a_disclosure_sends_a_retraction_and_records_it(bus: Bus) -> None:
    event = _events("natal_care")[0]
    bus.publish([("natal_care", event)])
    [disclosed] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-health-visiting")
    assert disclosed.outcome == "DISCLOSED"

    withdrawal = consent.record(
        bus.engine,
        subject_key("natal_care", event),
        consent.ConsentDecision.DENY,
        known=KNOWN,
        recipient="salford-health-visiting",
    )
    retracted = _wait_for(lambda: bus.ledger(refers_to=disclosed.disclosure_id))
    [entry] = retracted
    assert (entry.outcome, entry.recipient, entry.consent_version) == (
        "RETRACTED",
        "salford-health-visiting",
        withdrawal.id,
    )
    assert entry.reason == f"consent withdrawn: consent denied (consent record {withdrawal.id})"
    [notice] = [
        r for r in bus.retractions("salford-health-visiting") if r.retracts_disclosure_id == disclosed.disclosure_id
    ]
    assert notice.retraction_id == entry.disclosure_id and notice.ledger_seq == entry.seq
    assert set(notice.fields) == set(json.loads(disclosed.fields))
    # The research recipient is governed by the same purpose but not named by the denial: nothing to retract.
    [research] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-research")
    assert bus.ledger(refers_to=research.disclosure_id) == []
    assert verify(bus.engine).ok


def test_consent_changes_are_relayed_to_the_preferences_topic(bus: Bus) -> None:
    from bus import kafka
    from schemas.serde import Catalogue

    key = f"nhs:{_events('natal_care')[0]['mother']['nhs_number']}"
    rec = consent.record(
        bus.engine, key, consent.ConsentDecision.PERMIT, known=KNOWN, purpose="research", method="online"
    )
    consumer = kafka.consumer(bus.settings, f"prefs-{uuid.uuid4().hex[:6]}")
    consumer.subscribe([bus.names.consent_preferences])
    catalogue = Catalogue.default()
    found = None
    try:
        for _ in range(60):
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.key() != key.encode():
                continue
            value = msg.value()
            assert value is not None
            name, change = catalogue.decode(value)
            if name == "consent_change" and change["consent_record_id"] == rec.id:
                found = change
                break
    finally:
        consumer.close()
    assert found is not None, "the consent change never reached consent.preferences"
    assert (found["decision"], found["purpose"], found["method"]) == ("PERMIT", "research", "online")


def _wait_for(probe, timeout: float = 30.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("condition not met within timeout")


def test_pseudonymised_recipient_never_sees_a_raw_nhs_number(bus: Bus) -> None:
    events = _events("natal_care", n=2, where=lambda r: bool(r.get("baby") and r["baby"].get("nhs_number")))
    bus.publish([("natal_care", e) for e in events])
    for event in events:
        [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-research")
        [got] = [d for d in bus.received("salford-research") if d.disclosure_id == entry.disclosure_id]
        raw = {event["mother"]["nhs_number"], event["baby"]["nhs_number"]}
        assert raw.isdisjoint(str(v) for v in _leaf_values(got.record))
        assert got.record["mother"]["nhs_number"].startswith("psn:")
        # Stable for this recipient: the same token the pure function gives for this key.
        expected = token(TEST_PSEUDONYM_KEY.encode(), "salford-research", event["mother"]["nhs_number"])
        assert got.record["mother"]["nhs_number"] == expected
        # The identifiable recipient of the same event gets the real number.
        [hv] = [
            d
            for d in bus.received("salford-health-visiting")
            if d.record["envelope"]["event_id"] == event["envelope"]["event_id"]
        ]
        assert hv.record["mother"]["nhs_number"] == event["mother"]["nhs_number"]


def _leaf_values(record: dict) -> list:
    out: list = []
    for value in record.values():
        out.extend(_leaf_values(value) if isinstance(value, dict) else [value])
    return out


def test_consume_command_prints_disclosures_with_their_ids(bus: Bus) -> None:
    event = _events("referral")[0]
    bus.publish([("referral", event)])
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "accord.cli",
            "consume",
            "--partner",
            "salford-mash",
            "--json",
            "--idle",
            "2",
            "--group",
            f"cli-{uuid.uuid4().hex[:6]}",
        ],
        env={**os.environ, **settings_env(bus.settings)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = {line["disclosure_id"]: line for line in map(json.loads, result.stdout.splitlines())}
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"])
    line = printed[entry.disclosure_id]
    assert line["ledger_seq"] == entry.seq and line["agreement"] == "referral-to-mash@v1"
    assert line["record"]["narrative"] == event["narrative"]

    # Read again by the same group: nothing new is no error (it was "Commit failed: No offset stored").
    again = subprocess.run(
        result.args, env={**os.environ, **settings_env(bus.settings)}, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0 and again.stdout == "", again.stderr


def test_a_new_agreement_version_published_while_running_changes_the_next_decision(bus: Bus, tmp_path) -> None:
    from accord.processor.agreement_feed import publish_agreements

    current = next(a for a in bus.agreements if a.id == "referral-to-mash")
    narrower = current.model_copy(
        update={
            "version": current.version + 1,
            "fields": {"referral": tuple(f for f in current.fields["referral"] if f != "narrative")},
        }
    )
    publish_agreements(bus.settings, [narrower])
    bus.agreements.append(narrower)  # partners decode with the agreements they have signed
    # The processor follows the feed without a consumer group; it logs each version it applies.
    _wait_for(lambda: narrower.key in (bus.settings.state_dir / "processor.log").read_text())

    event = _events("referral")[0]
    bus.publish([("referral", event)])
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"])
    assert entry.agreement_version == narrower.version
    [got] = [d for d in bus.received("salford-mash") if d.disclosure_id == entry.disclosure_id]
    assert got.agreement == narrower.key and "narrative" not in got.record
    assert "narrative" not in json.loads(entry.fields)

    # A partner whose agreements lack the new version (the CLI reads ACCORD_AGREEMENTS_DIR,
    # which holds version 1 only) is told which version it needs, in one line.
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "consume", "--partner", "salford-mash", "--idle", "2"],
        env={**os.environ, **settings_env(bus.settings), "ACCORD_LOG_FORMAT": "console"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert f"a disclosure under agreement {narrower.key}" in line and "add that version's file" in line, line


def test_a_version_published_ahead_of_its_valid_from_leaves_the_one_before_deciding(bus: Bus) -> None:
    """A new version is published before the day it begins: the version before it goes on deciding
    until then (before, the newest version decided even before it began, so nothing was shared
    under the agreement until its valid_from)."""
    from datetime import date, timedelta

    from accord.processor.agreement_feed import publish_agreements

    current = max((a for a in bus.agreements if a.id == "referral-to-mash"), key=lambda a: a.version)
    ahead = current.model_copy(
        update={"version": current.version + 1, "valid_from": date.today() + timedelta(days=2), "valid_until": None}
    )
    publish_agreements(bus.settings, [ahead])
    bus.agreements.append(ahead)
    _wait_for(lambda: ahead.key in (bus.settings.state_dir / "processor.log").read_text())

    event = _events("referral")[0]
    bus.publish([("referral", event)])
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-mash")
    assert (entry.outcome, entry.agreement_version) == ("DISCLOSED", current.version)
    assert [d for d in bus.received("salford-mash") if d.disclosure_id == entry.disclosure_id]


def test_verify_names_a_row_altered_behind_the_triggers_back(bus: Bus) -> None:
    bus.publish([("custody", e) for e in _events("custody", n=3)])
    assert verify(bus.engine).ok
    victim = bus.ledger(recipient="hmcts")[0]
    with bus.engine.begin() as conn:
        conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER ALL"))
        conn.execute(text("UPDATE ledger_entries SET recipient = 'someone-else' WHERE seq = :s"), {"s": victim.seq})
        install_guards(conn)  # back to ENABLE ALWAYS
    result = verify(bus.engine)
    assert not result.ok and result.first_bad_seq == victim.seq
