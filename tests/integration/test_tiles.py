"""The stored tiles (ledger/tiles.py): proofs equal the full-tree ones, read O(log N) rows, survive damage.

Proofs made from tiles are compared with ledger.merkle.MerkleTree (the whole tree in
memory) for every index at many sizes, including tile boundaries, and checked with the
independent RFC 9162 verifier of tests/unit/test_merkle.py. Tiles written at one size are
read at older sizes (prefixes of wider tiles), as proofs against old checkpoints do.
On PostgreSQL: a 100,000-entry ledger is proved and exported while the rows the
database returns are counted (a SQLAlchemy after_cursor_execute listener), and tiles
are damaged, removed or built lazily to see each detected or recovered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import tracemalloc
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, Table, create_engine, event, text

from ledger import EntryDraft, append, entries, init_ledger, merkle
from ledger.checkpoint import checkpoint_at, latest_checkpoint, make_checkpoint
from ledger.export import ExportRows, export_rows, render_jsonl, verify_export
from ledger.note import NoteSigner
from ledger.proofs import LedgerMismatch, prove_consistency, prove_entries, prove_entry
from ledger.report import collect
from ledger.tiles import WIDTH, LedgerTile, TileBuilder, TilesMismatch, TileTree, ensure, stored_end
from tests.conftest import fresh_schema
from tests.integration.test_checkpoints import rehash_from
from tests.integration.test_ledger import tamper
from tests.unit.test_merkle import ref_verify_consistency, ref_verify_inclusion

ORIGIN = "accord.test/tiles"
SIGNER = NoteSigner(ORIGIN, hashlib.sha256(b"tiles test key; never use").digest())


def hashes(n: int) -> list[bytes]:
    return [merkle.leaf_hash(f"leaf {i}".encode()) for i in range(n)]


@pytest.fixture
def tile_store() -> Iterator[Engine]:
    """An in-memory SQLite database with only the tiles table (the pure tile arithmetic)."""
    engine = create_engine("sqlite://")
    table = LedgerTile.__table__
    assert isinstance(table, Table)
    table.create(engine)
    yield engine
    engine.dispose()


def write_at_sizes(engine: Engine, leaves: list[bytes], sizes: list[int]) -> None:
    """Tiles as checkpoints at each size would leave them: one builder, the open tiles written at each size."""
    builder = TileBuilder()
    with engine.connect() as conn:
        for size in sorted(sizes):
            while builder.size < size:
                builder.append(leaves[builder.size])
                builder.flush(conn)
            builder.flush(conn, final=True)
        conn.commit()


# --- proofs from tiles equal the full-tree proofs ---------------------------------------------


def test_every_proof_at_every_small_size(tile_store: Engine) -> None:
    """Sizes 0..600 (tile boundaries 255/256/257 and 511/512/513 included), every index, every old size."""
    leaves = hashes(600)
    sizes = list(range(0, 601))
    write_at_sizes(tile_store, leaves, sizes)
    with tile_store.connect() as conn:
        for n in sizes:
            full = merkle.MerkleTree(leaves[:n])
            tree = TileTree.open(conn, n, full.root())
            for m in range(n):
                proof = tree.inclusion_proof(m)
                assert proof == full.inclusion_proof(m), (n, m)
                assert tree.leaf_hash(m) == leaves[m]
            olds = range(n + 1) if n <= 130 or n in (255, 256, 257, 600) else random.Random(n).sample(range(n + 1), 12)
            for old in olds:
                assert tree.consistency_proof(old) == merkle.consistency_proof(old, leaves[:n]), (n, old)
            assert not tree.rebuilt  # everything came from the store


@pytest.mark.parametrize("n", [255, 256, 257, 511, 512, 600])
def test_the_independent_rfc_checker_accepts_them(tile_store: Engine, n: int) -> None:
    leaves = [f"leaf {i}".encode() for i in range(n)]
    leaf_hashes = [merkle.leaf_hash(x) for x in leaves]
    write_at_sizes(tile_store, leaf_hashes, [n])
    root = merkle.root(leaf_hashes)
    with tile_store.connect() as conn:
        tree = TileTree.open(conn, n, root)
        for m in range(n):
            assert ref_verify_inclusion(leaf_hashes[m], m, n, tree.inclusion_proof(m), root)
        for old in range(1, n):
            proof = tree.consistency_proof(old)
            assert ref_verify_consistency(old, n, merkle.root(leaf_hashes[:old]), root, proof)


def test_around_the_second_level_boundary(tile_store: Engine) -> None:
    """65,535 / 65,536 / 65,537 leaves (a level-1 tile closes at 65,536), read after the tree grew past them."""
    leaves = hashes(66_000)
    sizes = [65_535, 65_536, 65_537, 66_000]
    write_at_sizes(tile_store, leaves, sizes)
    rng = random.Random(65_536)
    with tile_store.connect() as conn:
        for n in sizes:
            full = merkle.MerkleTree(leaves[:n])
            tree = TileTree.open(conn, n, full.root())
            for m in [0, 1, 255, 256, 65_535 % n, n - 257, n - 2, n - 1, *rng.sample(range(n), 60)]:
                assert tree.inclusion_proof(m) == full.inclusion_proof(m), (n, m)
            for old in [1, 255, 256, 257, 65_535, 65_536, n - 1, *rng.sample(range(1, n), 4)]:
                if old <= n:
                    assert tree.consistency_proof(old) == merkle.consistency_proof(old, leaves[:n]), (n, old)
            assert not tree.rebuilt


def test_builder_state_is_what_was_stored(tile_store: Engine) -> None:
    """Resuming from the stored edge tiles continues the same tree; a wrong root refuses to resume."""
    leaves = hashes(1_000)
    write_at_sizes(tile_store, leaves, [700])
    with tile_store.connect() as conn:
        assert stored_end(conn) == 700
        assert TileBuilder.resume(conn, 700, merkle.root(leaves[:699])) is None
        builder = TileBuilder.resume(conn, 700, merkle.root(leaves[:700]))
        assert builder is not None
        builder.extend(leaves[700:])
        assert builder.root() == merkle.root(leaves)
        builder.flush(conn, final=True)
        conn.commit()
        assert stored_end(conn) == 1_000
        widths = conn.execute(text("SELECT level, tile_index, width FROM ledger_tiles ORDER BY 1, 2, 3")).all()
    # Full level-0 tiles 0..2, the open ones at 700 (tile 2, 188 wide) and 1,000 (tile 3, 232 wide),
    # and level 1's open tile at each size (2 and 3 wide).
    assert [tuple(w) for w in widths] == [
        (0, 0, 256),
        (0, 1, 256),
        (0, 2, 188),
        (0, 2, 256),
        (0, 3, 232),
        (1, 0, 2),
        (1, 0, 3),
    ]


# --- on a real ledger ----------------------------------------------------------------------------


def draft(i: int) -> EntryDraft:
    """Synthetic entries with made-up local subject keys (about 20 per subject at 100k)."""
    return EntryDraft(
        disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"tiles:{i}")),
        event_id=f"evt-{i}",
        event_type="custody",
        provider="synthetic-provider",
        recipient=f"partner-{i % 3}",
        agreement_id="agr-synthetic",
        agreement_version=1,
        purpose="direct_care",
        legal_basis="synthetic basis",
        outcome="DISCLOSED",
        reason=None,
        fields=("subject.id",),
        consent_mode="opt_out",
        consent_version=0,
        subject_key=f"local:test-agency:S{i % 5_000:05d}",
        decided_at=datetime(2026, 1, 1, tzinfo=UTC) + timedelta(milliseconds=i),
        event_digest=hashlib.sha256(f"tiles event {i}".encode()).hexdigest(),
        subjects=(f"local:test-agency:B{i // 10 % 1_000:03d}",) if i % 10 == 0 else (),  # 10 entries each at 100k
    )


def grow(engine: Engine, upto: int) -> None:
    have = latest_size(engine)
    for start in range(have + 1, upto + 1, 5_000):
        append(engine, [draft(i) for i in range(start, min(start + 5_000, upto + 1))])


def latest_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT coalesce(max(seq), 0) FROM ledger_entries")).scalar_one()


@dataclass
class Rows:
    """Rows the database returned, counted from the outside (every SELECT's rowcount)."""

    total: int = 0
    tiles: int = 0

    def reset(self) -> Rows:
        seen = Rows(self.total, self.tiles)
        self.total = self.tiles = 0
        return seen


def count_rows(engine: Engine) -> Rows:
    rows = Rows()

    @event.listens_for(engine, "after_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            rows.total += max(cursor.rowcount, 0)
            rows.tiles += max(cursor.rowcount, 0) if "ledger_tiles" in statement else 0

    return rows


@pytest.fixture(scope="module")
def big() -> Iterator[Engine]:
    """100,000 entries, checkpoints at 70,000 and 100,000 (tiles written by make_checkpoint)."""
    with fresh_schema() as (engine, _url):
        init_ledger(engine)
        grow(engine, 70_000)
        assert make_checkpoint(engine, SIGNER, ORIGIN) is not None
        grow(engine, 100_000)
        assert make_checkpoint(engine, SIGNER, ORIGIN) is not None
        yield engine


def test_a_proof_reads_log_n_rows_not_n(big: Engine) -> None:
    rows = count_rows(big)
    n = 100_000
    bound = 2 * n.bit_length()  # 2·log2(N) = 34 rows, against 100,000 before tiles
    seen = []
    for seq in (1, 256, 257, 65_536, 65_537, 70_000, 99_744, 99_999, 100_000):
        rows.reset()
        proof = prove_entry(big, seq)
        assert proof.verify() and proof.tree_size == n
        got = rows.reset()
        seen.append(got.total)
        assert got.total <= bound, (seq, got)
        assert got.tiles <= 6  # at most one tile per level (3) plus the edge tiles (3)
    old = prove_entry(big, 12_345, checkpoint_at(big, 70_000))  # an older checkpoint: prefixes of wider tiles
    assert old.verify() and old.tree_size == 70_000
    assert rows.reset().total <= bound
    consistency = prove_consistency(big, 70_000, 100_000)
    assert consistency.verify() and rows.reset().total <= bound
    stored = [e.leaf_hash for e in entries(big)]
    assert list(old.proof) == merkle.inclusion_proof(12_344, stored[:70_000])
    assert list(consistency.proof) == merkle.consistency_proof(70_000, stored)
    assert max(seen) <= bound


def test_an_export_past_65535_entries_streams_in_bounded_memory(big: Engine) -> None:
    """The range that failed with 'number of parameters must be between 0 and 65535', checked offline."""
    rows = count_rows(big)
    tracemalloc.start()
    try:
        export = export_rows(big, 1, 70_000, checkpoint_at(big, 70_000))
        size = 0
        lines = []
        for i, line in enumerate(render_jsonl(export)):
            size += len(line)
            if i <= 3 or i % 10_000 == 0:
                lines.append(line)  # kept: a sample to check below
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(export.rows, ExportRows)
    assert len(export.rows) == 70_000 and size > 70_000 * 1_000
    assert peak < 40_000_000, peak  # before: about 9.5 KB per entry held (665 MB for this range)
    seen = rows.reset()
    # Each entry row once, plus a tile per 256 entries and the handful per proof path.
    assert seen.total < 70_000 + 70_000 // WIDTH + 200, seen
    header = json.loads(lines[0])
    for line in lines[1:]:
        entry = json.loads(line)
        proof = [base64.b64decode(p) for p in entry["proof"]]
        assert merkle.verify_inclusion(
            base64.b64decode(entry["leaf_hash"]), entry["seq"] - 1, 70_000, proof, base64.b64decode(header["root"])
        )


def test_a_slice_of_the_big_tree_verifies_offline(big: Engine) -> None:
    text_ = "".join(render_jsonl(export_rows(big, 65_000, 66_100, since=[70_000])))
    result = verify_export(text_, SIGNER.verifier, ORIGIN)
    assert result.ok, result.problems[:3]
    assert (result.entries, result.tree_size, result.consistent_with) == (1_101, 100_000, [70_000])


def test_a_subject_report_reads_log_n_rows_per_entry(big: Engine) -> None:
    rows = count_rows(big)
    report = collect(big, "local:test-agency:S01234", {})
    seen = rows.reset()
    assert len(report.items) == 20 and all(i.proof is not None for i in report.items)
    for item in report.items:
        p = item.proof
        assert p is not None and merkle.verify_inclusion(
            base64.b64decode(p["leaf_hash"]),
            item.seq - 1,
            100_000,
            [base64.b64decode(h) for h in p["proof"]],
            latest_checkpoint(big).root,  # type: ignore[union-attr]
        )
    # 20 entries, and per entry at most one tile per level (3); the edge tiles once.
    assert seen.total <= 20 + 20 * 3 + 30, seen
    # Someone named only in other entries' subjects: found through the subject index, not a scan.
    other = collect(big, "local:test-agency:B042", {})
    seen = rows.reset()
    assert [i.seq for i in other.items] == list(range(420, 100_001, 10_000))
    assert seen.total <= 10 + 10 * 3 + 30, seen


def test_subjects_after_the_newest_checkpoint_are_found_too(small: Engine) -> None:
    """Entries the subject index does not cover yet (no checkpoint since) are matched on a seq range."""
    grow(small, 760)  # entry 710 names B071: not covered by the index yet (the tiles end at 700)
    for key, seqs in (
        ("local:test-agency:B071", [710]),
        ("local:test-agency:B010", [100]),
        ("local:test-agency:B070", [700]),
    ):
        report = collect(small, key, {})
        assert [i.seq for i in report.items] == seqs
    assert collect(small, "local:test-agency:B071", {}).unproven == 1
    make_checkpoint(small, SIGNER, ORIGIN)
    with small.connect() as conn:
        indexed = conn.execute(text("SELECT seq FROM ledger_subject_refs WHERE subject_key = 'local:test-agency:B071'"))
        assert [r.seq for r in indexed] == [710]
    assert collect(small, "local:test-agency:B071", {}).unproven == 0


# --- damaged, missing and lazily built tiles ------------------------------------------------------


@pytest.fixture
def small(pg_engine: Engine) -> Engine:
    """700 entries, checkpoints at 300 and 700."""
    init_ledger(pg_engine)
    grow(pg_engine, 300)
    make_checkpoint(pg_engine, SIGNER, ORIGIN)
    grow(pg_engine, 700)
    make_checkpoint(pg_engine, SIGNER, ORIGIN)
    return pg_engine


def true_proofs(engine: Engine, size: int) -> merkle.MerkleTree:
    return merkle.MerkleTree([e.leaf_hash for e in entries(engine)][:size])


def test_a_damaged_tile_is_detected_and_the_proof_is_still_true(small: Engine) -> None:
    full = true_proofs(small, 700)
    with small.begin() as conn:  # one hash of full tile 0 (leaf 4, entry 5's sibling) flipped
        data = bytearray(
            conn.execute(
                text("SELECT hashes FROM ledger_tiles WHERE level = 0 AND tile_index = 0 AND width = 256")
            ).scalar_one()
        )
        data[4 * 32] ^= 1
        conn.execute(
            text("UPDATE ledger_tiles SET hashes = :h WHERE level = 0 AND tile_index = 0 AND width = 256"),
            {"h": bytes(data)},
        )
    with small.connect() as conn:
        tree = TileTree.open(conn, 700, full.root())
        assert tree.inclusion_proof(5) == full.inclusion_proof(5)
        assert tree.rebuilt == [(0, 0)]  # found damaged, rebuilt from the leaf hashes
    for seq in (4, 5, 6, 600):
        p = prove_entry(small, seq)
        assert p.verify() and list(p.proof) == full.inclusion_proof(seq - 1)


def test_a_damaged_edge_tile_is_detected(small: Engine) -> None:
    full = true_proofs(small, 700)
    with small.begin() as conn:  # every open tile of size 700 zeroed
        conn.execute(
            text(
                "UPDATE ledger_tiles SET hashes = decode(repeat('00', length(hashes)), 'hex') "
                "WHERE tile_index = 2 AND level = 0 AND width = 188"
            )
        )
    with small.connect() as conn:
        tree = TileTree.open(conn, 700, full.root())
        assert (0, 2) in tree.rebuilt
        assert tree.inclusion_proof(699) == full.inclusion_proof(699)


def test_damage_to_the_entries_themselves_is_a_mismatch(small: Engine) -> None:
    """Tiles damaged AND the leaf hashes under them rewritten to match: nothing fits the signed root."""
    full = true_proofs(small, 700)
    tamper(small, "UPDATE ledger_entries SET recipient = 'partner-evil' WHERE seq = 5")
    rehash_from(small, 5)
    with small.begin() as conn:
        conn.execute(text("DELETE FROM ledger_tiles"))
    with small.connect() as conn:
        assert ensure(small, 700)  # built again, lazily, from the rewritten leaf hashes
        with pytest.raises(TilesMismatch, match="do not reproduce checkpoint 700"):
            TileTree.open(conn, 700, full.root())
    with pytest.raises(LedgerMismatch, match="checkpoint 700"):
        prove_entry(small, 600)


def test_a_ledger_without_tiles_still_proves_and_gets_them(small: Engine) -> None:
    """As a ledger written before tiles: they are built once, lazily, from the stored leaf hashes."""
    with small.begin() as conn:
        conn.execute(text("DELETE FROM ledger_tiles"))
    rows = count_rows(small)
    first = prove_entries(small, [1, 300, 700])
    assert all(p.verify() for p in first)
    assert rows.reset().total >= 700  # this once: every leaf hash read
    with small.connect() as conn:
        assert stored_end(conn) == 700
    assert prove_entry(small, 123, checkpoint_at(small, 300)).verify()
    assert rows.reset().total <= 2 * (700).bit_length()
    # And the next checkpoint extends them without re-reading old leaves.
    grow(small, 1_000)
    made = make_checkpoint(small, SIGNER, ORIGIN)
    assert made is not None and made.tree_size == 1_000
    with small.connect() as conn:
        assert stored_end(conn) == 1_000


def test_tiles_of_a_refused_checkpoint_are_not_kept(small: Engine) -> None:
    grow(small, 800)
    tamper(small, "UPDATE ledger_entries SET recipient = 'partner-evil' WHERE seq = 790")
    from ledger.checkpoint import CheckpointRefused

    with pytest.raises(CheckpointRefused, match="entry 790"):
        make_checkpoint(small, SIGNER, ORIGIN)
    with small.connect() as conn:
        assert stored_end(conn) == 700
