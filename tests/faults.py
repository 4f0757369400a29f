"""Checks the fault tests share: what partners received, held against the ledger, from outside.

Nothing here asks the processor what it did: it reads the partner topics with a
fresh group and the ledger table as the owner, as an auditor would.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select

from accord.dev import devstack
from accord.sharing.decide import candidate_agreements
from agreements import recipients_by_type
from consumers import Disclosure, Retraction
from ledger import LedgerEntry
from tests.bus import Bus, read_topic
from tests.integration.test_end_to_end import _leaf_paths
from tests.ports import free_port


def ledger_rows(bus: Bus) -> list[Any]:
    with bus.engine.connect() as conn:
        return list(conn.execute(select(LedgerEntry).order_by(LedgerEntry.seq)).all())


def partner_records(bus: Bus) -> dict[str, list[Disclosure | Retraction]]:
    partners = sorted({p for ps in recipients_by_type(bus.agreements).values() for p in ps})
    return {p: bus.everything(p) for p in partners}


def dead_letters(bus: Bus) -> list[dict[str, Any]]:
    """Every dead letter: its headers (decoded) and, under "value", the value."""
    return [
        {**{k: (v or b"").decode() for k, v in headers.items()}, "value": value}
        for headers, value in read_topic(bus.settings, bus.names.dead_letter)
    ]


@dataclass
class Breaks:
    """Each list names what broke an invariant; all empty means it held."""

    undelivered_ledger: list[str]  # I1: a partner record without a matching committed entry
    delivered_withheld: list[str]  # I8: a partner record whose entry says something else
    extra_fields: list[str]  # I4
    duplicates: list[str]  # I7
    undecided: list[str]  # I2

    def total(self) -> int:
        return sum(len(v) for v in vars(self).values())


def audit(bus: Bus, published: dict[str, tuple[str, dict]], agreements: list, today) -> Breaks:
    """Hold every partner record against the ledger, and every published event against its decisions.

    ``published``: event id -> (event type, record) of every valid event sent;
    ``agreements``: the agreements in force for the whole run (the newest versions).
    """
    rows = ledger_rows(bus)
    by_id = {r.disclosure_id: r for r in rows}
    breaks = Breaks([], [], [], [], [])
    for partner, records in partner_records(bus).items():
        for rec in records:
            if isinstance(rec, Retraction):
                entry = by_id.get(rec.retraction_id)
                if entry is None or entry.seq != rec.ledger_seq:
                    breaks.undelivered_ledger.append(f"{partner}: retraction {rec.retraction_id}")
                elif entry.outcome != "RETRACTED" or entry.refers_to != rec.retracts_disclosure_id:
                    breaks.delivered_withheld.append(f"{partner}: retraction {rec.retraction_id} is {entry.outcome}")
                continue
            entry = by_id.get(rec.disclosure_id)
            if entry is None or entry.seq != rec.ledger_seq:
                breaks.undelivered_ledger.append(f"{partner}: disclosure {rec.disclosure_id} seq {rec.ledger_seq}")
                continue
            if entry.outcome != "DISCLOSED" or entry.recipient != partner:
                breaks.delivered_withheld.append(f"{partner}: {rec.disclosure_id} has a {entry.outcome} entry")
            allowed = set(json.loads(entry.fields))
            # An allowed path may name a whole sub-record (subject.address); a null sub-record
            # (no baby yet) is a leaf of the record but the parent of allowed fields.
            extra = {
                p
                for p in _leaf_paths(rec.record) - allowed
                if not any(a.startswith(p + ".") or p.startswith(a + ".") for a in allowed)
            }
            if extra:
                breaks.extra_fields.append(f"{partner}: {rec.disclosure_id} carries {sorted(extra)}")
    decisions: dict[str, list[Any]] = defaultdict(list)
    for r in rows:
        if r.outcome in ("DISCLOSED", "WITHHELD", "NOT_COVERED"):
            decisions[r.event_id].append(r)
    keyed = Counter(
        (r.event_id, r.recipient, r.agreement_id, r.agreement_version) for rs in decisions.values() for r in rs
    )
    breaks.duplicates += [str(k) for k, n in keyed.items() if n > 1]
    for event_id, (event_type, record) in published.items():
        provider = record["envelope"]["source_agency"]
        expected = {
            (recipient, a.id, a.version)
            for a in candidate_agreements(agreements, provider, event_type, today, record=record)
            for recipient in a.recipients
        }
        got = {(r.recipient, r.agreement_id, r.agreement_version) for r in decisions.get(event_id, [])}
        if not expected:
            expected = {("", "", 0)}
        if got != expected:
            breaks.undecided.append(f"{event_id}: expected {sorted(expected)}, ledger has {sorted(got)}")
    return breaks


class TcpProxy:
    """A TCP forwarder the test can cut, to play a database outage the processor cannot tell from a real one.

    ``cut()``: every open connection is closed and new ones are refused (a restart or an
    outage); ``freeze()``: open connections stop carrying bytes but stay open, with no RST
    (a failover or a NAT drop), while new connections work; ``restore()``: all is normal.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.mode = "up"
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket, threading.Event]] = []
        self.accepted = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            flowing = threading.Event()
            flowing.set()
            with self.lock:
                self.pairs.append((client, upstream, flowing))
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, flowing), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, flowing: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                flowing.wait()  # frozen: hold the bytes, say nothing
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.mode = "cut"
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for client, upstream, flowing in pairs:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            flowing.set()

    def freeze(self) -> None:
        """Open connections go silent; connections made from now on work."""
        with self.lock:
            frozen, self.pairs = self.pairs, []
        for _, _, flowing in frozen:
            flowing.clear()
        self._frozen = frozen

    def restore(self) -> None:
        self.mode = "up"

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()
        for client, upstream, flowing in getattr(self, "_frozen", []):
            flowing.set()
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass


def via(url: str, port: int) -> str:
    """A database URL with its host and port replaced by a proxy's on localhost (same user, database, options)."""
    parts = urlsplit(url)
    user = parts.netloc.rsplit("@", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


@contextmanager
def proxied_broker(log: Path) -> Iterator[tuple[str, TcpProxy]]:
    """An embedded broker of the caller's own, advertised at a proxy's port, so every client goes through the
    proxy and cutting it cuts the broker (the session's shared broker stays whole)."""
    listen = free_port()
    proxy = TcpProxy(listen)
    broker = subprocess.Popen(
        [
            devstack.broker_binary(),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{listen}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{proxy.port}",
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    bootstrap = f"127.0.0.1:{proxy.port}"
    try:
        devstack.wait_for_broker(bootstrap)
        yield bootstrap, proxy
    finally:
        proxy.close()
        broker.terminate()
        broker.wait(10)
