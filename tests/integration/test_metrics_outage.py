"""/readyz turns "degraded" while the database, or the broker, is cut, and "ready" again after.

PostgreSQL is reached through a TCP proxy the test cuts (tests/faults.py), as in
tests/integration/test_outage.py; the broker is an embedded broker of the test's own,
advertised at a proxy's port so every client goes through it. No event is published
during a cut: the processor must notice the outage, and its end, by itself (its idle
probes and the control plane), so an orchestrator stops routing to it and then takes
it back. Throughout, /healthz stays 200: the process is alive and waits, it needs no
restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agreements import load_dir
from tests import faults
from tests.bus import Bus, make_settings
from tests.conftest import fresh_role_database
from tests.faults import TcpProxy, via
from tests.integration.test_metrics_processor import get
from tests.ports import free_port


def _until(port: int, path: str, status: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        got, body = get(port, path)
        if got == status:
            return body
        assert time.monotonic() < deadline, f"{path} still {got} {body!r}, not {status}"
        time.sleep(0.3)


def _state(port: int) -> str:
    _, text = get(port, "/metrics")
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "accord_processor_state"]
    [current] = [s.labels["state"] for s in family.samples if s.value == 1]
    return current


def _waits(port: int) -> float:
    _, text = get(port, "/metrics")
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "accord_outage_waits"
        for s in f.samples
        if s.name == "accord_outage_waits_total" and s.labels["service"] == "database"
    )


def test_readyz_is_degraded_while_the_database_is_cut_and_ready_after(broker, tmp_path_factory) -> None:
    with fresh_role_database() as db:
        proxy = TcpProxy(urlsplit(db.app_url).port or 5432)
        port = free_port()
        settings = make_settings(broker, via(db.app_url, proxy.port), tmp_path_factory.mktemp("readyz"))
        settings = settings.model_copy(update={"database_timeout_s": 2.0, "health_port": port})
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        assert bus.processor is not None
        try:
            assert _until(port, "/readyz", 200, timeout=60) == "ready\n"
            pid = bus.processor.pid

            proxy.cut()
            body = _until(port, "/readyz", 503, timeout=30)
            assert body.startswith("degraded: waiting for the database"), body
            assert get(port, "/healthz") == (200, "alive\n")
            assert _state(port) == "waiting"
            assert get(port, "/health")[0] == 503  # the JSON check agrees
            time.sleep(3)
            assert get(port, "/readyz")[0] == 503, "ready again while the database is still cut"

            proxy.restore()
            assert _until(port, "/readyz", 200, timeout=60) == "ready\n"
            assert _state(port) == "running"
            assert bus.processor.poll() is None and bus.processor.pid == pid, "the processor restarted"
            assert get(port, "/healthz") == (200, "alive\n")
        finally:
            bus.stop_processor()
            proxy.close()


@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[tuple[str, TcpProxy]]:
    with faults.proxied_broker(tmp_path / "tansu.log") as broker:
        yield broker


def test_readyz_is_degraded_while_the_broker_is_cut_and_ready_after(proxied_broker, tmp_path) -> None:
    bootstrap, proxy = proxied_broker
    with fresh_role_database() as db:
        port = free_port()
        settings = make_settings(bootstrap, db.app_url, tmp_path).model_copy(update={"health_port": port})
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        assert bus.processor is not None
        try:
            assert _until(port, "/readyz", 200, timeout=60) == "ready\n"
            proxy.cut()
            body = _until(port, "/readyz", 503, timeout=30)
            assert body.startswith("degraded: waiting for the broker"), body
            assert get(port, "/healthz") == (200, "alive\n")
            proxy.restore()
            assert _until(port, "/readyz", 200, timeout=90) == "ready\n"
            assert bus.processor.poll() is None, "the processor exited"
        finally:
            bus.stop_processor()
