"""`accord demo` on a broker that already holds another ledger's records still adds up.

A careless user runs the demo from a second clone (or after deleting the state
folder) while the first demo's broker is still up: the partner topics then hold
disclosures the new ledger never recorded. The summary must count this run's own
disclosures, and the demo must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path


def demo(broker: str, prefix: str, state: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "ACCORD_BOOTSTRAP_SERVERS": broker,
        "ACCORD_TOPIC_PREFIX": prefix,
        "ACCORD_STATE_DIR": str(state),
        "ACCORD_LEDGER_URL": "",
        "ACCORD_PROCESSOR_GROUP": f"{prefix}processor",
    }
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "demo", "--events", "80"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_second_ledger_on_the_same_topics_counts_only_its_own(broker: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    first = demo(broker, prefix, tmp_path / "first")
    assert first.returncode == 0, first.stdout[-1500:] + first.stderr[-1500:]
    second = demo(broker, prefix, tmp_path / "second")  # a fresh ledger, the same topics
    assert second.returncode == 0, second.stdout[-1500:] + second.stderr[-1500:]
    pairs = re.findall(r"^  \S+\s+(\d+) / (\d+)$", second.stdout, flags=re.M)
    assert pairs and all(a == b for a, b in pairs), second.stdout
    # The processor's Prometheus counters, scraped before it stops, add up to this run's ledger.
    scraped = re.search(r"^processor /metrics:\s+(\d+) decisions, (\d+) dead letters \(equal to", second.stdout, re.M)
    assert scraped is not None and int(scraped.group(1)) > 0, second.stdout
