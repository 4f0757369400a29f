"""Benchmark: ledger.append against a raw COPY of the same rows into the same indexed table, one run.

    python bench/ledger_append.py [--entries 100000] [--batch 1000] [--url URL]

ledger.append does per batch what the processor does: one transaction, the
advisory lock, the head read, the Avro encoding and SHA-256 hashing of every entry
(entry and leaf hash), its row built as binary COPY bytes, one binary COPY that
UNIQUE(disclosure_id) guards (idempotency: the ledger is asked about ids only when it
refuses one), commit.
The raw side is the best a bulk loader could do with the work already done: a binary
COPY (psycopg set_types, write_row) of the very rows append wrote, read back with
their hashes, into a table made ``LIKE ledger_entries INCLUDING ALL`` (the same
columns, constraints and indexes), in the same batch size, one transaction per batch.
The ratio append / raw is what encoding, hashing, chaining and idempotency cost over
loading finished rows. Shown for scale: a text COPY of the same rows into the same
indexes (what this bench compared with before), a binary COPY into a table with no
index at all; with --bytes also a binary COPY of the same rows made into bytes before
the run (no Python per row: psycopg's write_row costs the raw side about 2 us a row,
which a loader with bytes in hand would not pay; append builds its rows as bytes
itself). That fifth table is off by default: with it the ledger's PostgreSQL CPU per
entry rose by 1.5-2 us against the raw side's in 4 of 4 runs (why was not examined:
perhaps a fifth table outgrowing shared_buffers), which moved the ratio it measures.

To keep the two sides under the same load (the machine is shared), the measured run
interleaves them batch by batch: append batch i to a fresh ledger, then COPY batch i's
finished rows into the raw table, each timed on its own. The finished rows come from a
first, unmeasured append of the same drafts into another fresh ledger (which also warms
the code); the measured ledger must end up with exactly those rows, and must verify.

Like production, it runs as an application role (SELECT and INSERT only) on tables an
owner role created (`accord ledger init`, accord/provision.py setup_database): the URL
given must be a superuser's, which creates both roles and a schema and drops them after.

Each side's CPU is printed beside its rate: this process's (thread_time) and its
PostgreSQL backend's (/proc/PID/schedstat, so on this host only). On a shared machine
entries/s follow everyone else's load; CPU per entry much less. Read the two together:
PostgreSQL inserts and indexes a binary COPY's rows only every 1,000 (copyfrom.c counts
buffered bytes by text line), so in a 1,000-entry transaction the server's work and
append's Python work do not overlap, and the ratio in entries/s comes out near the CPU
ratio; with 4,000 per transaction (three flushes within the COPY) it came out above it.
Measure only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from psycopg import pq
from psycopg._copy_base import format_row_binary  # what copy.write_row runs for each row
from psycopg.adapt import Transformer
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.engine import make_url

from bench import roles
from bus.settings import Settings
from ledger import EntryDraft, LedgerEntry, append, verify
from ledger.append import _COPY_TYPES, use_c_bytea_dumper  # psycopg's binary COPY, as append's fallback does it

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = [c.name for c in LedgerEntry.__table__.columns]


def drafts(n: int, batch: int = 1000) -> list[EntryDraft]:
    """Synthetic decisions shaped like the processor's (no personal data: made-up keys).

    Two recipients' decisions per event (same event id and digest), a quarter withheld,
    every tenth event about a second subject; one decided_at per batch, as the processor,
    the retraction sweep and the receipts recorder each decide a batch at one time.
    """
    out = []
    for i in range(n):
        disclosed = i % 4 != 0
        event = i // 2
        out.append(
            EntryDraft(
                disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}")),
                event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"event:{event}")),
                event_type=("custody", "referral", "natal_care")[event % 3],
                provider="synthetic-provider",
                recipient=f"partner-{i % 6}",
                agreement_id="bench-agreement",
                agreement_version=1,
                purpose="direct_care",
                legal_basis="UK GDPR Art 6(1)(e) and Art 9(2)(h); DPA 2018 Sch 1 Pt 1 para 2",
                outcome="DISCLOSED" if disclosed else "WITHHELD",
                reason=None if disclosed else "consent denied (consent record 7)",
                fields=(
                    "envelope.event_id",
                    "envelope.occurred_at",
                    "subject.nhs_number",
                    "subject.family_name",
                    "booking.date",
                )
                if disclosed
                else (),
                consent_mode="opt_out",
                consent_version=i % 11,
                subject_key=f"bench:{event % 5000:05d}",
                decided_at=T0 + timedelta(seconds=i // batch, milliseconds=7),
                event_digest=hashlib.sha256(f"synthetic event {event}".encode()).hexdigest(),
                subjects=(f"bench:second:{event:06d}",) if event % 10 == 0 else (),
            )
        )
    return out


@dataclass
class Roles:
    owner: Engine
    app: Engine


@contextmanager
def role_database(url: str) -> Iterator[Roles]:
    """A fresh schema owned by a fresh owner role, set up as `accord ledger init` does, and an app role."""
    with roles.role_database(admin_url=url) as db:
        owner, app = create_engine(db.owner_url), create_engine(db.app_url)
        try:
            yield Roles(owner, app)
        finally:
            owner.dispose()
            app.dispose()


def fresh_table(owner: Engine, name: str, like: str, app: Engine) -> None:
    """A table made as the owner from ledger_entries (``like``: INCLUDING ...), INSERT granted to the app."""
    app_role = app.url.username
    with owner.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        conn.execute(text(f"CREATE TABLE {name} (LIKE ledger_entries {like})"))
        conn.execute(text(f'GRANT SELECT, INSERT ON {name} TO "{app_role}"'))


def read_rows(engine: Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(*LedgerEntry.__table__.columns).order_by(LedgerEntry.seq))]


def copy_batch(raw: Any, table: str, rows: list[tuple[Any, ...]] | bytes, binary: bool = True) -> None:
    """COPY finished rows into ``table`` and commit: binary by psycopg's write_row (set_types), or text;
    or, given bytes, the binary COPY data as they are (copy.write)."""
    cursor = raw.driver_connection.cursor()
    if isinstance(rows, bytes):
        with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(rows)
    elif binary:
        use_c_bytea_dumper(raw.driver_connection)
        with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_COPY_TYPES)
            for row in rows:
                copy.write_row(row)
    else:
        with cursor.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
    raw.driver_connection.commit()


def binary_copy_data(rows: list[tuple[Any, ...]], batch: int) -> list[bytes]:
    """Each batch's rows as binary COPY data, made before the run by psycopg's own formatter.

    For scale: a loader handed its rows already as bytes pays for no Python per row at
    all (copy.write of one buffer), the least any COPY from Python could cost.
    """
    tx = Transformer()
    tx.set_dumper_types(_COPY_TYPES, pq.Format.BINARY)
    out = []
    for i in range(0, len(rows), batch):
        data = bytearray(b"PGCOPY\n\xff\r\n\x00" + bytes(8))  # signature, flags, no extension
        for row in rows[i : i + batch]:
            format_row_binary(row, tx, data)
        out.append(bytes(data + b"\xff\xff"))
    return out


def backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar_one()


def on_cpu_ns(pid: int) -> int:
    """Nanoseconds process ``pid`` has run on a CPU (/proc/PID/schedstat; 0 where unreadable)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


@dataclass
class Meter:
    """Wall time, this thread's CPU time and its PostgreSQL backend's CPU time, over many intervals.

    On a shared machine wall time moves with everyone else's load; CPU time much less, so
    the two CPU figures say what each side costs, whatever else was running.
    """

    backend: int
    wall: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @contextmanager
    def measure(self) -> Iterator[None]:
        server, client, wall = on_cpu_ns(self.backend), time.thread_time(), time.perf_counter()
        yield
        self.wall += time.perf_counter() - wall
        self.client_cpu += time.thread_time() - client
        self.server_cpu += (on_cpu_ns(self.backend) - server) / 1e9


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument(
        "--bytes",
        action="store_true",
        help="also COPY the rows as bytes made before the run (a fifth table: it moves the other figures)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help="a PostgreSQL superuser's URL (default ACCORD_LEDGER_URL if PostgreSQL, else the test database)",
    )
    args = parser.parse_args()
    url = args.url or (Settings().ledger_url if Settings().ledger_url.startswith("postgresql") else DEFAULT_URL)

    todo = drafts(args.entries, args.batch)
    batches = [todo[i : i + args.batch] for i in range(0, len(todo), args.batch)]
    # The finished rows, from an unmeasured append of the same drafts into a ledger of its own.
    with role_database(url) as first:
        for batch in batches:
            append(first.app, batch)
        rows = read_rows(first.app)
    assert len(rows) == args.entries
    with role_database(url) as db:
        # The raw tables are made from the measured ledger_entries, as `accord ledger init` made it.
        fresh_table(db.owner, "raw_indexed", "INCLUDING ALL", db.app)
        fresh_table(db.owner, "raw_text", "INCLUDING ALL", db.app)
        fresh_table(db.owner, "raw_plain", "", db.app)
        prebuilt = binary_copy_data(rows, args.batch) if args.bytes else []
        if args.bytes:
            fresh_table(db.owner, "raw_bytes", "INCLUDING ALL", db.app)

        # One connection each, so each side's backend is one process whose CPU time can be read.
        ledger_engine = create_engine(db.app.url, pool_size=1, max_overflow=0)
        raw_engine = create_engine(db.app.url, pool_size=1, max_overflow=0)
        raw = raw_engine.raw_connection()
        raw_pg = raw.driver_connection
        assert isinstance(raw_pg, psycopg.Connection)  # the engine's driver is psycopg 3
        raw_pid = raw_pg.info.backend_pid
        meters = {
            "ledger": Meter(backend_pid(ledger_engine)),
            "indexed": Meter(raw_pid),
            "text": Meter(raw_pid),
            "plain": Meter(raw_pid),
        }
        if args.bytes:
            meters["bytes"] = Meter(raw_pid)
        try:
            for i, batch in enumerate(batches):
                finished = rows[i * args.batch : (i + 1) * args.batch]
                # Alternate which side goes first, so neither always follows the other's commit.
                for side in list(meters) if i % 2 == 0 else list(meters)[::-1]:
                    with meters[side].measure():
                        if side == "ledger":
                            append(ledger_engine, batch)
                        else:
                            copy_batch(raw, f"raw_{side}", prebuilt[i] if side == "bytes" else finished, side != "text")
        finally:
            raw.close()
            ledger_engine.dispose()
            raw_engine.dispose()

        same = read_rows(db.app) == rows
        result = verify(db.app)
        role = db.app.url.username

    n = args.entries
    rate = {name: n / m.wall for name, m in meters.items()}
    ledger, indexed = meters["ledger"], meters["indexed"]
    ratio = rate["ledger"] / rate["indexed"]
    cpu_ratio = (indexed.client_cpu + indexed.server_cpu) / (ledger.client_cpu + ledger.server_cpu)
    labels = {
        "ledger": "`ledger.append` (lock, head, Avro + 2 SHA-256, chain, binary COPY)",
        "indexed": "raw binary COPY of the same finished rows, same indexes",
        "text": "raw text COPY of the same rows, same indexes (the bench's old baseline)",
        "plain": "raw binary COPY of the same rows, no index",
        "bytes": "raw binary COPY of the same rows as bytes made beforehand, same indexes",
    }

    def us(seconds: float) -> str:
        return f"{seconds / n * 1e6:.1f}"

    print(
        f"{n:,} entries, {args.batch:,} per transaction, PostgreSQL ({make_url(url).host}), as app role {role}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"
    )
    for key, m in meters.items():
        print(
            f"{labels[key]:74s} {rate[key]:>8,.0f} entries/s ({m.wall:.2f} s); CPU {us(m.client_cpu + m.server_cpu)} "
            f"us/entry (Python {us(m.client_cpu)}, PostgreSQL {us(m.server_cpu)})"
        )
    print(
        f"ratio ledger.append / raw binary COPY into the same indexed table: {ratio:.3f} in entries/s, "
        f"{cpu_ratio:.3f} in CPU per entry (inverted)"
    )
    print(f"same rows as the first append: {'yes' if same else 'NO'}; {result.describe()}")
    print()
    print(
        f"| {n:,} entries, {args.batch:,} per transaction | entries/s | vs raw binary COPY, same indexes "
        "| CPU us/entry (Python + PostgreSQL) |"
    )
    print("| --- | ---: | ---: | ---: |")
    for key, m in meters.items():
        print(
            f"| {labels[key]} | {rate[key]:,.0f} | {rate[key] / rate['indexed']:.2f} | "
            f"{us(m.client_cpu + m.server_cpu)} ({us(m.client_cpu)} + {us(m.server_cpu)}) |"
        )
    return 0 if result.ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
