"""I8 and I9 on the real broker and PostgreSQL, each case set up so the old processor broke it.

- A replay after a consent change delivers what the ledger recorded, not a new decision.
- A replay after a suspension delivers nothing under the suspended agreement, before or
  after the sweep retracted it, and the rest as recorded.
- An agreement suspended before a start is in force from that start's first decision,
  and what an earlier run disclosed under it is retracted once, however often it restarts.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import consent
from accord.processor.agreement_feed import publish_agreements, published_versions
from accord.sharing.decide import subject_key
from agreements import Status, load_dir
from agreements.partners import load_partners
from ledger import verify
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings, running_bus
from tests.conftest import fresh_role_database
from tests.integration.test_end_to_end import _wait_for


def _events(event_type: str, n: int, where=lambda r: True) -> list[dict]:
    found: list[dict] = []
    while len(found) < n:
        scenario = build_scenario(120, seed=random.randrange(1 << 30), n_malformed=0)
        found += [e.record for e in scenario.events if e.event_type == event_type and where(e.record)]
    return found[:n]


@pytest.fixture
def bus(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bus]:
    with running_bus(broker, tmp_path_factory.mktemp("i8")) as bus:
        yield bus


def test_a_replay_after_consent_was_given_delivers_nothing_for_a_withheld_entry(bus: Bus) -> None:
    [event] = _events("custody", 1, where=lambda r: bool(r["subject"]["nhs_number"]))
    bus.publish([("custody", event)])
    [withheld] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="liaison-diversion")
    assert withheld.outcome == "WITHHELD"

    known = consent.KnownScopes.from_partners(load_partners(bus.settings.partners_file))
    consent.record(
        bus.engine,
        subject_key("custody", event),
        consent.ConsentDecision.PERMIT,
        known=known,
        recipient="liaison-diversion",
    )
    bus.publish([("custody", event)])  # the source system sends the same event again

    [entry] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="liaison-diversion")
    assert entry.outcome == "WITHHELD" and entry.seq == withheld.seq
    assert entry.disclosure_id not in {d.disclosure_id for d in bus.received("liaison-diversion")}
    # The statutory recipients get the recorded disclosure again, under the same id and seq.
    cps = [
        d
        for d in bus.received("cps")
        if d.disclosure_id
        in {e.disclosure_id for e in bus.ledger(event_id=event["envelope"]["event_id"], recipient="cps")}
    ]
    assert len(cps) == 2 and len({d.ledger_seq for d in cps}) == 1


def test_a_replay_after_consent_was_withdrawn_is_retracted_not_redecided(bus: Bus) -> None:
    [event] = _events("natal_care", 1)
    bus.publish([("natal_care", event)])
    [disclosed] = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-health-visiting")
    assert disclosed.outcome == "DISCLOSED"
    known = consent.KnownScopes.from_partners(load_partners(bus.settings.partners_file))
    consent.record(
        bus.engine,
        subject_key("natal_care", event),
        consent.ConsentDecision.DENY,
        known=known,
        recipient="salford-health-visiting",
    )
    [retraction] = _wait_for(lambda: bus.ledger(refers_to=disclosed.disclosure_id))
    bus.publish([("natal_care", event)])
    entries = bus.ledger(event_id=event["envelope"]["event_id"], recipient="salford-health-visiting")
    assert {(e.outcome, e.disclosure_id) for e in entries} == {
        ("DISCLOSED", disclosed.disclosure_id),
        ("RETRACTED", retraction.disclosure_id),
    }
    # Sent once, before the withdrawal; the replay sends nothing more of a retracted disclosure.
    got = [d for d in bus.received("salford-health-visiting") if d.disclosure_id == disclosed.disclosure_id]
    assert len(got) == 1


@pytest.mark.parametrize("swept", [True, False], ids=["retracted-before-the-replay", "replayed-before-the-sweep"])
def test_a_replay_after_a_suspension_delivers_nothing_under_it_and_the_rest_as_recorded(
    broker: str, tmp_path_factory: pytest.TempPathFactory, swept: bool
) -> None:
    """Found by hand: a worker killed before the broker took its batch, whose agreement was
    suspended before the batch was replayed, leaves DISCLOSED entries that are never delivered,
    only retracted. The replay is what decides that, staged here: an event disclosed under
    custody-to-prosecution, the agreement suspended, the same event sent again, once after the
    retraction sweep retracted it and once before the sweep ran (its interval an hour). Either
    way the replay sends nothing more under the suspended agreement, and what other agreements
    disclosed is delivered again as recorded; retracted, each gets one retraction and notice."""
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("i8-suspended"))
        if not swept:
            settings = settings.model_copy(update={"retraction_interval_s": 3600.0})  # one sweep, at the start
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        try:
            [event] = _events("custody", 1)
            bus.publish([("custody", event)])
            entries = bus.ledger(event_id=event["envelope"]["event_id"], outcome="DISCLOSED")
            suspended = {e.disclosure_id for e in entries if e.agreement_id == "custody-to-prosecution"}
            others = {e.disclosure_id for e in entries} - suspended
            assert suspended, "the event was not disclosed under custody-to-prosecution"
            recipients = {e.recipient for e in entries}

            def sent(ids: set[str]) -> list[str]:
                return sorted(d.disclosure_id for r in recipients for d in bus.received(r) if d.disclosure_id in ids)

            assert sent(suspended) == sorted(suspended)  # delivered once, before the suspension
            current = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
            publish_agreements(
                settings, [current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})]
            )
            if swept:
                for did in suspended:
                    _wait_for(lambda did=did: bus.ledger(refers_to=did, outcome="RETRACTED"))
            else:  # a fresh event decided without the agreement says the processor applied the suspension
                for probe in _events("custody", 10):
                    bus.publish([("custody", probe)])
                    if not bus.ledger(event_id=probe["envelope"]["event_id"], agreement_id=current.id):
                        break
                else:
                    raise AssertionError("the processor never applied the suspension")
            others_before = len(sent(others))

            bus.publish([("custody", event)])  # the replay

            assert sent(suspended) == sorted(suspended)  # nothing more under the suspended agreement
            assert len(sent(others)) == others_before + len(others)  # the rest again, as recorded
            retractions = [e for did in suspended for e in bus.ledger(refers_to=did, outcome="RETRACTED")]
            if swept:
                assert sorted(e.refers_to for e in retractions) == sorted(suspended)  # once each
                notices = [n.retracts_disclosure_id for r in recipients for n in bus.retractions(r)]
                assert sorted(n for n in notices if n in suspended) == sorted(suspended)
            else:
                assert not retractions  # the sweep's to do, within its hour
            assert verify(bus.engine).ok
        finally:
            bus.stop_processor()


def test_a_suspension_on_the_feed_before_start_holds_and_retracts_once_across_restarts(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("i9"))
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        first, second = _events("custody", 2)
        bus.start_processor()
        try:
            bus.publish([("custody", first)])  # an earlier run discloses under version 1
        finally:
            bus.stop_processor()
        disclosed = bus.ledger(event_id=first["envelope"]["event_id"], agreement_id="custody-to-prosecution")
        assert {e.outcome for e in disclosed} == {"DISCLOSED"} and len(disclosed) == 2

        current = next(a for a in bus.agreements if a.id == "custody-to-prosecution")
        suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
        publish_agreements(settings, [suspended])  # while no processor runs
        for _ in range(3):  # restart after restart
            bus.start_processor()
            try:
                bus.publish([("custody", second)])
                for entry in disclosed:
                    _wait_for(lambda e=entry: bus.ledger(refers_to=e.disclosure_id))
                time.sleep(2 * settings.retraction_interval_s)
            finally:
                bus.stop_processor()
        assert not [
            e for e in bus.ledger(event_id=second["envelope"]["event_id"]) if e.agreement_id == "custody-to-prosecution"
        ]
        for entry in disclosed:
            [retraction] = bus.ledger(refers_to=entry.disclosure_id)
            assert retraction.outcome == "RETRACTED"
            notices = [r for r in bus.retractions(entry.recipient) if r.retracts_disclosure_id == entry.disclosure_id]
            assert notices and {n.ledger_seq for n in notices} == {retraction.seq}
        assert verify(db.owner).ok


def test_a_resend_and_a_reused_id_in_one_batch_the_ledger_tells_which_is_which(bus: Bus) -> None:
    """Found by hand: with both in one batch, the batch's first copy was taken for the original."""
    import copy
    import uuid as uuid_

    from bus import kafka
    from schemas.serde import Catalogue
    from tests.faults import dead_letters

    [event] = _events("referral", 1)
    bus.publish([("referral", event)])
    [entry] = bus.ledger(event_id=event["envelope"]["event_id"])
    impostor = copy.deepcopy(event)
    impostor["referral_id"] = f"IMPOSTOR-{uuid_.uuid4().hex[:8]}"
    impostor["subject"]["family_name"] = "Other"

    bus.stop_processor()  # both wait for the next start, so they are read in one batch
    catalogue = Catalogue.default()
    producer = kafka.producer(bus.settings)
    offsets: dict[str, tuple[int, int]] = {}
    for name, record in (("impostor", impostor), ("resend", event)):
        producer.produce(
            bus.names.event("referral"),
            key=b"one-partition",  # impostor first, in order
            value=catalogue.encode("referral", record, validated=True),
            # mypy cannot infer a lambda with a default argument.
            on_delivery=lambda err, m, name=name: offsets.__setitem__(name, (m.partition(), m.offset())),  # type: ignore[misc]
        )
        producer.flush(30)
    bus.start_processor()
    from accord.dev.drain import wait_for_group

    wait_for_group(
        bus.settings,
        bus.settings.processor_group,
        {(bus.names.event("referral"), p): o + 1 for p, o in offsets.values()},
        timeout=60,
    )

    conflicts = [
        d
        for d in dead_letters(bus)
        if d.get("accord.error") == "ConflictingDuplicate" and event["envelope"]["event_id"] in d["accord.reason"]
    ]
    assert [(int(d["accord.source_partition"]), int(d["accord.source_offset"])) for d in conflicts] == [
        offsets["impostor"]
    ]
    assert f"ledger seq {entry.seq}" in conflicts[0]["accord.reason"]
    got = [d for d in bus.received("salford-mash") if d.disclosure_id == entry.disclosure_id]
    assert len(got) == 2 and all(d.record["referral_id"] == event["referral_id"] for d in got)
    assert not [d for d in bus.received("salford-mash") if d.record.get("referral_id") == impostor["referral_id"]]
    assert [e.disclosure_id for e in bus.ledger(event_id=event["envelope"]["event_id"])] == [entry.disclosure_id]


def test_a_processor_whose_agreements_folder_differs_from_the_feed_stops_before_deciding(
    broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Version 1 was published; a processor's folder holds a v1 edited without a new version (one more
    field). Deciding under its copy would share that field under the same id and version as every other
    processor does without it (I4): it stops, exit 2, in one line, having decided nothing."""
    import os
    import shutil
    import subprocess
    import sys

    from tests.bus import settings_env

    with fresh_role_database() as db:
        state = tmp_path_factory.mktemp("folder-vs-feed")
        settings = make_settings(broker, db.app_url, state)
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        publish_agreements(settings, bus.agreements)
        edited = state / "agreements"
        shutil.copytree(settings.agreements_dir, edited)
        path = edited / "natal-care-to-health-visiting.yaml"
        path.write_text(
            path.read_text().replace(
                "    - mother.family_name\n", "    - mother.family_name\n    - mother.date_of_birth\n"
            )
        )
        assert "mother.date_of_birth" in path.read_text()
        publisher = Publisher(settings)  # an event waiting for it: deciding it under the edited copy is the harm
        publisher.publish("natal_care", _events("natal_care", 1)[0])
        assert not publisher.flush().failed
        run = subprocess.run(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            env={**os.environ, **settings_env(settings), "ACCORD_AGREEMENTS_DIR": str(edited)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 2, run.stderr[-2000:]
        assert "Traceback" not in run.stderr
        last = run.stderr.strip().splitlines()[-1]
        assert "natal-care-to-health-visiting@v1 in the agreements folder differs from the version published" in last
        assert bus.ledger() == []

        # `accord agreements publish` of the edited folder publishes nothing, in one line naming the version;
        # of the original folder, nothing again (each version is on the feed already).
        def publish(folder: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "accord.cli", "agreements", "publish", str(folder)],
                env={**os.environ, **settings_env(settings)},
                capture_output=True,
                text=True,
                timeout=120,
            )

        refused = publish(edited)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        [line] = refused.stderr.strip().splitlines()
        assert line.startswith("accord agreements publish: natal-care-to-health-visiting@v1: published on ")
        assert "give the changed file a new version" in line, line
        on_feed = published_versions(settings, timeout_s=10)
        assert on_feed.held == {a.key: a for a in bus.agreements}  # the first publication stands, and nothing was added
        again = publish(settings.agreements_dir)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith(
            f"0 agreements published from {settings.agreements_dir}; {len(on_feed.held)} were"
        )
