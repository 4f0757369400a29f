"""The source database or the broker goes away under a running relay: it waits, marks nothing done, and resumes.

The database is reached through a TCP proxy the test cuts (every connection closed,
new ones refused), as tests/integration/test_outage.py does for the processor. The
broker is the relay's own embedded one, stopped and started again (empty: the embedded
broker keeps nothing), so what reaches it afterwards can only have been sent after it
came back. The same relay process must come through both, with nothing restarting it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from accord.dev import devstack
from agreements import load_dir, recipients_by_type
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames, create_topics
from tests.faults import TcpProxy, via
from tests.integration.test_relay import Source, good_rows, read_events, relay_env, relay_settings, source_database
from tests.ports import free_port


def _start(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "relay"], env=relay_env(settings), stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for(what: str, done, timeout: float = 60) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def _ids(rows: list[tuple[str, str]]) -> set[str]:
    return {json.loads(p)["envelope"]["event_id"] for _, p in rows}


def _log_events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _last_row(source: Source) -> tuple[int, int]:
    return source.outbox()[-1][:2]


def test_a_database_cut_the_same_relay_waits_and_resumes(broker, tmp_path) -> None:
    with source_database() as source:
        proxy = TcpProxy(urlsplit(source.relay_url).port or 5432)
        try:
            settings = relay_settings(broker, source)
            settings = settings.model_copy(update={"relay_source_url": via(source.relay_url, proxy.port)})
            log = tmp_path / "relay.log"
            relay = _start(settings, log)
            try:
                rows = good_rows(60, seed=11)
                before, during, after = rows[:20], rows[20:40], rows[40:]
                source.insert(before)
                _wait_for("the first rows", lambda: len(read_events(settings)) >= 20)
                pid = relay.pid

                proxy.cut()
                for row in during:  # the source keeps writing: its own connections do not pass the proxy
                    source.insert([row])
                time.sleep(6)
                assert relay.poll() is None, "the relay exited while the database was cut"
                waits = [e for e in _log_events(log) if e["event"] == "relay_waiting"]
                assert waits and all(e["waiting_for"] == "database" for e in waits), waits
                assert {r.event_id for r in read_events(settings)} == _ids(before), "published while cut off"

                proxy.restore()
                source.insert(after)
                _wait_for("the relay to catch up", lambda: source.position() == _last_row(source))
                assert relay.poll() is None and relay.pid == pid
                on_topic = read_events(settings)
                assert {r.event_id for r in on_topic} == _ids(before) | _ids(during) | _ids(after)
                assert any(e["event"] == "relay_resumed" for e in _log_events(log))
                assert "Traceback" not in log.read_text()
            finally:
                relay.terminate()
                assert relay.wait(30) == 0
        finally:
            proxy.close()


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """An embedded broker of this test's own, which it may stop and start."""
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", state_dir=tmp_path_factory.mktemp("broker"))
    devstack.up(settings)
    try:
        yield settings
    finally:
        devstack.down(settings)


def test_the_broker_stops_the_relay_marks_nothing_done_and_resumes_when_it_returns(own_broker, tmp_path) -> None:
    with source_database() as source:
        settings = relay_settings(own_broker.bootstrap_servers, source)
        log = tmp_path / "relay.log"
        relay = _start(settings, log)
        try:
            rows = good_rows(40, seed=13)
            before, during = rows[:20], rows[20:]
            source.insert(before)
            _wait_for("the first rows", lambda: source.position() == _last_row(source))
            remembered = source.position()
            pid = relay.pid

            devstack.down(own_broker)
            for row in during:
                source.insert([row])
            # Longer than a record's delivery timeout (15 s): the relay has tried and failed by now.
            _wait_for(
                "the relay to say it waits for the broker",
                lambda: any(e.get("waiting_for") == "broker" for e in _log_events(log)),
                timeout=60,
            )
            assert relay.poll() is None, "the relay exited while the broker was down"
            assert source.position() == remembered, "a row was marked done that the broker never confirmed"

            devstack.up(own_broker)  # a new, empty broker on the same address
            create_topics(  # the same topics on the new broker
                kafka.admin(settings),
                TopicNames(settings.topic_prefix).catalogue(recipients_by_type(load_dir(settings.agreements_dir))),
            )
            _wait_for("the relay to catch up", lambda: source.position() == _last_row(source), timeout=90)
            assert relay.poll() is None and relay.pid == pid
            on_topic = {r.event_id for r in read_events(settings)}
            assert _ids(during) <= on_topic, "rows written while the broker was down never reached it"
            assert "Traceback" not in log.read_text()
        finally:
            relay.terminate()
            relay.wait(30)
