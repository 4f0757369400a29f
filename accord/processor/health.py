"""The processor's health, as a person or an orchestrator asks for it: ``GET /health``.

200 with ``{"state": "running"}`` while it shares; 503 while it starts or waits for
PostgreSQL or the broker (``waiting_for`` names which, ``since`` when the wait began).
A wait is the processor's answer to an outage (I10, docs/architecture.md): it delivers nothing and
resumes by itself, so the check tells an operator why nothing moves.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog

log = structlog.get_logger("accord.health")


class Health:
    """Thread-safe state: ``starting`` -> ``running`` <-> ``waiting``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, str] = {"state": "starting", "since": _now()}

    def running(self) -> None:
        with self._lock:
            if self._state["state"] != "running":
                self._state = {"state": "running", "since": _now()}

    def waiting(self, service: str, error: str) -> None:
        with self._lock:
            if self._state.get("waiting_for") != service:
                self._state = {"state": "waiting", "waiting_for": service, "since": _now()}
            self._state["last_error"] = error

    def snapshot(self) -> dict[str, str]:
        """``state`` and ``since``; while waiting also ``waiting_for`` and ``last_error`` (an error's kind)."""
        with self._lock:
            return dict(self._state)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def serve(health: Health, host: str, port: int) -> ThreadingHTTPServer | None:
    """Answer ``GET /health`` on a daemon thread; None (and a warning) if the port is taken."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server's name
            if self.path.rstrip("/") not in ("/health", ""):
                self.send_error(404)
                return
            state = health.snapshot()
            body = json.dumps(state).encode()
            self.send_response(200 if state["state"] == "running" else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *_args: object) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        log.warning("health_check_off", port=port, error=str(exc))
        return None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    log.info("health_check", url=f"http://{host}:{server.server_address[1]}/health")
    return server
