"""Benchmark: ledger.append against a raw COPY of the same rows, on PostgreSQL, same run.

    python bench/ledger_append.py [--entries 100000] [--batch 1000] [--url URL]

ledger.append does per batch what the processor does: one transaction, the
advisory lock, the head read, the idempotency look-up, the Avro encoding and
hashing of every entry, then COPY. The raw side COPYs the very rows append
wrote (read back, so the same columns and values, hashes precomputed) into a
plain table (no indexes or triggers) in the same batch size, one transaction per
batch, and again into a table with the ledger's indexes (to tell index cost from
the work append does in Python). The ratio is what the ledger's guarantees cost over
bare COPY on this machine. Both run in a scratch schema that is dropped afterwards. Measure only:
nothing asserts a time.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, select, text  # noqa: E402

from accord.settings import Settings  # noqa: E402
from ledger import EntryDraft, LedgerEntry, append, init_ledger, verify  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def drafts(n: int) -> list[EntryDraft]:
    """Synthetic decisions shaped like the processor's (no personal data: made-up keys)."""
    out = []
    for i in range(n):
        disclosed = i % 4 != 0
        out.append(EntryDraft(
            disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{i}")),
            event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"event:{i // 2}")),
            event_type=("custody", "referral", "natal_care")[i % 3],
            provider="synthetic-provider",
            recipient=f"partner-{i % 6}",
            agreement_id="bench-agreement",
            agreement_version=1,
            purpose="direct_care",
            legal_basis="UK GDPR Art 6(1)(e) and Art 9(2)(h); DPA 2018 Sch 1 Pt 1 para 2",
            outcome="DISCLOSED" if disclosed else "WITHHELD",
            reason=None if disclosed else "consent denied (consent record 7)",
            fields=("envelope.event_id", "envelope.occurred_at", "subject.nhs_number", "subject.family_name",
                    "booking.date") if disclosed else (),
            consent_mode="opt_out",
            consent_version=i % 11,
            subject_key=f"bench:{i % 5000:05d}",
            decided_at=T0 + timedelta(milliseconds=i),
        ))
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default ACCORD_LEDGER_URL if PostgreSQL, else the test database)")
    args = parser.parse_args()
    url = args.url or (Settings().ledger_url if Settings().ledger_url.startswith("postgresql") else DEFAULT_URL)

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in url else "?"
    engine = create_engine(f"{url}{sep}options={quote(f'-csearch_path={schema}')}")
    try:
        init_ledger(engine)
        todo = drafts(args.entries)
        batches = [todo[i : i + args.batch] for i in range(0, len(todo), args.batch)]

        started = time.perf_counter()
        for batch in batches:
            append(engine, batch)
        ledger_s = time.perf_counter() - started

        columns = [c.name for c in LedgerEntry.__table__.columns]
        with engine.connect() as conn:
            rows = [tuple(r) for r in conn.execute(select(*LedgerEntry.__table__.columns).order_by(LedgerEntry.seq))]
            conn.execute(text("CREATE TABLE raw_entries (LIKE ledger_entries)"))  # columns only: a plain table
            # The same, with the ledger's indexes (primary key, unique disclosure_id, subject, refers_to):
            # separates what the indexes cost from what append() does in Python.
            conn.execute(text("CREATE TABLE raw_indexed (LIKE ledger_entries INCLUDING INDEXES)"))
            conn.commit()
        assert len(rows) == args.entries

        def raw_copy(table: str) -> float:
            raw = engine.raw_connection()
            try:
                started = time.perf_counter()
                cursor = raw.driver_connection.cursor()
                for i in range(0, len(rows), args.batch):
                    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                        for row in rows[i : i + args.batch]:
                            copy.write_row(row)
                    raw.driver_connection.commit()
                return time.perf_counter() - started
            finally:
                raw.close()

        raw_s = raw_copy("raw_entries")
        indexed_s = raw_copy("raw_indexed")

        result = verify(engine)
        ledger_rate, raw_rate = args.entries / ledger_s, args.entries / raw_s
        print(f"{args.entries:,} entries, {args.batch:,} per transaction, PostgreSQL ({engine.url.host})")
        print(f"ledger.append (lock, head, idempotency check, Avro + SHA-256 chain, COPY): {ledger_rate:,.0f} entries/s "
              f"({ledger_s:.1f} s)")
        print(f"raw COPY of the same precomputed rows into a plain table:               {raw_rate:,.0f} entries/s "
              f"({raw_s:.1f} s)")
        print(f"raw COPY of the same rows into a table with the ledger's indexes:       "
              f"{args.entries / indexed_s:,.0f} entries/s ({indexed_s:.1f} s)")
        print(f"ratio ledger.append / raw COPY (plain table): {ledger_rate / raw_rate:.3f}")
        print(result.describe())
        return 0 if result.ok else 1
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
