"""The processor's health, as a person, an orchestrator or Prometheus asks for it.

The health port (``ACCORD_HEALTH_PORT``; worker i of ``--workers N`` listens on port + i)
answers:

- ``GET /health``: 200 with ``{"state": "running"}`` while it shares; 503 while it starts
  or waits for PostgreSQL or the broker (``waiting_for`` names which, ``since`` when the
  wait began);
- ``GET /healthz`` (liveness): 200 ``alive`` while the processor's loop runs and has
  passed through its loop lately; 503 ``stalled`` or ``stopped`` otherwise, so an
  orchestrator restarts a process that hangs;
- ``GET /readyz`` (readiness): 200 ``ready`` when the database and the broker answer and
  the agreements feed has been read to its end; 503 ``degraded: waiting for the database
  ...`` while it waits out an outage, 503 ``starting`` before its first catch-up, 503
  ``stopping`` once told to stop;
- ``GET /metrics``: the processor's Prometheus metrics (accord/processor/metrics.py,
  docs/metrics.md).

A wait is the processor's answer to an outage (I10, docs/architecture.md): it delivers
nothing and resumes by itself, so the checks tell an operator why nothing moves.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = structlog.get_logger("accord.health")

# A loop that has not passed through a pass (or a wait's slice) for this long is stalled:
# a batch's flush waits at most 30 s and every control-plane step is bounded.
STALL_AFTER_S = 120.0


class Health:
    """Thread-safe state: ``starting`` -> ``running`` <-> ``waiting`` -> ``stopped``.

    The loop also ``beat``s on every pass, which is what ``/healthz`` reads; and the time
    of the last failure it reported, which keeps a readiness probe from calling the
    processor ready while some of its work still fails.
    """

    def __init__(self, stall_after_s: float = STALL_AFTER_S) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, str] = {"state": "starting", "since": _now()}
        self.stall_after_s = stall_after_s
        self.beat_at = time.monotonic()
        self.failed_at = 0.0  # monotonic time of the last waiting(); 0.0: never
        self.stop_requested = False  # set from a signal handler: a plain attribute, no lock

    def running(self) -> None:
        with self._lock:
            if self._state["state"] == "stopped":
                return
            if self._state["state"] != "running":
                self._state = {"state": "running", "since": _now()}

    def waiting(self, service: str, error: str) -> bool:
        """Report a wait for ``service``; True when it begins one (not already waiting for it)."""
        with self._lock:
            self.failed_at = time.monotonic()
            if self._state["state"] == "stopped":
                return False
            began = self._state.get("waiting_for") != service
            if began:
                self._state = {"state": "waiting", "waiting_for": service, "since": _now()}
            self._state["last_error"] = error
            return began

    def stopped(self) -> None:
        with self._lock:
            self._state = {"state": "stopped", "since": _now()}

    def beat(self) -> None:
        """The loop is alive (one attribute store: called on every pass)."""
        self.beat_at = time.monotonic()

    def snapshot(self) -> dict[str, str]:
        """``state`` and ``since``; while waiting also ``waiting_for`` and ``last_error`` (an error's kind)."""
        with self._lock:
            return dict(self._state)

    def liveness(self) -> tuple[bool, str]:
        """(alive, the line ``/healthz`` answers)."""
        if self.snapshot()["state"] == "stopped":
            return False, "stopped"
        quiet = time.monotonic() - self.beat_at
        if quiet > self.stall_after_s:
            return False, f"stalled: the processor's loop has not moved for {quiet:.0f} s"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        """(ready, the line ``/readyz`` answers): see the module docstring."""
        if self.stop_requested and self.snapshot()["state"] != "stopped":
            return False, "stopping"
        return readiness_of(self.snapshot())


def readiness_of(state: dict[str, str]) -> tuple[bool, str]:
    """``/readyz``'s answer for a :meth:`Health.snapshot`."""
    name = state["state"]
    if name == "running":
        return True, "ready"
    if name == "waiting":
        service = state.get("waiting_for", "?")
        the = "the " if service in ("database", "broker") else ""
        error = state.get("last_error")
        return False, f"degraded: waiting for {the}{service}" + (f" ({error})" if error else "") + (
            f" since {state['since']}"
        )
    return False, name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Server(ThreadingHTTPServer):
    """The health port's server; a request that fails (a prober hanging up) is one log line, not a traceback."""

    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # socketserver's default prints a traceback to stderr, outside the JSON logs.
        exc = sys.exc_info()[1]
        log.warning("health_request_failed", error=type(exc).__name__ if exc else "unknown")


def serve(
    health: Health, host: str, port: int, registry: CollectorRegistry | None = None
) -> ThreadingHTTPServer | None:
    """Answer the health port's paths (module docstring) on a daemon thread; None (and a warning) if the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            path = self.path.split("?", 1)[0].rstrip("/")
            if path in ("/health", ""):
                state = health.snapshot()
                self._reply(200 if state["state"] == "running" else 503, json.dumps(state).encode(), "application/json")
            elif path == "/healthz":
                ok, line = health.liveness()
                self._reply(200 if ok else 503, line.encode() + b"\n", "text/plain; charset=utf-8")
            elif path == "/readyz":
                ok, line = health.readiness()
                self._reply(200 if ok else 503, line.encode() + b"\n", "text/plain; charset=utf-8")
            elif path == "/metrics" and registry is not None:
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self.send_error(404)

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *_args: object) -> None:
            pass

    try:
        server = _Server((host, port), Handler)
    except OSError as exc:
        log.warning("health_check_off", port=port, error=str(exc))
        return None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health_check", url=f"http://{host}:{server.server_address[1]}/health")
    return server
