"""Benchmark: reads of a 1,000,000-entry ledger on PostgreSQL (export, prove, subject report).

    python bench/ledger_reads.py [--entries 1000000] [--schema bench_ledger_reads] [--rebuild]

The ledger is built once (ledger.append in batches of 5,000, synthetic entries, no
personal data) in a schema that is kept, so later runs reuse it; ``--rebuild`` drops
it first. Then a checkpoint is made (which stores the Merkle tiles, ledger/tiles.py),
and each read runs in its own subprocess so that its peak memory is its own:

- ``accord ledger export --from 1 --to N``, the real command, writing a file:
  seconds and peak RSS (the child's own rusage, os.wait4);
- that file re-checked offline by ledger.export.verify_export reading it line by line;
- ``prove_entry`` of entries spread over the tree: rows fetched from the database
  (a SQLAlchemy ``after_cursor_execute`` count of rows returned) and seconds;
- ``ledger.report.collect`` for one subject: rows fetched and seconds;
- the baseline, in the same run: one proof made as ledger/proofs.py made it before
  tiles (every leaf hash read, the whole tree built in memory).

Measure only: nothing asserts a time. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, create_engine, text

DEFAULT_URL = os.environ.get("ACCORD_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
BATCH = 5_000
SUBJECTS = 100_000  # about 10 entries per subject at 1M entries
ORIGIN = "accord.bench/ledger"
# A fixed bench signing key (never a real one): SHA-256 of a public phrase.
SEED = hashlib.sha256(b"accord bench key; never use").digest()


def schema_url(schema: str) -> str:
    return f"{DEFAULT_URL}?options={quote(f'-csearch_path={schema}')}"


def engine_for_schema(schema: str, create: bool = False) -> Engine:
    if create:
        admin = create_engine(DEFAULT_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        admin.dispose()
    return create_engine(schema_url(schema))


def subject_of(i: int) -> str:
    return f"local:bench-agency:S{i % SUBJECTS:06d}"


def drafts(start: int, n: int) -> list:
    """Synthetic decisions shaped like the processor's: made-up keys, every tenth with a second subject."""
    from ledger import EntryDraft

    out = []
    for i in range(start, start + n):
        disclosed = i % 4 != 0
        out.append(
            EntryDraft(
                disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench-reads:{i}")),
                event_id=str(uuid.uuid5(uuid.NAMESPACE_OID, f"bench-reads-event:{i // 2}")),
                event_type=("custody", "referral", "natal_care")[i % 3],
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
                subject_key=subject_of(i),
                decided_at=T0 + timedelta(milliseconds=i),
                event_digest=hashlib.sha256(f"bench event {i // 2}".encode()).hexdigest(),
                subjects=(f"local:bench-agency:B{(i // 10) % 50_000:05d}",) if i % 10 == 0 else (),
            )
        )
    return out


def build_ledger(engine: Engine, n: int) -> None:
    """Append entries until the ledger holds ``n`` (resumes a build that was cut short)."""
    from ledger import append, count, init_ledger

    init_ledger(engine)
    have = count(engine)
    while have < n:
        step = min(BATCH, n - have)
        append(engine, drafts(have, step))
        have += step
        if have % 100_000 == 0:
            print(f"  {have:,} entries", file=sys.stderr, flush=True)


def signer():
    from ledger.note import NoteSigner

    return NoteSigner(ORIGIN, SEED)


class RowCounter:
    """Rows the database returned to this process, by statement kind (SQLAlchemy after_cursor_execute)."""

    def __init__(self, engine: Engine) -> None:
        from sqlalchemy import event

        self.rows = 0
        self.tile_rows = 0
        self.statements = 0
        event.listen(engine, "after_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if not statement.lstrip().upper().startswith("SELECT"):
            return
        self.statements += 1
        n = max(cursor.rowcount, 0)
        self.rows += n
        if "ledger_tiles" in statement:
            self.tile_rows += n

    def reset(self) -> tuple[int, int, int]:
        seen = (self.rows, self.tile_rows, self.statements)
        self.rows = self.tile_rows = self.statements = 0
        return seen


# --------------------------------------------------------------------------- measurements (one per subprocess)


def measure_prove(schema: str) -> dict:
    from ledger.checkpoint import latest_checkpoint
    from ledger.proofs import prove_entry

    engine = engine_for_schema(schema)
    checkpoint = latest_checkpoint(engine)
    assert checkpoint is not None, "the scratch ledger is checkpointed when it is built"
    n = checkpoint.tree_size
    counter = RowCounter(engine)
    seqs = sorted({1, 2, 256, 257, 65_536, 65_537, n // 3, n // 2, (2 * n) // 3, n - 300, n - 1, n})
    rows, tile_rows, seconds, lengths = [], [], [], []
    for seq in seqs:
        counter.reset()
        t = time.perf_counter()
        proof = prove_entry(engine, seq)
        seconds.append(time.perf_counter() - t)
        assert proof.verify()
        lengths.append(len(proof.proof))
        r, tr, _ = counter.reset()
        rows.append(r)
        tile_rows.append(tr)
    return {
        "proofs": len(seqs),
        "rows_max": max(rows),
        "rows_min": min(rows),
        "tile_rows_max": max(tile_rows),
        "proof_hashes": max(lengths),
        "s_median": sorted(seconds)[len(seconds) // 2],
        "s_max": max(seconds),
    }


def measure_prove_baseline(schema: str) -> dict:
    """One proof as ledger/proofs.py made it before tiles: every leaf hash read, the whole tree built."""
    from sqlalchemy import select

    from ledger import LedgerEntry, merkle
    from ledger.checkpoint import latest_checkpoint

    engine = engine_for_schema(schema)
    checkpoint = latest_checkpoint(engine)
    assert checkpoint is not None, "the scratch ledger is checkpointed when it is built"
    counter = RowCounter(engine)
    seq = checkpoint.tree_size // 2
    t = time.perf_counter()
    with engine.connect() as conn:
        leaves = [
            bytes(h)
            for h in conn.execute(
                select(LedgerEntry.leaf_hash).where(LedgerEntry.seq <= checkpoint.tree_size).order_by(LedgerEntry.seq)
            ).scalars()
        ]
    tree = merkle.MerkleTree(leaves)
    assert tree.root() == checkpoint.root
    proof = tree.inclusion_proof(seq - 1)
    seconds = time.perf_counter() - t
    assert merkle.verify_inclusion(leaves[seq - 1], seq - 1, checkpoint.tree_size, proof, checkpoint.root)
    rows, _, _ = counter.reset()
    return {"rows": rows, "s": seconds}


def measure_report(schema: str) -> dict:
    from ledger.report import collect, subject_entries

    engine = engine_for_schema(schema)
    counter = RowCounter(engine)
    subject = subject_of(123)
    t = time.perf_counter()
    found = subject_entries(engine, subject)
    s_entries = time.perf_counter() - t
    counter.reset()
    t = time.perf_counter()
    report = collect(engine, subject, {})
    seconds = time.perf_counter() - t
    rows, tile_rows, statements = counter.reset()
    assert all(i.proof is not None for i in report.items)
    return {
        "entries": len(found),
        "shown": len(report.items),
        "rows": rows,
        "tile_rows": tile_rows,
        "statements": statements,
        "s": seconds,
        "s_finding_entries": s_entries,
    }


def measure_file_verifies(schema: str) -> dict:
    """The export file re-checked offline from its lines alone (ledger.export.verify_export, streaming)."""
    from ledger.export import verify_export

    with open(os.environ["BENCH_EXPORT_FILE"], encoding="utf-8", newline="") as lines:
        result = verify_export(lines, signer().verifier, ORIGIN)
    return {"ok": result.ok, "entries": result.entries, "problems": result.problems[:3]}


MEASURES = {
    "prove": measure_prove,
    "prove-baseline": measure_prove_baseline,
    "report": measure_report,
    "verify-file": measure_file_verifies,
}


def run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[str, float, float, int]:
    """(stdout, seconds, peak RSS MB, exit code) of a subprocess, its own rusage via wait4."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return out, time.perf_counter() - t, usage.ru_maxrss / 1024, proc.returncode


def measure(schema: str, kind: str, env: dict[str, str] | None = None) -> dict:
    out, seconds, rss, code = run_child([sys.executable, __file__, "--schema", schema, "--measure", kind], env)
    if code != 0:
        raise SystemExit(f"{kind} failed (exit {code})")
    return {**json.loads(out), "wall_s": seconds, "rss_mb": rss}


def export_all(schema: str, n: int, tmp: Path) -> dict:
    """The real `accord ledger export --from 1 --to N`, to a file in ``tmp``."""
    env = {**os.environ, "ACCORD_LEDGER_URL": schema_url(schema), "ACCORD_STATE_DIR": str(tmp)}
    out = tmp / "export.jsonl"
    _out, seconds, rss, code = run_child(
        [sys.executable, "-m", "accord.cli", "ledger", "export", "--from", "1", "--to", str(n), "--out", str(out)],
        env,
    )
    return {"s": seconds, "rss_mb": rss, "exit": code, "bytes": out.stat().st_size if out.exists() else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--schema", default="bench_ledger_reads")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--measure", choices=sorted(MEASURES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(MEASURES[args.measure](args.schema)))
        return

    from accord.provision import init_database
    from ledger import count
    from ledger.checkpoint import latest_checkpoint, make_checkpoint

    if args.rebuild:
        admin = create_engine(DEFAULT_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{args.schema}" CASCADE'))
        admin.dispose()
    engine = engine_for_schema(args.schema, create=True)
    init_database(engine)  # every table the CLI wants; adds ledger_tiles to a ledger built before it
    if count(engine) < args.entries:
        t = time.perf_counter()
        build_ledger(engine, args.entries)
        print(f"built {args.entries:,} entries in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    n = count(engine)
    made_s = None
    latest = latest_checkpoint(engine)
    if latest is None or latest.tree_size < n:
        t = time.perf_counter()
        make_checkpoint(engine, signer(), ORIGIN)
        made_s = time.perf_counter() - t
    from ledger import tiles

    t = time.perf_counter()
    tiles.ensure(engine, n)  # a ledger whose tiles were not written by its checkpoints: built once, here
    lazy_s = time.perf_counter() - t
    with engine.connect() as conn:
        tile_rows, tile_bytes = conn.execute(
            text("SELECT count(*), coalesce(sum(length(hashes)), 0) FROM ledger_tiles")
        ).one()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        export = export_all(args.schema, n, Path(tmp))
        print(f"export: {export}", file=sys.stderr, flush=True)
        checked = measure(
            args.schema, "verify-file", {**os.environ, "BENCH_EXPORT_FILE": str(Path(tmp) / "export.jsonl")}
        )
        print(f"verify-file: {checked}", file=sys.stderr, flush=True)
    prove = measure(args.schema, "prove")
    print(f"prove: {prove}", file=sys.stderr, flush=True)
    baseline = measure(args.schema, "prove-baseline")
    print(f"baseline: {baseline}", file=sys.stderr, flush=True)
    report = measure(args.schema, "report")
    print(f"report: {report}", file=sys.stderr, flush=True)

    print(
        f"\nLedger of {n:,} entries (schema {args.schema}); tiles: {tile_rows:,} rows, {tile_bytes / 1e6:.1f} MB"
        + (
            f"; checkpoint made in {made_s:.1f} s (re-checks every entry since the last one, writes the tiles)"
            if made_s is not None
            else ""
        )
        + (f"; tiles ensured in {lazy_s:.1f} s" if lazy_s > 1 else "")
    )
    print()
    print("| read | rows fetched | seconds | peak RSS |")
    print("| --- | --- | --- | --- |")
    print(
        f"| `accord ledger export --from 1 --to {n:,}` (exit {export['exit']}, {export['bytes'] / 1e9:.2f} GB jsonl) "
        f"| {n:,} entries + tiles | {export['s']:.1f} | {export['rss_mb']:.0f} MB |"
    )
    print(
        f"| that file re-checked offline, streamed (`verify_export(open(...))`): ok={checked['ok']}, "
        f"{checked['entries']:,} entries | (no database) | {checked['wall_s']:.1f} | {checked['rss_mb']:.0f} MB |"
    )
    print(
        f"| `prove_entry`, {prove['proofs']} entries across the tree | {prove['rows_min']}..{prove['rows_max']} per proof "
        f"({prove['tile_rows_max']} tile rows at most; proofs of up to {prove['proof_hashes']} hashes) | "
        f"{prove['s_median'] * 1000:.1f} ms median, {prove['s_max'] * 1000:.1f} ms max | {prove['rss_mb']:.0f} MB |"
    )
    print(
        f"| baseline: one proof as before tiles (all leaf hashes, whole tree) | {baseline['rows']:,} | "
        f"{baseline['s']:.2f} | {baseline['rss_mb']:.0f} MB |"
    )
    print(
        f"| subject report, {report['shown']} entries shown ({report['entries']} found) | {report['rows']} "
        f"({report['tile_rows']} tile rows, {report['statements']} SELECTs) | {report['s']:.3f} "
        f"(finding the entries: {report['s_finding_entries']:.3f}) | {report['rss_mb']:.0f} MB |"
    )
    print()
    ratio = baseline["s"] / prove["s_median"] if prove["s_median"] else float("inf")
    print(
        f"proof: {ratio:,.0f}x faster than the baseline, {baseline['rows'] / prove['rows_max']:,.0f}x fewer rows"
        + (f"; verify problems: {checked['problems']}" if not checked["ok"] else "")
    )


if __name__ == "__main__":
    main()
