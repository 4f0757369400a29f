"""`ACCORD_LOG_FORMAT=json accord run processor` prints only JSON lines: at start, through outages, at shutdown.

A real processor (subprocess) on an owner/app-role PostgreSQL schema and its own embedded
broker, both reached through TCP proxies the test cuts: the database for a few seconds,
then the broker (librdkafka complains then, in its own words, which must arrive as JSON
too). Every line of stdout and stderr must parse as a JSON object with timestamp, level,
event and logger; and the lines must include librdkafka's and the processor's waits, so
the test cannot pass by the processor saying nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from accord.dev.drain import wait_for_group
from agreements import load_dir
from producers import Publisher
from producers.synthetic import build_scenario
from tests import faults
from tests.bus import Bus, make_settings, settings_env
from tests.conftest import fresh_role_database
from tests.faults import TcpProxy, via
from tests.ports import free_port

KEYS = {"timestamp", "level", "event", "logger"}


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    with faults.proxied_broker(tmp_path / "tansu.log") as broker:
        yield broker


def _publish(settings: Any, n: int) -> dict[tuple[str, int], int]:
    scenario = build_scenario(n * 8, seed=random.randrange(1 << 30), n_malformed=0)
    publisher = Publisher(settings)
    for event in [e for e in scenario.events if e.event_type == "referral"][:n]:
        publisher.publish("referral", event.record)
    report = publisher.flush()
    assert not report.failed
    return report.end_offsets


def _lines(path: Path) -> list[dict[str, Any]]:
    parsed = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line[:300]!r}")
        assert isinstance(obj, dict) and set(obj) >= KEYS, f"{path.name}:{number}: {line[:300]}"
        parsed.append(obj)
    return parsed


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])  # at DEBUG the libraries say the most
def test_the_processor_prints_only_json_through_outages_and_shutdown(
    proxied_broker: tuple[str, TcpProxy], tmp_path: Path, level: str
) -> None:
    bootstrap, broker_proxy = proxied_broker
    with fresh_role_database() as db:
        db_proxy = TcpProxy(urlsplit(db.app_url).port or 5432)
        settings = make_settings(bootstrap, via(db.app_url, db_proxy.port), tmp_path)
        settings = settings.model_copy(update={"database_timeout_s": 2.0})
        Bus(settings, db.owner, load_dir(settings.agreements_dir)).create_topics()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        env.update({**settings_env(settings), "ACCORD_LOG_FORMAT": "json", "ACCORD_LOG_LEVEL": level})
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        proc = subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            env=env,
            stdout=out.open("wb"),
            stderr=err.open("wb"),
        )
        try:
            wait_for_group(settings, settings.processor_group, _publish(settings, 5), timeout=60)

            # 1. the database: every connection cut, new ones refused, for a few seconds.
            db_proxy.cut()
            ends = _publish(settings, 5)
            time.sleep(5)
            db_proxy.restore()
            wait_for_group(settings, settings.processor_group, ends, timeout=60)

            # 2. the broker, the same way: librdkafka's clients lose their connections.
            broker_proxy.cut()
            time.sleep(5)
            broker_proxy.restore()
            wait_for_group(settings, settings.processor_group, _publish(settings, 5), timeout=90)
            assert proc.poll() is None, err.read_text()[-2000:]
        finally:
            # 3. shutdown, as an orchestrator asks for it.
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            db_proxy.close()
    lines = _lines(out) + _lines(err)
    events = [(line["logger"], line["event"]) for line in lines]
    assert ("accord.processor", "processor_stopped") in events, events[-20:]
    waits = {line.get("service") for line in lines if line["event"] == "waiting"}
    assert "database" in waits, events
    kafka_lines = [line for line in lines if line["logger"] == "librdkafka"]
    assert kafka_lines, "no librdkafka line while its broker was cut: the test would prove nothing about them"
    assert all({"facility", "client"} <= set(line) for line in kafka_lines), kafka_lines[:3]
    assert code == 0, err.read_text()[-2000:]


def test_a_processor_that_refuses_to_start_says_so_in_json_too(broker: str, tmp_path: Path) -> None:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        env.update({**settings_env(settings), "ACCORD_LOG_FORMAT": "json", "ACCORD_KAFKA_GROUP_ID": "mine"})
        done = subprocess.run(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    (tmp_path / "stdout").write_text(done.stdout)
    (tmp_path / "stderr").write_text(done.stderr)
    lines = _lines(tmp_path / "stdout") + _lines(tmp_path / "stderr")
    assert any("ACCORD_KAFKA_GROUP_ID" in str(line.get("message", "")) for line in lines), lines


def test_a_health_probe_that_hangs_up_leaves_no_plain_line(broker: str, tmp_path: Path) -> None:
    import socket
    import struct
    import urllib.request

    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path)
        settings = settings.model_copy(update={"health_port": free_port()})
        Bus(settings, db.owner, load_dir(settings.agreements_dir)).create_topics()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        env.update({**settings_env(settings), "ACCORD_LOG_FORMAT": "json"})
        out, err = tmp_path / "stdout", tmp_path / "stderr"
        proc = subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            env=env,
            stdout=out.open("wb"),
            stderr=err.open("wb"),
        )
        try:
            deadline = time.monotonic() + 30
            while True:  # until the health check answers
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{settings.health_port}/health", timeout=1).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline and proc.poll() is None, err.read_text()[-2000:]
                    time.sleep(0.2)
            for _ in range(10):  # a prober that gives up: its request sent, then a reset
                probe = socket.create_connection(("127.0.0.1", settings.health_port))
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                probe.sendall(b"GET /health HTTP/1.1\r\nHost: accord\r\n\r\n")
                probe.close()
            time.sleep(1)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    _lines(out)
    _lines(err)
