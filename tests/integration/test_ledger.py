"""The disclosure ledger: append, idempotency, chain, append-only guards, verify."""

from __future__ import annotations

import hashlib
import itertools
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import DBAPIError

from ledger import (
    GENESIS_HASH,
    EntryDraft,
    append,
    append_decisions,
    canonical_bytes,
    count,
    entries,
    init_ledger,
    install_guards,
    lookup,
    verify,
)

T0 = datetime(2025, 3, 1, 9, 30, 0, 123_000, tzinfo=UTC)


def draft(i: int, tag: str = "a") -> EntryDraft:
    """A synthetic decision; i and tag make the disclosure id unique."""
    disclosed = i % 3 != 0
    return EntryDraft(
        disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"test:{tag}:{i}")),
        event_id=f"evt-{tag}-{i}",
        event_type="natal_care.booking",
        provider="synthetic-hospital",
        recipient=f"partner-{i % 4}",
        agreement_id="agr-synthetic",
        agreement_version=2,
        purpose="continuity of care",
        legal_basis="synthetic basis, article 0",
        outcome="DISCLOSED" if disclosed else "WITHHELD",
        reason=None if disclosed else "consent withdrawn",
        fields=("patient.id", "booking.date") if disclosed else (),
        consent_mode="opt-out",
        consent_version=i % 5,
        subject_key=f"subj-{i % 7}",
        decided_at=T0 + timedelta(seconds=i),
        event_digest=hashlib.sha256(f"event bytes {tag}:{i}".encode()).hexdigest(),
        subjects=(f"subj-baby-{i}",) if i % 2 else (),
    )


def not_covered(d: EntryDraft) -> EntryDraft:
    """The entry of an event no agreement in force covers: no recipient, no agreement, no fields."""
    return replace(
        d,
        recipient="",
        agreement_id="",
        agreement_version=0,
        purpose="",
        legal_basis="",
        outcome="NOT_COVERED",
        reason="no agreement in force covers this provider and event type",
        fields=(),
        consent_mode="",
        consent_version=0,
    )


@pytest.fixture
def ledger_engine(pg_engine: Engine) -> Engine:
    init_ledger(pg_engine)
    return pg_engine


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    init_ledger(engine)
    yield engine
    engine.dispose()


def tamper(engine: Engine, *statements: str, **params: object) -> None:
    """Change the table behind the guards' back, as its owner would."""
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER ALL"))
        for sql in statements:
            conn.execute(text(sql), params)
        conn.execute(text("ALTER TABLE ledger_entries ENABLE TRIGGER ALL"))
        install_guards(conn)  # back to ENABLE ALWAYS


def refused(engine: Engine, sql: str, *, replica: bool = False) -> str:
    with pytest.raises(DBAPIError) as info, engine.begin() as conn:
        if replica:
            conn.execute(text("SET LOCAL session_replication_role = replica"))
        conn.execute(text(sql))
    return str(info.value.orig)


def test_append_batch_verifies(ledger_engine: Engine) -> None:
    drafts = [draft(i) for i in range(1, 101)]
    out = append(ledger_engine, drafts)
    assert [a.seq for a in out] == list(range(1, 101))
    assert all(a.new for a in out)
    assert [a.disclosure_id for a in out] == [d.disclosure_id for d in drafts]
    assert count(ledger_engine) == 100
    result = verify(ledger_engine)
    assert result.ok, result.describe()
    assert result.entries == 100
    assert result.describe() == "ledger OK: 100 entries, chain intact"
    # A second batch continues the sequence and the chain.
    more = append(ledger_engine, [draft(i) for i in range(101, 111)])
    assert [a.seq for a in more] == list(range(101, 111))
    assert verify(ledger_engine).ok


def test_read_back_equals_draft(ledger_engine: Engine) -> None:
    odd = draft(5)
    # Microseconds and a non-UTC offset: stored (and hashed) as UTC milliseconds.
    local = odd.decided_at.astimezone(timezone(timedelta(hours=2))) + timedelta(microseconds=456)
    append(ledger_engine, [replace(odd, decided_at=local)])
    [stored] = entries(ledger_engine)
    assert stored.draft == odd
    assert stored.draft.decided_at.utcoffset() == timedelta(0)
    assert entries(ledger_engine, subject_key=odd.subject_key)[0].seq == 1
    assert entries(ledger_engine, subject_key="nobody") == []
    assert verify(ledger_engine).ok


def test_reappend_is_idempotent(ledger_engine: Engine) -> None:
    drafts = [draft(i) for i in range(1, 51)]
    first = append(ledger_engine, drafts)
    again = append(ledger_engine, drafts)
    assert [a.seq for a in again] == [a.seq for a in first]
    assert not any(a.new for a in again)
    assert count(ledger_engine) == 50
    # Mixed batch: known ids, new ids and a repeat within the batch.
    mixed = append(ledger_engine, [drafts[0], draft(51), draft(51), drafts[1], draft(52)])
    assert [(a.seq, a.new) for a in mixed] == [(1, False), (51, True), (51, False), (2, False), (52, True)]
    assert count(ledger_engine) == 52
    assert lookup(ledger_engine, [drafts[3].disclosure_id, "absent"]) == {drafts[3].disclosure_id: 4}
    assert verify(ledger_engine).ok


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_append_decisions_leaves_out_every_event_already_recorded(backend: str, request: pytest.FixtureRequest) -> None:
    """A second decision of a recorded event, under another disclosure id (another agreement
    version, say), is not written; the other events of the batch are, and the repeat within
    the batch still counts once."""
    engine: Engine = request.getfixturevalue("ledger_engine" if backend == "postgresql" else "sqlite_engine")
    recorded = append(engine, [draft(1), draft(2)])
    redecided = replace(draft(1), disclosure_id=str(uuid.uuid4()), agreement_version=3)
    fresh = draft(3)
    kept, appended, seen = append_decisions(engine, [redecided, fresh, fresh, not_covered(draft(2, "a"))])
    assert seen == {draft(1).event_id, draft(2).event_id}
    assert kept == [fresh, fresh]
    assert [(a.seq, a.new) for a in appended] == [(3, True), (3, False)]
    assert [e.draft.disclosure_id for e in entries(engine)] == [
        *(a.disclosure_id for a in recorded),
        fresh.disclosure_id,
    ]
    assert append_decisions(engine, [redecided]) == ([], [], frozenset({draft(1).event_id}))
    assert count(engine) == 3 and verify(engine).ok


@pytest.mark.parametrize(
    "event_id",
    [lambda i: str(uuid.uuid4()), lambda i: f"evt'{i},{{x}}\\\"", lambda i: str(uuid.uuid4()).upper()],
    ids=["canonical uuid (joined)", "quotes, braces, commas (quoted by psycopg)", "upper-case uuid (quoted)"],
)
def test_the_recorded_events_look_up_finds_ids_of_any_form(ledger_engine: Engine, event_id) -> None:  # type: ignore[no-untyped-def]
    """The processor's event ids are canonical UUIDs and are written into the look-up as they are;
    any other id is quoted: either way every recorded event is found, and nothing else."""
    old = [replace(draft(i, "fence"), event_id=event_id(i)) for i in range(1, 4)]
    append(ledger_engine, old)
    new = [replace(draft(i, "fence2"), event_id=event_id(i + 10)) for i in range(1, 3)]
    kept, _appended, seen = append_decisions(ledger_engine, [*old, *new])
    assert seen == {d.event_id for d in old} and kept == new


def test_chain_links(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 21)])
    stored = entries(ledger_engine)
    assert stored[0].prev_hash == GENESIS_HASH == bytes(32)
    for before, after in itertools.pairwise(stored):
        assert after.prev_hash == before.entry_hash
    for e in stored:
        assert e.entry_hash == hashlib.sha256(canonical_bytes(e.seq, e.draft, e.prev_hash)).digest()
    assert len({e.entry_hash for e in stored}) == 20


def test_canonical_bytes_depend_on_every_input() -> None:
    base = canonical_bytes(1, draft(1), GENESIS_HASH)
    assert canonical_bytes(1, draft(1), GENESIS_HASH) == base
    assert canonical_bytes(2, draft(1), GENESIS_HASH) != base
    assert canonical_bytes(1, draft(1), b"\x01" * 32) != base
    assert canonical_bytes(1, replace(draft(1), fields=("booking.date", "patient.id")), GENESIS_HASH) != base


@pytest.mark.parametrize(
    ("sql", "op"),
    [
        ("UPDATE ledger_entries SET recipient = 'elsewhere' WHERE seq = 2", "UPDATE"),
        ("DELETE FROM ledger_entries WHERE seq = 2", "DELETE"),
        ("TRUNCATE ledger_entries", "TRUNCATE"),
    ],
)
@pytest.mark.parametrize("replica", [False, True], ids=["origin", "replica"])
def test_postgres_refuses_changes(ledger_engine: Engine, sql: str, op: str, replica: bool) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 4)])
    message = refused(ledger_engine, sql, replica=replica)
    assert f"ledger_entries is append-only: {op} refused" in message
    assert count(ledger_engine) == 3
    assert verify(ledger_engine).ok


def test_guards_are_enable_always_and_idempotent(ledger_engine: Engine) -> None:
    init_ledger(ledger_engine)  # again: no error, no duplicate triggers
    with ledger_engine.connect() as conn:
        modes = conn.execute(
            text(
                "SELECT tgname, tgenabled FROM pg_trigger "
                "WHERE tgrelid = 'ledger_entries'::regclass AND NOT tgisinternal ORDER BY tgname"
            )
        ).all()
    assert [tuple(m) for m in modes] == [
        ("ledger_entries_no_truncate", "A"),
        ("ledger_entries_no_update_delete", "A"),
    ]


def test_verify_names_changed_entry(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 31)])
    tamper(ledger_engine, "UPDATE ledger_entries SET recipient = 'partner-evil' WHERE seq = :s", s=17)
    # The guards are back on after the tamper.
    assert "UPDATE refused" in refused(ledger_engine, "UPDATE ledger_entries SET reason = 'x'")
    result = verify(ledger_engine)
    assert not result.ok
    assert result.first_bad_seq == 17
    assert result.entries == 17
    assert "(changed)" in (result.problem or "")
    assert result.describe().startswith("ledger BROKEN at entry 17: entry hash does not match")


def test_verify_names_overwritten_hash(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 11)])
    tamper(ledger_engine, "UPDATE ledger_entries SET entry_hash = :h WHERE seq = 4", h=b"\x07" * 32)
    result = verify(ledger_engine)
    assert (result.ok, result.first_bad_seq) == (False, 4)  # its hash no longer matches its contents
    assert "changed" in (result.problem or "")


def test_verify_names_next_link_when_changed_entry_is_rehashed(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 11)])
    [e4] = [e for e in entries(ledger_engine) if e.seq == 4]
    forged = replace(e4.draft, recipient="partner-evil")
    tamper(
        ledger_engine,
        "UPDATE ledger_entries SET recipient = 'partner-evil', entry_hash = :h, leaf_hash = :l WHERE seq = 4",
        h=hashlib.sha256(canonical_bytes(4, forged, e4.prev_hash)).digest(),
        l=hashlib.sha256(b"\x00" + canonical_bytes(4, forged, e4.prev_hash)).digest(),
    )
    result = verify(ledger_engine)
    # Entry 4 is self-consistent now; the chain breaks at the link entry 5 holds.
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "prev_hash does not match entry 4's hash" in (result.problem or "")


def test_verify_names_removed_entry(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 31)])
    tamper(ledger_engine, "DELETE FROM ledger_entries WHERE seq = :s", s=9)
    result = verify(ledger_engine)
    assert not result.ok
    assert result.first_bad_seq == 9
    assert "removed" in (result.problem or "")


def test_verify_names_removed_first_entry(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 6)])
    tamper(ledger_engine, "DELETE FROM ledger_entries WHERE seq = 1")
    result = verify(ledger_engine)
    assert (result.ok, result.first_bad_seq) == (False, 1)
    assert "not 1" in (result.problem or "")


def test_verify_names_reordered_entries(ledger_engine: Engine) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 11)])
    # Swap entries 5 and 6 wholesale (renumbering them); each keeps its own valid-looking hash.
    tamper(
        ledger_engine,
        "UPDATE ledger_entries SET seq = CASE seq WHEN 5 THEN -6 ELSE -5 END WHERE seq IN (5, 6)",
        "UPDATE ledger_entries SET seq = -seq WHERE seq < 0",
    )
    result = verify(ledger_engine)
    assert (result.ok, result.first_bad_seq) == (False, 5)
    assert "prev_hash" in (result.problem or "")


def test_concurrent_appends(ledger_engine: Engine) -> None:
    errors: list[BaseException] = []
    results: dict[str, list[int]] = {"a": [], "b": []}
    start = threading.Barrier(2)

    def worker(tag: str) -> None:
        try:
            start.wait()
            for b in range(20):
                out = append(ledger_engine, [draft(b * 50 + i, tag) for i in range(50)])
                assert all(a.new for a in out)
                results[tag].extend(a.seq for a in out)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in results]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results["a"] + results["b"]) == list(range(1, 2001))
    assert count(ledger_engine) == 2000
    result = verify(ledger_engine)
    assert result.ok, result.describe()
    assert result.describe() == "ledger OK: 2,000 entries, chain intact"


def test_large_batch(ledger_engine: Engine) -> None:
    out = append(ledger_engine, [draft(i, "big") for i in range(2500)])
    assert out[-1].seq == 2500
    assert verify(ledger_engine).entries == 2500


def test_sqlite_append_verify_and_guards(sqlite_engine: Engine) -> None:
    drafts = [draft(i) for i in range(1, 41)]
    out = append(sqlite_engine, drafts)
    assert [a.seq for a in out] == list(range(1, 41))
    assert [a.new for a in append(sqlite_engine, drafts[:5])] == [False] * 5
    assert verify(sqlite_engine).ok
    assert [e.draft for e in entries(sqlite_engine)] == drafts
    init_ledger(sqlite_engine)  # idempotent
    for sql, op in (
        ("UPDATE ledger_entries SET recipient = 'elsewhere' WHERE seq = 3", "UPDATE"),
        ("DELETE FROM ledger_entries WHERE seq = 3", "DELETE"),
        ("DELETE FROM ledger_entries", "DELETE"),
    ):
        assert f"ledger_entries is append-only: {op} refused" in refused(sqlite_engine, sql)
    assert count(sqlite_engine) == 40
    assert verify(sqlite_engine).ok


def test_sqlite_tamper_detected(sqlite_engine: Engine) -> None:
    append(sqlite_engine, [draft(i) for i in range(1, 11)])
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
        conn.exec_driver_sql("UPDATE ledger_entries SET fields = '[\"patient.nhs_number\"]' WHERE seq = 8")
    result = verify(sqlite_engine)
    assert (result.ok, result.first_bad_seq) == (False, 8)


def test_sqlite_concurrent_appends(sqlite_engine: Engine) -> None:
    errors: list[BaseException] = []

    def worker(tag: str) -> None:
        try:
            for b in range(10):
                append(sqlite_engine, [draft(b * 20 + i, tag) for i in range(20)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(tag,)) for tag in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(sqlite_engine) == 400
    assert verify(sqlite_engine).ok


# --------------------------------------------------------------------------- event digest, subjects, NOT_COVERED


def test_new_fields_round_trip(ledger_engine: Engine) -> None:
    d = replace(draft(1), subjects=("nhs:9434765870", "local:b\u00e9b\u00e9 1"), event_digest="0f" * 32)
    bare = replace(draft(2), subjects=(), event_digest="")
    append(ledger_engine, [d, bare])
    assert [e.draft for e in entries(ledger_engine)] == [d, bare]
    with ledger_engine.connect() as conn:
        stored = conn.execute(text("SELECT event_digest, subjects FROM ledger_entries ORDER BY seq")).all()
    assert [tuple(r) for r in stored] == [("0f" * 32, '["nhs:9434765870","local:b\u00e9b\u00e9 1"]'), ("", "[]")]
    # Both are hashed: another digest or subject list is other canonical bytes.
    base = canonical_bytes(1, d, GENESIS_HASH)
    assert canonical_bytes(1, replace(d, event_digest="1f" * 32), GENESIS_HASH) != base
    assert canonical_bytes(1, replace(d, subjects=d.subjects[:1]), GENESIS_HASH) != base
    assert verify(ledger_engine).ok


def test_sqlite_new_fields_round_trip(sqlite_engine: Engine) -> None:
    d = replace(draft(1), subjects=("nhs:9434765870", "pnc:01/123456X"), event_digest="ab" * 32)
    append(sqlite_engine, [d, not_covered(draft(2))])
    assert [e.draft for e in entries(sqlite_engine)] == [d, not_covered(draft(2))]
    assert verify(sqlite_engine).ok


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE ledger_entries SET event_digest = :other WHERE seq = :s",
        "UPDATE ledger_entries SET subjects = '[\"nhs:9434765870\"]' WHERE seq = :s",
        "UPDATE ledger_entries SET subjects = '[]' WHERE seq = :s",
    ],
    ids=["event_digest", "subjects", "subjects-emptied"],
)
def test_verify_names_changed_digest_or_subjects(ledger_engine: Engine, sql: str) -> None:
    append(ledger_engine, [draft(i) for i in range(1, 21)])
    assert draft(13).subjects  # odd i: one subject, so emptying it is a change
    tamper(ledger_engine, sql, s=13, other=hashlib.sha256(b"another event").hexdigest())
    result = verify(ledger_engine)
    assert (result.ok, result.first_bad_seq) == (False, 13)
    assert result.describe() == "ledger BROKEN at entry 13: entry hash does not match its contents (changed)"


def test_sqlite_verify_names_changed_digest(sqlite_engine: Engine) -> None:
    append(sqlite_engine, [draft(i) for i in range(1, 11)])
    with sqlite_engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_update")
        conn.exec_driver_sql(f"UPDATE ledger_entries SET event_digest = '{'0' * 64}' WHERE seq = 6")
    assert (verify(sqlite_engine).ok, verify(sqlite_engine).first_bad_seq) == (False, 6)


def test_drafts_refused_before_anything_is_written(ledger_engine: Engine) -> None:
    good = draft(1)
    for bad, message in (
        (replace(good, event_digest="AB" * 32), "event_digest"),
        (replace(good, event_digest="ab" * 31), "event_digest"),
        (replace(not_covered(good), recipient="partner-1"), "NOT_COVERED"),
        (replace(not_covered(good), agreement_id="agr-synthetic"), "NOT_COVERED"),
        (replace(not_covered(good), fields=("patient.id",)), "NOT_COVERED"),
        (replace(good, outcome="LOST"), "outcome"),
    ):
        with pytest.raises(ValueError, match=message):
            append(ledger_engine, [good, bad])
    assert count(ledger_engine) == 0


def test_not_covered_entry_verifies_exports_and_is_proved(ledger_engine: Engine, tmp_path: Path) -> None:
    from ledger.checkpoint import make_checkpoint
    from ledger.export import export_rows, render_csv, render_jsonl, verify_export
    from ledger.note import NoteSigner
    from ledger.proofs import prove_entry
    from ledger.receipts import pending_receipts

    uncovered = not_covered(replace(draft(2), subjects=("nhs:9434765870",)))
    append(ledger_engine, [draft(1), uncovered, draft(4)])
    [stored] = [e for e in entries(ledger_engine) if e.seq == 2]
    assert stored.draft == uncovered and stored.draft.outcome == "NOT_COVERED"
    # ... event_digest, then subjects (one block of 1: 02, 14 bytes: 1c, end: 00), then prev_hash.
    tail = b"\x80\x01" + uncovered.event_digest.encode() + b"\x02\x1cnhs:9434765870\x00" + stored.prev_hash
    assert canonical_bytes(2, uncovered, stored.prev_hash).endswith(tail)
    assert verify(ledger_engine).ok
    assert uncovered.disclosure_id not in {e.draft.disclosure_id for e in pending_receipts(ledger_engine)}
    signer = NoteSigner.generate("accord.test/not-covered")
    make_checkpoint(ledger_engine, signer, "accord.test/not-covered")
    proof = prove_entry(ledger_engine, 2)
    assert proof.verify() and proof.leaf == canonical_bytes(2, uncovered, stored.prev_hash)
    export = export_rows(ledger_engine, 1, 3)
    row = list(export.rows)[1]  # ExportRows reads the ledger as it is iterated
    assert (row["outcome"], row["recipient"], row["agreement_id"], row["subjects"]) == (
        "NOT_COVERED",
        "",
        "",
        ["nhs:9434765870"],
    )
    assert row["event_digest"] == uncovered.event_digest
    for text_ in ("".join(render_jsonl(export)), "".join(render_csv(export))):
        check = verify_export(text_, signer.verifier, "accord.test/not-covered")
        assert check.ok, check.problems
        # The readable columns are checked against the leaf: a changed digest is named.
        forged = verify_export(
            text_.replace(uncovered.event_digest, "0" * 64), signer.verifier, "accord.test/not-covered"
        )
        assert not forged.ok and "entry 2: columns event_digest differ" in forged.describe()


def _events(tag: str, n: int) -> list[EntryDraft]:
    """Per event: one or two decisions, and some NOT_COVERED; event ids evt-<tag>-<k>."""
    out: list[EntryDraft] = []
    for k in range(n):
        base = replace(draft(k, tag), event_id=f"evt-{tag}-{k}")
        if k % 5 == 0:
            out.append(not_covered(base))
            continue
        out.append(base)
        if k % 2:
            out.append(
                replace(
                    base,
                    disclosure_id=f"{base.disclosure_id[:30]}-second",
                    recipient="partner-9",
                    outcome="WITHHELD",
                    reason="consent denied (consent record 1)",
                    fields=(),
                )
            )
    return out


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_event_entries(dialect: str, request: pytest.FixtureRequest) -> None:
    from ledger import event_entries, writer

    engine: Engine = request.getfixturevalue("ledger_engine" if dialect == "postgresql" else "sqlite_engine")
    wanted, other = _events("w", 1300), _events("o", 200)
    mixed = [d for pair in zip(wanted, other, strict=False) for d in pair] + wanted[len(other) :]
    append(engine, mixed)
    ids = {d.event_id for d in wanted}
    assert len(ids) == 1300
    by_seq = {e.draft.disclosure_id: e for e in entries(engine)}
    expected: dict[str, list] = {}
    for d in wanted:
        expected.setdefault(d.event_id, []).append(by_seq[d.disclosure_id])
    found = event_entries(engine, [*ids, *ids, "evt-absent"])  # duplicates and an unknown id
    assert found == expected
    assert all([e.seq for e in v] == sorted(e.seq for e in v) for v in found.values())
    assert sum(len(v) for v in found.values()) == len(wanted)
    assert {e.draft.outcome for v in found.values() for e in v} == {"DISCLOSED", "WITHHELD", "NOT_COVERED"}
    assert event_entries(engine, []) == {}
    # Inside the writer's transaction: it reads, then appends, atomically.
    with writer(engine) as conn:
        before = event_entries(conn, ["evt-w-1"])
        assert [e.draft.disclosure_id for e in before["evt-w-1"]] == [d.disclosure_id for d in wanted[1:3]]
        [added] = append(conn, [replace(wanted[1], disclosure_id="late-decision")])
        assert added.new and [e.seq for e in event_entries(conn, ["evt-w-1"])["evt-w-1"]][-1] == added.seq
    assert count(engine) == len(mixed) + 1
    assert verify(engine).ok


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_writer_rolls_back_on_error(dialect: str, request: pytest.FixtureRequest) -> None:
    from ledger import writer

    engine: Engine = request.getfixturevalue("ledger_engine" if dialect == "postgresql" else "sqlite_engine")
    append(engine, [draft(1)])
    with pytest.raises(RuntimeError, match="delivery planning failed"), writer(engine) as conn:
        append(conn, [draft(2), draft(3)])
        raise RuntimeError("delivery planning failed")
    assert count(engine) == 1
    assert [a.seq for a in append(engine, [draft(2)])] == [2]
    assert verify(engine).ok


def test_event_id_is_indexed(ledger_engine: Engine) -> None:
    from sqlalchemy import inspect

    indexed = {tuple(i["column_names"]) for i in inspect(ledger_engine).get_indexes("ledger_entries")}
    assert ("event_id",) in indexed


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_init_refuses_a_table_without_the_new_columns(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A ledger written before event_digest and subjects cannot verify: init says so in one line."""
    from sqlalchemy import MetaData, Table

    from ledger.roles import LedgerSchemaMissing
    from ledger.tables import LedgerEntry

    if dialect == "postgresql":
        engine: Engine = request.getfixturevalue("pg_engine")
    else:
        engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    old = Table(
        "ledger_entries",
        MetaData(),
        *(c._copy() for c in LedgerEntry.__table__.columns if c.name not in ("event_digest", "subjects")),
    )
    old.create(engine)
    with pytest.raises(LedgerSchemaMissing) as info:
        init_ledger(engine)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("ledger_entries has no event_digest, subjects columns (it predates event digests)")
    assert "recreate a development database" in message
    engine.dispose()


# --------------------------------------------------------------------------- written before the compiled writer


def _written_the_old_way(drafts: list[EntryDraft]) -> list[dict[str, object]]:
    """The rows the ledger wrote before ledger/leaf_codec.py: leaves by fastavro, rows as dicts.

    Written here from schemas/disclosure.avsc alone, as append did it then, so that the
    test does not lean on the code it checks.
    """
    import io
    import json

    import fastavro

    from ledger.entry import SCHEMA_PATH

    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    epoch, ms = datetime(1970, 1, 1, tzinfo=UTC), timedelta(milliseconds=1)
    rows, prev = [], GENESIS_HASH
    for seq, d in enumerate(drafts, 1):
        at = d.decided_at.astimezone(UTC)
        at = at.replace(microsecond=at.microsecond - at.microsecond % 1000)
        record = {
            **{
                k: getattr(d, k)
                for k in (
                    "disclosure_id",
                    "event_id",
                    "event_type",
                    "provider",
                    "recipient",
                    "agreement_id",
                    "agreement_version",
                    "purpose",
                    "legal_basis",
                    "outcome",
                    "reason",
                    "consent_mode",
                    "consent_version",
                    "subject_key",
                    "refers_to",
                    "event_digest",
                )
            },
            "seq": seq,
            "fields": list(d.fields),
            "subjects": list(d.subjects),
            "decided_at": (at - epoch) // ms,
            "prev_hash": prev,
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record, strict=True)
        leaf = buf.getvalue()
        h = hashlib.sha256(leaf).digest()
        rows.append(
            {
                **record,
                "decided_at": at,
                "fields": json.dumps(list(d.fields), separators=(",", ":")),
                "subjects": json.dumps(list(d.subjects), separators=(",", ":"), ensure_ascii=False),
                "entry_hash": h,
                "leaf_hash": hashlib.sha256(b"\x00" + leaf).digest(),
            }
        )
        prev = h
    return rows


def _fastavro_hashes(engine: Engine) -> list[tuple[int, bool]]:
    """(seq, whether fastavro's encoding of the stored columns hashes to the stored hashes), every entry."""
    import io
    import json

    import fastavro

    from ledger.entry import SCHEMA_PATH

    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))
    out = []
    for e in entries(engine):
        d = e.draft
        record = {
            **{
                k: getattr(d, k)
                for k in (
                    "disclosure_id",
                    "event_id",
                    "event_type",
                    "provider",
                    "recipient",
                    "agreement_id",
                    "agreement_version",
                    "purpose",
                    "legal_basis",
                    "outcome",
                    "reason",
                    "consent_mode",
                    "consent_version",
                    "subject_key",
                    "refers_to",
                    "event_digest",
                )
            },
            "seq": e.seq,
            "fields": list(d.fields),
            "subjects": list(d.subjects),
            "decided_at": (d.decided_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1),
            "prev_hash": e.prev_hash,
        }
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, record, strict=True)
        leaf = buf.getvalue()
        out.append(
            (
                e.seq,
                hashlib.sha256(leaf).digest() == e.entry_hash
                and hashlib.sha256(b"\x00" + leaf).digest() == e.leaf_hash,
            )
        )
    return out


def test_a_ledger_written_by_fastavro_verifies_and_appends_chain_on(ledger_engine: Engine) -> None:
    import os
    import subprocess
    import sys

    from sqlalchemy import insert

    from accord.provision import init_database
    from ledger import LedgerEntry, event_entries, writer

    init_database(ledger_engine)  # `accord ledger verify` wants the whole database there
    old = [
        replace(draft(i, "old"), subjects=("local:b\u00e9b\u00e9 1", "nhs:9434765870") if i % 4 == 1 else ())
        for i in range(1, 31)
    ]
    old[6] = not_covered(old[6])
    old[9] = replace(old[9], outcome="RETRACTED", refers_to=old[8].disclosure_id, reason="agreement suspended")
    old[11] = replace(
        old[11],
        outcome="RECEIVED",
        refers_to=old[10].disclosure_id,
        reason=None,
        decided_at=old[11].decided_at.astimezone(timezone(timedelta(hours=-5))),
    )
    with ledger_engine.begin() as conn:
        conn.execute(insert(LedgerEntry), _written_the_old_way(old))
    result = verify(ledger_engine)
    assert result.ok and result.entries == 30, result.describe()
    url = ledger_engine.url.render_as_string(hide_password=False)
    cli = subprocess.run(
        [sys.executable, "-m", "accord.cli", "ledger", "verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "ACCORD_LEDGER_URL": url},
        timeout=120,
    )
    assert cli.returncode == 0 and "ledger OK: 30 entries, chain intact" in cli.stdout, cli.stdout + cli.stderr

    # Appends after them: new entries, old ones again (found by the constraint, then looked up), repeats.
    new = [draft(i, "new") for i in range(1, 21)]
    out = append(ledger_engine, [new[0], old[3], *new[1:10], old[29], new[1]])
    assert [(a.seq, a.new) for a in out] == [
        (31, True),
        (4, False),
        *((s, True) for s in range(32, 41)),
        (30, False),
        (32, False),
    ]
    with writer(ledger_engine) as conn:
        again = append(conn, [old[0], *new[10:], new[0]])  # in the caller's transaction: savepoint, look-up
        assert [(a.seq, a.new) for a in again] == [(1, False), *((s, True) for s in range(41, 51)), (31, False)]
        assert [e.seq for e in event_entries(conn, [new[19].event_id])[new[19].event_id]] == [50]
    stored = {e.seq: e for e in entries(ledger_engine)}
    assert stored[31].prev_hash == stored[30].entry_hash and stored[41].prev_hash == stored[40].entry_hash
    assert [stored[s].draft for s in range(31, 51)] == new
    result = verify(ledger_engine)
    assert result.ok and result.entries == 50, result.describe()
    # fastavro's bytes of every stored entry, old and new, hash to what is stored.
    assert _fastavro_hashes(ledger_engine) == [(s, True) for s in range(1, 51)]
    cli = subprocess.run(
        [sys.executable, "-m", "accord.cli", "ledger", "verify"],
        capture_output=True,
        text=True,
        env={**os.environ, "ACCORD_LEDGER_URL": url},
        timeout=120,
    )
    assert cli.returncode == 0 and "ledger OK: 50 entries, chain intact" in cli.stdout, cli.stdout + cli.stderr


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_a_refused_draft_mid_batch_writes_nothing_and_leaves_the_writer_usable(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    from ledger import writer

    engine: Engine = request.getfixturevalue("ledger_engine" if dialect == "postgresql" else "sqlite_engine")
    append(engine, [draft(1)])
    bad = [draft(i) for i in range(2, 900)] + [replace(draft(900), event_digest="not hex" * 9)]
    with pytest.raises(ValueError, match="event_digest"):
        append(engine, bad)
    naive = replace(draft(901), decided_at=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        append(engine, [draft(2), naive])
    with writer(engine) as conn:
        with pytest.raises(ValueError, match="outcome"):
            append(conn, [draft(2), replace(draft(3), outcome="LOST")])
        [ok] = append(conn, [draft(2)])  # the same transaction goes on
        assert (ok.seq, ok.new) == (2, True)
    assert count(engine) == 2
    assert verify(engine).ok


def test_a_repeat_within_a_first_try_is_recorded_once(ledger_engine: Engine) -> None:
    """append's first COPY leaves a repeated id to UNIQUE(disclosure_id); the retry looks ids up and skips it."""
    out = append(ledger_engine, [draft(1), draft(2), draft(1), draft(3)])
    assert [(a.seq, a.new) for a in out] == [(1, True), (2, True), (1, False), (3, True)]
    assert count(ledger_engine) == 3
    assert [e.draft for e in entries(ledger_engine)] == [draft(1), draft(2), draft(3)]
    assert verify(ledger_engine).ok


def test_a_number_its_column_cannot_hold_is_refused_and_nothing_written(ledger_engine: Engine) -> None:
    """agreement_version is int4 in the table: 2**31 is refused (ValueError) before anything is written."""
    append(ledger_engine, [draft(1)])
    with pytest.raises(ValueError, match="cannot"):
        append(ledger_engine, [draft(2), replace(draft(3), agreement_version=1 << 31)])
    assert [a.seq for a in append(ledger_engine, [draft(2)])] == [2]
    assert count(ledger_engine) == 2 and verify(ledger_engine).ok


def test_a_connection_not_in_utf8_writes_the_same_rows(ledger_engine: Engine) -> None:
    """append builds its binary rows in UTF-8; a LATIN1 session gets psycopg's rows, and the ledger is the same.

    Batches alternate between a UTF-8 and a LATIN1 engine on one ledger, with text LATIN1
    can hold (é, ß); what is read back is the drafts, and the chain verifies across both.
    """
    from sqlalchemy import event
    from sqlalchemy.pool import NullPool

    latin1 = create_engine(ledger_engine.url, poolclass=NullPool)

    @event.listens_for(latin1, "connect")
    def _latin1(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.execute("SET client_encoding TO 'LATIN1'")
        dbapi_connection.commit()

    try:
        raw = latin1.raw_connection()
        assert raw.driver_connection.info.encoding != "utf-8"  # type: ignore[union-attr]
        raw.close()
        accented = [replace(draft(i), reason="refusé", subject_key=f"straße-{i}") for i in range(1, 31)]
        for k in range(0, 30, 10):
            append(latin1 if k % 20 else ledger_engine, accented[k : k + 10])
        append(latin1, accented[:5])  # known ids, through the look-up on that connection too
        assert [e.draft for e in entries(ledger_engine)] == accented
        result = verify(ledger_engine)
        assert result.ok and result.entries == 30, result.describe()
    finally:
        latin1.dispose()


class _CutAt(list[EntryDraft]):
    """A batch whose slice from ``at`` on first terminates the appending session (the database cut mid-COPY)."""

    def __init__(self, drafts: list[EntryDraft], at: int, cut: object) -> None:
        super().__init__(drafts)
        self.at, self.cut = at, cut

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        if isinstance(index, slice) and index.start == self.at and self.cut is not None:
            cut, self.cut = self.cut, None
            cut()  # type: ignore[operator]
        return super().__getitem__(index)


def test_a_session_cut_mid_copy_writes_nothing_and_the_next_append_chains_on(ledger_engine: Engine) -> None:
    """The rows go to COPY in parts; the session is terminated after some parts were sent.

    append raises, no row of the batch is in the ledger, the broken connection is not
    reused, and the next append continues the chain from the last committed entry.
    """
    import psycopg
    from sqlalchemy.pool import QueuePool

    append(ledger_engine, [draft(i) for i in range(1, 11)])
    appender = create_engine(ledger_engine.url, poolclass=QueuePool, pool_size=1, max_overflow=0)
    try:
        with appender.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()

        def cut() -> None:
            with ledger_engine.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar_one()

        batch = _CutAt([draft(i) for i in range(11, 511)], at=192, cut=cut)
        with pytest.raises(psycopg.OperationalError, match="terminat"):  # the message depends on where it is read
            append(appender, batch)
        assert batch.cut is None  # the cut happened, after three parts of 64 rows had been sent
        assert count(ledger_engine) == 10
        out = append(appender, [draft(i) for i in range(11, 21)])
        assert [a.seq for a in out] == list(range(11, 21))
        result = verify(ledger_engine)
        assert result.ok and result.entries == 20, result.describe()
    finally:
        appender.dispose()
