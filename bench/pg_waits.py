"""What the processor's PostgreSQL sessions were doing during a timed window, sampled.

Two workers share one ledger, and appends take the ledger's writer lock: if a second
worker adds little, this tells whether its sessions were waiting for that lock
(``Lock``/``advisory``) rather than working. A thread reads pg_stat_activity for the
app role every ``interval_s`` and counts, per session, one of: waiting on a lock,
active, idle in transaction, idle. The summary is the average number of sessions in
each state (so 0.5 "lock" = half a session's time spent waiting for a lock).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

from sqlalchemy import Engine, text


class PgWaits:
    def __init__(self, admin: Engine, role: str, interval_s: float = 0.02) -> None:
        self.admin = admin
        self.role = role
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.running = False
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._run, name="pg-waits", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        query = text("SELECT state, wait_event_type, wait_event FROM pg_stat_activity WHERE usename = :r")
        with self.admin.connect() as conn:
            while self.running:
                for state, wait_type, wait_event in conn.execute(query, {"r": self.role}):
                    if wait_type == "Lock":
                        self.counts[f"waiting on a lock ({wait_event})"] += 1
                    elif state == "active":
                        self.counts["active"] += 1
                    elif state == "idle in transaction":
                        self.counts["idle in transaction"] += 1
                    else:
                        self.counts["idle"] += 1
                conn.rollback()  # a fresh snapshot of pg_stat_activity next time
                self.samples += 1
                time.sleep(self.interval_s)

    def stop(self) -> str:
        self.running = False
        if self.thread is not None:
            self.thread.join(5)
        if not self.samples:
            return "PostgreSQL sessions: no samples"
        order = sorted(self.counts.items(), key=lambda kv: -kv[1])
        return "app-role sessions on average: " + ", ".join(f"{n / self.samples:.2f} {what}" for what, n in order)
