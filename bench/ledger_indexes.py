"""Measurement: what each index on ledger_entries costs a COPY, and what it buys a reader.

    python bench/ledger_indexes.py [--entries 100000] [--batch 1000] [--rounds 2] [--url URL]

For each index design, a fresh table with ledger_entries' columns and only those indexes
gets the same finished rows (numbered, chained and hashed by ledger.append's own row
builder) by binary COPY in ``--batch``-row transactions, as append writes them. Reported
per design: entries/s (wall) and the PostgreSQL backend's CPU per entry (from
/proc/PID/schedstat: on a shared machine the wall time follows everyone's load, the CPU
time much less), the best of ``--rounds`` rounds, designs taken in a different order
each round. Then the readers' look-ups by each lookup column, btree against hash: 1,000
keys with ``= ANY`` (the processor's replay reads a batch's event ids so) and one key.

PostgreSQL hash indexes cannot be UNIQUE, so disclosure_id's uniqueness (invariant I7)
needs a btree (the constraint) or another mechanism. The figures and the choice are in
ledger/tables.py (LedgerEntry).
Measure only: nothing asserts a time.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg
from sqlalchemy import create_engine, text

from bench.ledger_append import DEFAULT_URL, drafts, on_cpu_ns
from ledger import GENESIS_HASH, LedgerEntry, init_ledger
from ledger.append import _COPY_TYPES, _rows, use_c_bytea_dumper

COLUMNS = [c.name for c in LedgerEntry.__table__.columns]
PK = "ALTER TABLE {t} ADD PRIMARY KEY (seq)"
UNIQUE_ID = "ALTER TABLE {t} ADD UNIQUE (disclosure_id)"


def btree(column: str, where: str = "") -> str:
    return f"CREATE INDEX ON {{t}} ({column}){where}"


def hash_(column: str) -> str:
    return f"CREATE INDEX ON {{t}} USING hash ({column})"


NOT_NULL = " WHERE refers_to IS NOT NULL"
BASE = [PK, UNIQUE_ID]
# (name, DDL after CREATE TABLE ... (LIKE ledger_entries)): cumulative, then each lookup
# index alone over PK + UNIQUE in each kind, then whole designs.
DESIGNS: list[tuple[str, list[str]]] = [
    ("no index", []),
    ("PK (seq)", [PK]),
    ("PK + UNIQUE (disclosure_id) btree", BASE),
    (
        'PK + UNIQUE (disclosure_id COLLATE "C") btree (byte order; needs the column so collated)',
        [PK, 'CREATE UNIQUE INDEX ON {t} (disclosure_id COLLATE "C")'],
    ),
    ("PK + UNIQUE + btree event_id", [*BASE, btree("event_id")]),
    ("PK + UNIQUE + hash event_id", [*BASE, hash_("event_id")]),
    ("PK + UNIQUE + btree subject_key", [*BASE, btree("subject_key")]),
    ("PK + UNIQUE + hash subject_key", [*BASE, hash_("subject_key")]),
    ("PK + UNIQUE + btree refers_to", [*BASE, btree("refers_to")]),
    ("PK + UNIQUE + btree refers_to WHERE NOT NULL", [*BASE, btree("refers_to", NOT_NULL)]),
    ("PK + UNIQUE + hash refers_to", [*BASE, hash_("refers_to")]),
    (
        "before: PK + UNIQUE + btree event_id, subject_key, refers_to",
        [*BASE, btree("event_id"), btree("subject_key"), btree("refers_to")],
    ),
    (
        "PK + UNIQUE + hash event_id, subject_key, refers_to",
        [*BASE, hash_("event_id"), hash_("subject_key"), hash_("refers_to")],
    ),
    (
        "PK + UNIQUE + hash event_id + btree subject_key + btree refers_to WHERE NOT NULL",
        [*BASE, hash_("event_id"), btree("subject_key"), btree("refers_to", NOT_NULL)],
    ),
    (
        "PK + UNIQUE + hash event_id, subject_key + btree refers_to WHERE NOT NULL",
        [*BASE, hash_("event_id"), hash_("subject_key"), btree("refers_to", NOT_NULL)],
    ),
    (
        "now: PK + UNIQUE + btree event_id, subject_key + hash refers_to",
        [*BASE, btree("event_id"), btree("subject_key"), hash_("refers_to")],
    ),
    (
        "PK + hash disclosure_id (NOT unique) + hash event_id, subject_key, refers_to",
        [PK, hash_("disclosure_id"), hash_("event_id"), hash_("subject_key"), hash_("refers_to")],
    ),
]


def finished_rows(n: int, batch: int) -> list[tuple[Any, ...]]:
    """ledger.append's rows for the bench's drafts, two in five of them a receipt (refers_to
    set), as when partners acknowledge most disclosures."""
    from dataclasses import replace

    todo = drafts(n)
    todo = [
        replace(d, outcome="RECEIVED", refers_to=todo[i - 1].disclosure_id) if i % 5 in (2, 4) else d
        for i, d in enumerate(todo)
    ]
    rows: list[tuple[Any, ...]] = []
    seq, prev = 0, GENESIS_HASH
    for i in range(0, n, batch):
        chunk: list[tuple[Any, ...]] = []
        _rows(todo[i : i + batch], {}, seq, prev, [], chunk.append)
        rows += chunk
        seq, prev = chunk[-1][0], chunk[-1][21]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--url", default=DEFAULT_URL)
    args = parser.parse_args()
    rows = finished_rows(args.entries, args.batch)

    schema = f"bench_idx_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in args.url else "?"
    engine = create_engine(f"{args.url}{sep}options={quote(f'-csearch_path={schema}')}")
    best: dict[str, tuple[float, float]] = {}
    try:
        init_ledger(engine)  # the table to copy the columns from
        raw = engine.raw_connection()
        conn = raw.driver_connection
        assert isinstance(conn, psycopg.Connection)  # the engine's driver is psycopg 3
        use_c_bytea_dumper(conn)
        pid = conn.info.backend_pid
        order = list(range(len(DESIGNS)))
        for r in range(args.rounds):
            random.Random(r).shuffle(order)
            for k in order:
                name, ddl = DESIGNS[k]
                conn.execute("DROP TABLE IF EXISTS t")
                conn.execute("CREATE TABLE t (LIKE ledger_entries)")
                for statement in ddl:
                    conn.execute(statement.format(t="t"))
                conn.commit()
                cpu0, wall0 = on_cpu_ns(pid), time.perf_counter()
                cursor = conn.cursor()
                for i in range(0, len(rows), args.batch):
                    with cursor.copy(f"COPY t ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                        copy.set_types(_COPY_TYPES)
                        for row in rows[i : i + args.batch]:
                            copy.write_row(row)
                    conn.commit()
                wall, cpu = time.perf_counter() - wall0, (on_cpu_ns(pid) - cpu0) / 1e9
                old = best.get(name)
                best[name] = (min(wall, old[0]), min(cpu, old[1])) if old else (wall, cpu)

        n = args.entries
        print(
            f"{n:,} rows by binary COPY, {args.batch:,} per transaction, best of {args.rounds} rounds; "
            f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
        )
        print()
        print("| indexes | entries/s | PostgreSQL CPU us/entry |")
        print("| --- | ---: | ---: |")
        for name, _ddl in DESIGNS:
            wall, cpu = best[name]
            print(f"| {name} | {n / wall:,.0f} | {cpu / n * 1e6:.1f} |")

        # Readers: the same rows under one index per lookup column, btree then hash; each
        # look-up's PostgreSQL CPU (and wall) time, best of 3 runs of 10 (= ANY) or 200 (=).
        print()
        print("| look-up | btree: PostgreSQL CPU ms (wall ms) | hash: PostgreSQL CPU ms (wall ms) |")
        print("| --- | ---: | ---: |")
        sample = random.Random(7).sample(rows, 1000)
        keys = {
            "disclosure_id": [r[1] for r in sample],
            "event_id": [r[2] for r in sample],
            "subject_key": [r[15] for r in sample],
            "refers_to": [r[17] for r in sample if r[17]],
        }
        timings: dict[tuple[str, str, str], tuple[float, float]] = {}
        for kind in ("btree", "hash"):
            conn.execute("DROP TABLE IF EXISTS t")
            conn.execute("CREATE TABLE t (LIKE ledger_entries)")
            with conn.cursor().copy(f"COPY t ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_COPY_TYPES)
                for row in rows:
                    copy.write_row(row)
            for column in keys:
                conn.execute(f"CREATE INDEX ON t USING {kind} ({column})")
            conn.execute("ANALYZE t")
            conn.commit()
            for column, values in keys.items():
                for shape, stmt, params, reps in (
                    ("= ANY", f"SELECT * FROM t WHERE {column} = ANY(%s)", lambda i, values=values: (values,), 10),
                    (
                        "=",
                        f"SELECT * FROM t WHERE {column} = %s",
                        lambda i, values=values: (values[i % len(values)],),
                        200,
                    ),
                ):
                    conn.execute(stmt, params(0)).fetchall()  # warm
                    runs = []
                    for _ in range(3):
                        cpu, wall = on_cpu_ns(pid), time.perf_counter()
                        for i in range(reps):
                            conn.execute(stmt, params(i)).fetchall()
                        runs.append(((on_cpu_ns(pid) - cpu) / 1e6 / reps, (time.perf_counter() - wall) * 1e3 / reps))
                    timings[(column, kind, shape)] = min(runs)
            conn.rollback()
        for column in keys:
            for shape in ("= ANY", "="):
                many = f"`{column} = ANY` ({len(keys[column])} keys)"
                label = many if shape == "= ANY" else f"`{column} =` (one key)"
                cells = [
                    f"{timings[(column, kind, shape)][0]:.2f} ({timings[(column, kind, shape)][1]:.2f})"
                    for kind in ("btree", "hash")
                ]
                print(f"| {label} | {cells[0]} | {cells[1]} |")
        raw.close()
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
