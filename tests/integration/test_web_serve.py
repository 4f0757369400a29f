"""``serve(settings)`` (what ``accord serve`` runs) prints its address and serves the pages offline."""

from __future__ import annotations

import os
import socket
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
    made = subprocess.run(
        [sys.executable, "-m", "accord.cli", "ledger", "init"], env=env, capture_output=True, text=True, timeout=60
    )
    assert made.returncode == 0, made.stderr
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


def test_serve_refuses_a_missing_ledger_a_port_in_use_and_a_port_out_of_range_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ACCORD_STATE_DIR": str(tmp_path / "typo"),
        "ACCORD_API_SECRET": SECRET,
        "ACCORD_LEDGER_URL": "",
    }

    def serve(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "accord.cli", "serve"],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    missing = serve(ACCORD_API_PORT=str(free_port()))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1] == (
        f"accord serve: no ledger at {tmp_path / 'typo' / 'ledger.db'}; check ACCORD_STATE_DIR (or "
        "ACCORD_LEDGER_URL), or run `accord ledger init` to make a new one"
    )
    assert not (tmp_path / "typo" / "ledger.db").exists()

    env["ACCORD_STATE_DIR"] = str(tmp_path)
    init = [sys.executable, "-m", "accord.cli", "ledger", "init"]
    assert subprocess.run(init, env=env, capture_output=True, timeout=60).returncode == 0
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = serve(ACCORD_API_PORT=str(port))
    assert busy.returncode == 2 and "Accord is serving" not in busy.stdout
    assert busy.stderr.strip().splitlines()[-1] == (
        f"accord serve: cannot listen on 127.0.0.1:{port} (address already in use); set ACCORD_API_HOST and "
        "ACCORD_API_PORT to a free address of this machine"
    )
    wrong = serve(ACCORD_API_PORT="99999")
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip() == (
        "accord serve: ACCORD_API_PORT: Input should be less than or equal to 65535; fix the environment variable"
    )
