"""``serve(settings)`` (what ``accord serve`` runs) prints its address and serves the pages offline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bus.settings import PACKAGE_ROOT
from tests.ports import free_port

SECRET = "test-secret-for-the-web-serve-0123456789"


def test_serve_prints_its_address_and_answers(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ACCORD_STATE_DIR": str(tmp_path),
        "ACCORD_API_SECRET": SECRET,
        "ACCORD_API_PORT": str(port),
        "ACCORD_LEDGER_URL": "",
        "ACCORD_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from accord.web.app import serve; from bus.settings import get_settings; serve(get_settings())",
        ],
        env=env,
        cwd=PACKAGE_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.startswith("Accord is serving") for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert lines[-1].strip() == (
            f"Accord is serving at http://127.0.0.1:{port}/ (dashboard: /dashboard, citizens: /me)"
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/docs", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert resp.status_code == 200 and "server" not in resp.headers
        assert httpx.get(f"http://127.0.0.1:{port}/dashboard", timeout=2).status_code == 401
    finally:
        proc.terminate()
        proc.wait(timeout=20)
