"""The database goes away under a running processor: it delivers nothing meanwhile and resumes by itself.

PostgreSQL is reached through a TCP proxy the test controls: first every
connection is cut and new ones refused (an outage), then the open connections go
silent without a reset while new ones work (a failover, a NAT drop). The same
processor process must come through both, with nothing restarting it.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from accord.dev.drain import wait_for_group
from agreements import load_dir
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings
from tests.conftest import fresh_role_database
from tests.faults import TcpProxy, ledger_rows, via
from tests.ports import free_port


def _health(port: int) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def _referrals(n: int) -> list[dict]:
    scenario = build_scenario(n * 8, seed=random.randrange(1 << 30), n_malformed=0)
    found = [e.record for e in scenario.events if e.event_type == "referral"]
    assert len(found) >= n
    return found[:n]


def _publish(settings, records: list[dict]) -> dict:
    publisher = Publisher(settings)
    for r in records:
        publisher.publish("referral", r)
    report = publisher.flush()
    assert not report.failed
    return report.end_offsets


def _mash_ids(bus: Bus) -> set[str]:
    return {d.disclosure_id for d in bus.received("salford-mash")}


def test_database_cut_and_silenced_the_same_processor_resumes(broker, tmp_path_factory) -> None:
    with fresh_role_database() as db:
        proxy = TcpProxy(urlsplit(db.app_url).port or 5432)
        health_port = free_port()
        settings = make_settings(broker, via(db.app_url, proxy.port), tmp_path_factory.mktemp("outage"))
        settings = settings.model_copy(update={"database_timeout_s": 2.0, "health_port": health_port})
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        assert bus.processor is not None
        try:
            before = _referrals(5)
            wait_for_group(settings, settings.processor_group, _publish(settings, before), timeout=60)
            assert len(_mash_ids(bus)) == 5
            pid = bus.processor.pid

            # 1. cut: every connection closed, new ones refused, for 8 s.
            proxy.cut()
            during = _referrals(5)
            ends = _publish(settings, during)
            time.sleep(4)
            state = _health(health_port)
            assert state["state"] == "waiting" and state["waiting_for"] == "database", state
            assert len(_mash_ids(bus)) == 5, "something was delivered while the ledger was unreachable (I1)"
            time.sleep(4)
            assert len(_mash_ids(bus)) == 5
            assert bus.processor.poll() is None, "the processor exited during the outage"
            proxy.restore()
            wait_for_group(settings, settings.processor_group, ends, timeout=60)
            assert bus.processor.poll() is None and bus.processor.pid == pid
            assert len(_mash_ids(bus)) == 10
            assert _health(health_port)["state"] == "running"

            # 2. silence: open connections carry nothing and send no reset; new ones work.
            proxy.freeze()
            silent = _referrals(5)
            started = time.monotonic()
            wait_for_group(settings, settings.processor_group, _publish(settings, silent), timeout=90)
            took = time.monotonic() - started
            print(f"\nresumed {took:.1f}s after its connections went silent (ACCORD_DATABASE_TIMEOUT_S=2)")
            assert bus.processor.poll() is None and bus.processor.pid == pid
            ids = _mash_ids(bus)
            assert len(ids) == 15
            entries = {r.disclosure_id: r for r in ledger_rows(bus)}
            assert all(entries[i].outcome == "DISCLOSED" for i in ids)
        finally:
            bus.stop_processor()
            proxy.close()


def test_a_partner_topic_deleted_and_created_again_the_same_processor_delivers_to_it(broker, tmp_path_factory) -> None:
    """An operator deletes salford-mash's topic while the processor writes to it, then creates it again.

    The broker fences the producer that wrote to the deleted topic: every record it sends after
    is refused, however long it waits (the embedded broker answers PRODUCER_FENCED). The same
    process must deliver to the new topic once it exists, the records sent meanwhile included.
    """
    from confluent_kafka.admin import NewTopic

    from bus import kafka
    from tests.bus import running_bus

    with running_bus(broker, tmp_path_factory.mktemp("recreated")) as bus:
        settings = bus.settings
        assert bus.processor is not None
        pid = bus.processor.pid
        wait_for_group(settings, settings.processor_group, _publish(settings, _referrals(2)), timeout=60)
        assert len(_mash_ids(bus)) == 2
        topic = bus.names.partner("salford-mash", "referral")
        admin = kafka.admin(settings)
        partitions = len(admin.list_topics(topic, timeout=10).topics[topic].partitions)

        for future in admin.delete_topics([topic]).values():
            future.result()
        meanwhile = _referrals(3)
        ends = _publish(settings, meanwhile)
        ids = {r["envelope"]["event_id"] for r in meanwhile}
        deadline = time.monotonic() + 30
        while {r.event_id for r in ledger_rows(bus) if r.recipient == "salford-mash"} < ids:
            assert time.monotonic() < deadline, "the processor never decided the records sent meanwhile"
            time.sleep(0.2)
        time.sleep(2)  # it has tried to deliver them to the deleted topic
        for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
            future.result()

        after = _referrals(2)
        ends = {**ends, **_publish(settings, after)}
        wait_for_group(settings, settings.processor_group, ends, timeout=60)
        assert bus.processor.poll() is None and bus.processor.pid == pid
        delivered = {d.record["referral_id"] for d in bus.received("salford-mash")}
        assert {r["referral_id"] for r in meanwhile + after} <= delivered
        log = (settings.state_dir / "processor.log").read_text()
        assert "Traceback" not in log


def test_a_consent_row_no_reader_can_load_dead_letters_its_subjects_event_not_the_bus(broker, tmp_path_factory) -> None:
    """An expiry past year 9999 (written before the store refused one) made psycopg's DataError on every
    consent read: the processor waited on "the database" for ever and decided nothing. It is one
    subject's fault: that event is dead-lettered, the others are decided."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from accord.sharing.decide import subject_key
    from bus import headers as header
    from tests.bus import running_bus
    from tests.faults import dead_letters

    with running_bus(broker, tmp_path_factory.mktemp("unloadable-consent")) as bus:
        stuck, fine = _referrals(2)
        key = subject_key("referral", stuck)
        with bus.engine.begin() as conn:  # as the owner: past the store's checks, as an old row would be
            conn.execute(
                text(
                    "INSERT INTO consent_records (subject_key, recipient, decision, recorded_at, expires_at, collected_by)"
                    " VALUES (:k, 'salford-mash', 'deny', :now, '10000-01-01T00:00:00Z', 'test')"
                ),
                {"k": key, "now": datetime.now(UTC)},
            )
        wait_for_group(bus.settings, bus.settings.processor_group, _publish(bus.settings, [stuck, fine]), timeout=60)
        assert bus.ledger(event_id=fine["envelope"]["event_id"], recipient="salford-mash")
        assert bus.ledger(event_id=stuck["envelope"]["event_id"]) == []
        assert fine["referral_id"] in {d.record["referral_id"] for d in bus.received("salford-mash")}
        [dead] = [d for d in dead_letters(bus) if d[header.ERROR] == "Unprocessable"]
        assert dead[header.REASON] == "could not be processed: DataError"
