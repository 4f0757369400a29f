"""The pure parts of metrics and health: states, answers, the collector, lag, probes, route labels.

No broker, no database: the loop gets stand-ins for its consumer and collaborators
(the integration tests, tests/integration/test_metrics_*.py, run the real ones).
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest
from confluent_kafka import KafkaException, TopicPartition
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.exc import OperationalError
from starlette.routing import Mount, Route

from accord.processor.health import Health, readiness_of, serve
from accord.processor.loop import SharingLoop
from accord.processor.metrics import ProcessorMetrics, agreement_label
from accord.web.metrics import route_of
from bus.topics import TopicNames

# -- Health ---------------------------------------------------------------------------


def test_readiness_follows_the_state() -> None:
    health = Health()
    assert health.readiness() == (False, "starting")
    health.running()
    assert health.readiness() == (True, "ready")
    assert health.waiting("database", "OperationalError") is True
    assert health.waiting("database", "InterfaceError") is False  # the same wait goes on
    ok, line = health.readiness()
    assert not ok and line.startswith("degraded: waiting for the database (InterfaceError) since ")
    health.running()
    assert health.readiness() == (True, "ready")
    health.stop_requested = True
    assert health.readiness() == (False, "stopping")
    health.stopped()
    assert health.readiness() == (False, "stopped")
    health.running()  # a batch finishing after the stop does not revive it
    assert health.snapshot()["state"] == "stopped"


def test_readiness_of_a_wait_names_the_service_and_nothing_else() -> None:
    ok, line = readiness_of({"state": "waiting", "waiting_for": "broker", "since": "2026-01-01T00:00:00+00:00"})
    assert (ok, line) == (False, "degraded: waiting for the broker since 2026-01-01T00:00:00+00:00")


def test_liveness_is_lost_when_the_loop_stops_moving_or_stopped() -> None:
    health = Health(stall_after_s=60)
    assert health.liveness() == (True, "alive")
    health.beat_at = time.monotonic() - 61
    alive, line = health.liveness()
    assert not alive and line.startswith("stalled: the processor's loop has not moved for 6")
    health.beat()
    assert health.liveness() == (True, "alive")
    health.stopped()
    assert health.liveness() == (False, "stopped")


def _get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def test_the_health_port_answers_each_path() -> None:
    health = Health()
    metrics = ProcessorMetrics(health)
    server = serve(health, "127.0.0.1", 0, metrics.registry)
    assert server is not None
    port = server.server_address[1]
    try:
        status, kind, body = _get(port, "/health")
        assert (status, kind, json.loads(body)["state"]) == (503, "application/json", "starting")
        assert _get(port, "/readyz")[::2] == (503, "starting\n")
        assert _get(port, "/healthz")[::2] == (200, "alive\n")
        health.running()
        assert _get(port, "/health/")[0] == 200
        assert _get(port, "/readyz")[::2] == (200, "ready\n")
        status, kind, body = _get(port, "/metrics")
        assert status == 200 and kind.startswith("text/plain")
        assert 'accord_processor_state{state="running"} 1.0' in body
        assert _get(port, "/metrics/other")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


def test_without_a_registry_there_is_no_metrics_path() -> None:
    server = serve(Health(), "127.0.0.1", 0)
    assert server is not None
    try:
        assert _get(server.server_address[1], "/metrics")[0] == 404
    finally:
        server.shutdown()
        server.server_close()


# -- the metrics ----------------------------------------------------------------------


def _samples(metrics: ProcessorMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_counters_follow_prometheus_names_and_sum_per_batch() -> None:
    m = ProcessorMetrics()
    m.decided(Counter({("DISCLOSED", "cps", "custody-to-prosecution", 2): 3, ("NOT_COVERED", "", "", 0): 1}))
    m.decided(Counter({("DISCLOSED", "cps", "custody-to-prosecution", 2): 2}))
    m.dead_lettered(["InvalidEvent", "InvalidEvent", "NotSingleObject"])
    m.consumed({"p.events.custody.v1": 4, "p.accord.receipts": 9}, {"p.events.custody.v1": "custody"})
    s = _samples(m)
    key = (("agreement", "custody-to-prosecution@v2"), ("outcome", "DISCLOSED"), ("recipient", "cps"))
    assert s[("accord_decisions_total", key)] == 5
    assert s[("accord_decisions_total", (("agreement", ""), ("outcome", "NOT_COVERED"), ("recipient", "")))] == 1
    assert s[("accord_dead_letters_total", (("reason", "InvalidEvent"),))] == 2
    assert s[("accord_events_consumed_total", (("event_type", "custody"),))] == 4
    assert not [k for k in s if k[0] == "accord_events_consumed_total" and k[1] != (("event_type", "custody"),)]


def test_two_processors_in_one_process_count_apart() -> None:
    a, b = ProcessorMetrics(), ProcessorMetrics()
    a.dead_lettered(["TooLarge"])
    assert ("accord_dead_letters_total", (("reason", "TooLarge"),)) not in _samples(b)


def test_agreement_label() -> None:
    assert agreement_label("natal-care-to-health-visiting", 3) == "natal-care-to-health-visiting@v3"
    assert agreement_label("", 0) == ""


def test_the_control_plane_is_exported_only_by_the_lease_holder() -> None:
    m = ProcessorMetrics()
    cp = m.control
    cp.sweep_at, cp.sweep_lag_s, cp.sweep_pending = time.time(), 12.5, {"consent": 3, "notices": 0}
    cp.checkpoint_pending, cp.checkpoint_size, cp.checkpoint_at = 7, 100, time.time() - 30
    s = _samples(m)
    assert s[("accord_control_plane_leader", ())] == 1
    assert s[("accord_retraction_sweep_lag_seconds", ())] == 12.5
    assert s[("accord_retraction_sweep_pending", (("step", "consent"),))] == 3
    assert (s[("accord_checkpoint_tree_size", ())], s[("accord_checkpoint_pending_entries", ())]) == (100, 7)
    assert 29 <= s[("accord_checkpoint_age_seconds", ())] < 3600
    cp.leader = False
    s = _samples(m)
    assert s[("accord_control_plane_leader", ())] == 0
    assert not [k for k in s if k[0].startswith(("accord_retraction_sweep", "accord_checkpoint"))]


def test_checkpoint_age_is_nan_before_the_first_checkpoint() -> None:
    m = ProcessorMetrics()
    m.control.checkpoint_pending = 5
    assert math.isnan(_samples(m)[("accord_checkpoint_age_seconds", ())])


# -- the loop's lag and probes, on stand-ins ----------------------------------------------


class FakeConsumer:
    def __init__(self, positions: dict[tuple[str, int], int], highs: dict[tuple[str, int], int]) -> None:
        self.positions, self.highs = positions, highs
        self.raise_on_position = False

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.positions]

    def position(self, parts: list[TopicPartition]) -> list[TopicPartition]:
        if self.raise_on_position:
            raise KafkaException("broker down")
        return [TopicPartition(tp.topic, tp.partition, self.positions[(tp.topic, tp.partition)]) for tp in parts]

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool = False) -> tuple[int, int]:
        assert cached, "lag must never ask ListOffsets"
        return 0, self.highs.get((tp.topic, tp.partition), -1001)


def _loop(consumer: Any, health: Health | None = None, **kw: Any) -> SharingLoop:
    return SharingLoop(consumer, None, None, TopicNames("p."), health or Health(), **kw)  # type: ignore[arg-type]


def test_lag_is_the_fetch_high_watermark_minus_the_position() -> None:
    consumer = FakeConsumer(
        {("a", 0): 10, ("a", 1): -1001, ("a", 2): -1001, ("a", 3): 5},
        {("a", 0): 25, ("a", 1): 40, ("a", 3): -1001},
    )
    loop = _loop(consumer, lag_interval_s=0)
    loop._committed[("a", 1)] = 38  # nothing read yet since this loop committed 38
    loop._refresh_lag()
    # a[2]: no position, nothing committed; a[3]: no fetch answered yet. Both left out.
    assert loop.metrics.lag == {("a", 0): 15, ("a", 1): 2}
    consumer.positions[("a", 0)] = 30  # read past a stale watermark: never negative
    loop._refresh_lag()
    assert loop.metrics.lag[("a", 0)] == 0
    consumer.raise_on_position = True
    loop._refresh_lag()  # the broker away: the last figures stay
    assert loop.metrics.lag[("a", 1)] == 2


def test_probes_turn_waiting_and_back_only_when_nothing_failed_meanwhile() -> None:
    health = Health()
    health.running()
    down = {"database": True}

    def database() -> None:
        if down["database"]:
            raise OperationalError("SELECT 1", {}, Exception("refused"))

    loop = _loop(FakeConsumer({}, {}), health, probes={"database": database, "broker": lambda: None})
    loop._probe()
    assert health.snapshot()["waiting_for"] == "database"
    down["database"] = False
    loop._probe()  # answers, but a failure was reported within the probe interval
    assert health.snapshot()["state"] == "waiting"
    health.failed_at -= loop.probe_interval_s
    loop._probe()
    assert health.readiness() == (True, "ready")


@pytest.mark.parametrize(
    ("path", "method", "expected"),
    [("/v1/me/consents", "GET", "/v1/me/consents"), ("/static/x.css", "GET", "/static"), ("/nope", "GET", "unmatched")],
)
def test_route_labels_are_templates_never_paths(path: str, method: str, expected: str) -> None:
    async def endpoint(_request: object) -> None: ...

    async def files(_scope: object, _receive: object, _send: object) -> None: ...

    routes = [Route("/v1/me/consents", endpoint), Route("/v1/items/{item_id}", endpoint), Mount("/static", files)]
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    assert route_of(scope, routes) == expected
    item = {"type": "http", "path": "/v1/items/9434765919", "method": "GET", "root_path": ""}
    assert route_of(item, routes) == "/v1/items/{item_id}"


def test_a_prober_that_hangs_up_is_no_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import struct

    server = serve(Health(), "127.0.0.1", 0, ProcessorMetrics().registry)
    assert server is not None
    port = server.server_address[1]
    try:
        for path in ("/health", "/metrics"):
            for _ in range(5):  # the request sent, then a reset instead of reading the answer
                probe = socket.create_connection(("127.0.0.1", port))
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                probe.sendall(f"GET {path} HTTP/1.1\r\nHost: accord\r\n\r\n".encode())
                probe.close()
        assert _get(port, "/healthz")[0] == 200  # still answering
    finally:
        server.shutdown()
        server.server_close()
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err


def test_a_partition_that_moved_away_and_back_has_no_stale_lag() -> None:
    consumer = FakeConsumer({("a", 0): -1001}, {("a", 0): 500})
    loop = _loop(consumer, lag_interval_s=0)
    loop._committed[("a", 0)] = 100  # committed by this loop; then the partition went to another worker
    loop.on_revoke(consumer, [TopicPartition("a", 0)])  # type: ignore[arg-type]
    loop.on_assign(consumer, [TopicPartition("a", 0)])  # type: ignore[arg-type]
    loop._refresh_lag()
    assert loop.metrics.lag == {}  # not 400: the other worker may have processed them
