"""Signed checkpoints: note format, proofs, tamper detection, cosignatures, publication."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from accord.processor.checkpointer import (
    Checkpointer,
    read_published_notes,
    signer_from_settings,
    verifier_from_settings,
)
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames, create_topics
from ledger import append, canonical_bytes, entries, init_ledger, install_guards, verify
from ledger.checkpoint import (
    KEY_FILE_NAME,
    CheckpointBody,
    CheckpointRefused,
    add_cosignature,
    checkpoint_at,
    checkpoints,
    cosigned_note,
    generate_key_file,
    latest_checkpoint,
    ledger_size,
    load_signer,
    make_checkpoint,
    open_checkpoint,
)
from ledger.note import NoteError, NoteSignature, NoteSigner, NoteVerifier, SignedNote, key_id, sign_note
from ledger.proofs import LedgerMismatch, NotCovered, prove_consistency, prove_entries, prove_entry
from tests.bus import headers_of
from tests.integration.test_ledger import draft, not_covered, tamper

ORIGIN = "accord.example/ledger"

# golang.org/x/mod/sumdb/note's documented example key and note (known answer).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT
    + "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
# The C2SP signed-note specification's verifier-key example.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


@pytest.fixture
def ledger_engine(pg_engine: Engine) -> Engine:
    init_ledger(pg_engine)
    return pg_engine


def tamper_checkpoints(engine: Engine, sql: str, **params: object) -> None:
    """Change ledger_checkpoints or ledger_cosignatures as their owner would (triggers off, if any)."""
    with engine.begin() as conn:
        for table in ("ledger_checkpoints", "ledger_cosignatures"):
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER ALL"))
        conn.execute(text(sql), params)
        for table in ("ledger_checkpoints", "ledger_cosignatures"):
            conn.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER ALL"))
        install_guards(conn)


def rehash_from(engine: Engine, start: int) -> None:
    """Recompute prev_hash, entry_hash and leaf_hash of every entry from ``start`` on, as a
    careful forger would after changing history, so that the chain alone looks intact."""
    stored = entries(engine)
    prev = stored[start - 2].entry_hash if start > 1 else bytes(32)
    statements: list[str] = []
    params: dict[str, bytes] = {}
    for e in stored[start - 1 :]:
        leaf = canonical_bytes(e.seq, e.draft, prev)
        h = hashlib.sha256(leaf).digest()
        i = e.seq
        statements.append(
            f"UPDATE ledger_entries SET prev_hash = :p{i}, entry_hash = :h{i}, leaf_hash = :l{i} WHERE seq = {i}"
        )
        params |= {f"p{i}": prev, f"h{i}": h, f"l{i}": hashlib.sha256(b"\x00" + leaf).digest()}
        prev = h
    tamper(engine, *statements, **params)


def ledger_with_checkpoints(engine: Engine, signer: NoteSigner, *sizes: int) -> None:
    """Append entries and checkpoint at each size."""
    done = 0
    for size in sizes:
        append(engine, [draft(i) for i in range(done + 1, size + 1)])
        assert make_checkpoint(engine, signer, ORIGIN) is not None
        done = size


def check(engine: Engine, signer: NoteSigner):
    return verify(engine, signer.verifier, ORIGIN)


# --- the signed-note format -------------------------------------------------------------


def test_note_known_answers() -> None:
    go = NoteSigner.parse(GO_SKEY)
    assert go.name == "PeterNeumann"
    assert go.verifier.vkey == GO_VKEY
    assert go.skey == GO_SKEY
    assert sign_note(GO_TEXT, go) == GO_NOTE  # Ed25519 is deterministic: byte for byte
    assert SignedNote.parse(GO_NOTE).open(NoteVerifier.parse(GO_VKEY)) == GO_TEXT
    assert SignedNote.parse(SPEC_NOTE).open(NoteVerifier.parse(SPEC_VKEY)) == "This is an example message.\n"
    verifier = NoteVerifier.parse(GO_VKEY)
    expected_id = hashlib.sha256(b"PeterNeumann\n\x01" + verifier.public_key).digest()[:4]
    assert key_id("PeterNeumann", verifier.public_key) == expected_id == bytes.fromhex("c74f20a3")
    # The signature line starts with EM DASH (E2 80 94) and a space.
    assert GO_NOTE.split("\n")[-2].encode()[:4] == b"\xe2\x80\x94 "


def test_note_refusals() -> None:
    go = NoteSigner.parse(GO_SKEY)
    verifier = go.verifier
    other = NoteSigner.generate("PeterNeumann")  # same name, another key: ignored, so "not signed"
    with pytest.raises(NoteError, match="not signed by"):
        SignedNote.parse(sign_note(GO_TEXT, other)).open(verifier)
    forged = GO_NOTE.replace("x08go", "x08gp")
    with pytest.raises(NoteError):
        SignedNote.parse(forged).open(verifier)
    changed = GO_NOTE.replace("cryptography", "cryptographY")
    with pytest.raises(NoteError, match="does not verify"):
        SignedNote.parse(changed).open(verifier)
    with pytest.raises(NoteError):
        SignedNote.parse(GO_NOTE.replace("\u2014", "-"))  # a hyphen is not an em dash
    with pytest.raises(NoteError):
        NoteVerifier.parse(GO_VKEY.replace("c74f20a3", "c74f20a4"))
    with pytest.raises(NoteError):
        NoteSigner.parse("not base64!", default_name=ORIGIN)
    with pytest.raises(NoteError):
        NoteSigner("has space", bytes(32))
    # A note with a second, unknown signer still opens with the known key.
    both = SignedNote.parse(GO_NOTE).with_signature(other.signature(GO_TEXT)).render()
    assert SignedNote.parse(both).open(verifier) == GO_TEXT
    assert "seed" not in repr(go) and base64.b64encode(go.seed).decode() not in repr(go)


def test_checkpoint_body_format() -> None:
    body = CheckpointBody(ORIGIN, 20852163, bytes(range(32)))
    assert body.text() == f"{ORIGIN}\n20852163\n{base64.b64encode(bytes(range(32))).decode()}\n"
    assert CheckpointBody.parse(body.text()) == body
    for bad in (f"{ORIGIN}\n007\n{base64.b64encode(bytes(32)).decode()}\n", f"{ORIGIN}\n7\nAAAA\n", f"{ORIGIN}\n7\n"):
        with pytest.raises(NoteError):
            CheckpointBody.parse(bad)


def test_keys_from_settings_and_key_file(tmp_path: Path) -> None:
    seed = bytes(range(32))
    bare = load_signer(base64.b64encode(seed).decode(), ORIGIN)
    assert bare is not None and bare.name == ORIGIN and bare.seed == seed
    assert load_signer("", ORIGIN, tmp_path / KEY_FILE_NAME) is None
    made = generate_key_file(tmp_path / KEY_FILE_NAME, ORIGIN)
    assert (tmp_path / KEY_FILE_NAME).stat().st_mode & 0o777 == 0o600
    with pytest.raises(FileExistsError):
        generate_key_file(tmp_path / KEY_FILE_NAME, ORIGIN)
    settings = Settings(state_dir=tmp_path, ledger_origin=ORIGIN)
    assert signer_from_settings(settings) == made
    assert verifier_from_settings(settings) == made.verifier
    pinned = Settings(state_dir=tmp_path, ledger_verifier_key=GO_VKEY)
    assert verifier_from_settings(pinned) == NoteVerifier.parse(GO_VKEY)


# --- making checkpoints and proofs ------------------------------------------------------------


def test_checkpoints_extend_and_proofs_verify(ledger_engine: Engine, signer: NoteSigner) -> None:
    assert make_checkpoint(ledger_engine, signer, ORIGIN) is None  # empty ledger: nothing to sign
    ledger_with_checkpoints(ledger_engine, signer, 10, 25, 37)
    assert make_checkpoint(ledger_engine, signer, ORIGIN) is None  # no growth
    stored = checkpoints(ledger_engine)
    assert [c.tree_size for c in stored] == [10, 25, 37]
    newest = latest_checkpoint(ledger_engine)
    assert newest is not None and newest.tree_size == 37
    lines = newest.note.split("\n")
    assert lines[:3] == [ORIGIN, "37", base64.b64encode(newest.root).decode()]
    assert lines[3] == "" and lines[4].startswith(f"\u2014 {ORIGIN} ")
    assert open_checkpoint(newest.note, signer.verifier, ORIGIN) == CheckpointBody(ORIGIN, 37, newest.root)

    # Inclusion: every entry against the newest checkpoint; the leaf is the entry's canonical bytes.
    proofs = prove_entries(ledger_engine, range(1, 38))
    for p, e in zip(proofs, entries(ledger_engine), strict=True):
        assert p.seq == e.seq and p.leaf == canonical_bytes(e.seq, e.draft, e.prev_hash)
        assert p.leaf_hash == e.leaf_hash and p.verify()
        assert open_checkpoint(p.checkpoint, signer.verifier, ORIGIN).root == p.root
    one = prove_entry(ledger_engine, 7, checkpoint_at(ledger_engine, 10))
    assert (one.tree_size, one.verify()) == (10, True)
    as_json = json.loads(json.dumps(one.to_dict()))
    assert as_json["leaf_index"] == 6 and as_json["tree_size"] == 10
    assert not replace(one, leaf=one.leaf + b"x").verify()
    with pytest.raises(NotCovered):
        prove_entry(ledger_engine, 11, checkpoint_at(ledger_engine, 10))
    append(ledger_engine, [draft(38)])
    with pytest.raises(NotCovered):
        prove_entry(ledger_engine, 38)  # not yet under a checkpoint

    # Consistency between every pair of stored checkpoints.
    for old in (10, 25):
        for new in (25, 37):
            if old < new:
                proof = prove_consistency(ledger_engine, old, new)
                assert proof.verify() and proof.to_dict()["new_size"] == new
    assert check(ledger_engine, signer).describe() == (
        "ledger OK: 38 entries, chain intact, consistent with 3 signed checkpoints"
    )


def test_unsigned_verify_says_so(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 5)
    result = verify(ledger_engine)
    assert result.ok and not result.signatures_checked
    assert "signatures NOT checked" in result.describe()


def test_checkpointer_due_every_n_entries_or_t_seconds(ledger_engine: Engine, signer: NoteSigner) -> None:
    published: list[int] = []

    class Recorder:
        def produce(self, topic: str, key: bytes, value: bytes, headers: list, on_delivery) -> None:
            published.append(int(key))
            on_delivery(None, None)

        def flush(self, timeout: float) -> int:
            return 0

    cp = Checkpointer(
        ledger_engine,
        signer,
        ORIGIN,
        # A stand-in that records what would be produced: produce and flush are all it uses.
        Recorder(),  # type: ignore[arg-type]
        TopicNames("x."),
        every_entries=10,
        interval_s=60,
    )
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert cp.tick(t0) is None  # empty
    append(ledger_engine, [draft(i) for i in range(1, 4)])
    first = cp.tick(t0)
    assert first is not None and first.tree_size == 3  # the first checkpoint does not wait
    append(ledger_engine, [draft(i) for i in range(4, 10)])
    assert cp.tick(t0 + timedelta(seconds=1)) is None  # grew 6 < 10, 1 s < 60 s
    second = cp.tick(t0 + timedelta(seconds=61))
    assert second is not None and second.tree_size == 9  # T passed
    append(ledger_engine, [draft(i) for i in range(10, 20)])
    third = cp.tick(t0 + timedelta(seconds=62))
    assert third is not None and third.tree_size == 19  # N reached
    assert cp.tick(t0 + timedelta(seconds=999)) is None  # no growth, no checkpoint
    assert published == [3, 9, 19]
    # A new checkpointer (a restarted processor) republishes the newest first.
    again = Checkpointer(ledger_engine, signer, ORIGIN, Recorder(), TopicNames("x."), 10, 60)  # type: ignore[arg-type]
    assert again.tick(t0 + timedelta(seconds=1000)) is None
    assert published == [3, 9, 19, 19]


# --- tampering, each named ---------------------------------------------------------------


def test_changed_field_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 20, 30)
    tamper(ledger_engine, "UPDATE ledger_entries SET recipient = 'partner-evil' WHERE seq = 13")
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq, result.bad_checkpoint) == (False, 13, None)
    assert "(changed)" in result.describe()
    with pytest.raises(LedgerMismatch, match="entry 13"):
        prove_entry(ledger_engine, 13)


def test_deleted_entry_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 20)
    tamper(ledger_engine, "DELETE FROM ledger_entries WHERE seq = 9")
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq) == (False, 9)
    assert "removed" in (result.problem or "")
    # The removed entry has no proof; a proof reads O(log N) tiles, not the whole ledger, so
    # entry 3's is still given, and still true: it verifies against the signed root.
    with pytest.raises(LedgerMismatch, match="entry 9 is missing"):
        prove_entry(ledger_engine, 9)
    assert prove_entry(ledger_engine, 3).verify()


def test_deleted_entry_renumbered_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 20)
    tamper(
        ledger_engine,
        "DELETE FROM ledger_entries WHERE seq = 9",
        "UPDATE ledger_entries SET seq = -(seq - 1) WHERE seq > 9",
        "UPDATE ledger_entries SET seq = -seq WHERE seq < 0",
    )
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq) == (False, 9)


def test_inserted_entry_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 20)
    stored = entries(ledger_engine)
    # A well-formed entry slipped in at seq 8, linked and hashed for its place; later ones renumbered.
    fake = replace(draft(999), disclosure_id=str(uuid.uuid4()))
    leaf = canonical_bytes(8, fake, stored[6].entry_hash)
    tamper(
        ledger_engine,
        "UPDATE ledger_entries SET seq = -(seq + 1) WHERE seq >= 8",
        "UPDATE ledger_entries SET seq = -seq WHERE seq < 0",
        "INSERT INTO ledger_entries (seq, disclosure_id, event_id, event_type, provider, recipient, agreement_id, "
        "agreement_version, purpose, legal_basis, outcome, reason, fields, consent_mode, consent_version, "
        "subject_key, decided_at, refers_to, event_digest, subjects, prev_hash, entry_hash, leaf_hash) VALUES (8, "
        ":did, :eid, :et, :prov, :rec, :aid, :av, :pur, :lb, :out, :reason, :fields, :cm, :cv, :sk, :at, NULL, "
        ":digest, :subjects, :prev, :h, :l)",
        did=fake.disclosure_id,
        eid=fake.event_id,
        et=fake.event_type,
        prov=fake.provider,
        rec=fake.recipient,
        aid=fake.agreement_id,
        av=fake.agreement_version,
        pur=fake.purpose,
        lb=fake.legal_basis,
        out=fake.outcome,
        reason=fake.reason,
        fields=json.dumps(list(fake.fields), separators=(",", ":")),
        cm=fake.consent_mode,
        cv=fake.consent_version,
        sk=fake.subject_key,
        at=fake.decided_at,
        digest=fake.event_digest,
        subjects=json.dumps(list(fake.subjects)),
        prev=stored[6].entry_hash,
        h=hashlib.sha256(leaf).digest(),
        l=hashlib.sha256(b"\x00" + leaf).digest(),
    )
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq) == (False, 8)
    assert "entry 8 was inserted" in (result.problem or "")


def test_reordered_entries_are_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 20)
    tamper(
        ledger_engine,
        "UPDATE ledger_entries SET seq = CASE seq WHEN 11 THEN -12 ELSE -11 END WHERE seq IN (11, 12)",
        "UPDATE ledger_entries SET seq = -seq WHERE seq < 0",
    )
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq) == (False, 11)


def test_cut_tail_is_caught_by_a_checkpoint(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 10, 30)
    tamper(ledger_engine, "DELETE FROM ledger_entries WHERE seq > 22")
    # The chain alone is intact: only the checkpoint shows that 8 entries went.
    result = check(ledger_engine, signer)
    assert (result.ok, result.first_bad_seq, result.checkpoints) == (False, 23, 1)
    assert "entries 23 to 30 are missing: checkpoint 30 signed a tree of 30 entries" in result.describe()
    with pytest.raises(CheckpointRefused, match="entry 30"):
        make_checkpoint(ledger_engine, signer, ORIGIN)


def test_rewritten_history_is_caught_by_a_checkpoint(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 16, 40, 60)
    tamper(ledger_engine, "UPDATE ledger_entries SET recipient = 'partner-evil' WHERE seq = 27")
    rehash_from(ledger_engine, 27)  # every later hash recomputed: the chain alone sees nothing
    result = check(ledger_engine, signer)
    assert not result.ok and result.checkpoints == 1  # checkpoint 16 still matches
    assert result.first_bad_seq is not None and 17 <= result.first_bad_seq <= 27
    problem = result.problem or ""
    assert "signed checkpoint 40" in problem and "rewritten" in problem
    # Narrowed by the signed tree's subtrees: 40 = 32 + 8, so entries 17..32.
    assert "entries 17 to 32" in problem
    # The rewritten entries no longer hash to the leaves the signed tree holds: no proof.
    for seq in (27, 45):
        with pytest.raises(LedgerMismatch, match=f"entry {seq} does not hash to its leaf"):
            prove_entry(ledger_engine, seq)
    assert prove_entry(ledger_engine, 3).verify()  # before the rewrite: what was signed
    # Later checkpoints extend checkpoint 60's signed frontier, not the rewritten entries,
    # so they stay consistent with everything signed before and the rewrite stays evident.
    append(ledger_engine, [draft(i) for i in range(61, 65)])
    later = make_checkpoint(ledger_engine, signer, ORIGIN)
    assert later is not None and later.tree_size == 64
    assert check(ledger_engine, signer).problem == problem


def test_rewrite_with_a_replaced_checkpoint_is_caught(ledger_engine: Engine, signer: NoteSigner) -> None:
    """A forger rewrites entry 5, rehashes, and replaces checkpoint 12 with one signed by their own key."""
    ledger_with_checkpoints(ledger_engine, signer, 12)
    tamper(ledger_engine, "UPDATE ledger_entries SET purpose = 'something else' WHERE seq = 5")
    rehash_from(ledger_engine, 5)
    forger = NoteSigner.generate(ORIGIN)  # same name, another key
    from ledger import merkle

    new_root = merkle.root([e.leaf_hash for e in entries(ledger_engine)])
    frontier = merkle.Frontier()
    frontier.extend(e.leaf_hash for e in entries(ledger_engine))
    note = sign_note(CheckpointBody(ORIGIN, 12, new_root).text(), forger)
    tamper_checkpoints(
        ledger_engine,
        "UPDATE ledger_checkpoints SET root = :r, note = :n, frontier = :f WHERE tree_size = 12",
        r=new_root,
        n=note,
        f=frontier.to_bytes(),
    )
    result = check(ledger_engine, signer)
    assert (result.ok, result.bad_checkpoint) == (False, 12)
    assert "forged or replaced" in result.describe()
    # Without the ledger's key the substitution would pass: the public key is what makes it evident.
    assert verify(ledger_engine).ok


def test_forged_signature_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 8, 16)
    c8 = checkpoint_at(ledger_engine, 8)
    assert c8 is not None
    sig = NoteSignature.parse(c8.note.split("\n")[-2])
    flipped = replace(sig, signature=bytes([sig.signature[0] ^ 1]) + sig.signature[1:])
    forged = SignedNote(SignedNote.parse(c8.note).text, (flipped,)).render()
    tamper_checkpoints(ledger_engine, "UPDATE ledger_checkpoints SET note = :n WHERE tree_size = 8", n=forged)
    result = check(ledger_engine, signer)
    assert (result.ok, result.bad_checkpoint, result.first_bad_seq) == (False, 8, None)
    assert result.describe().startswith("ledger BROKEN at checkpoint 8: its note does not verify")


def test_checkpoint_root_column_changed_is_named(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 8)
    tamper_checkpoints(ledger_engine, "UPDATE ledger_checkpoints SET root = :r WHERE tree_size = 8", r=bytes(32))
    result = check(ledger_engine, signer)
    assert (result.ok, result.bad_checkpoint) == (False, 8)
    assert "differs from its signed note" in (result.checkpoint_problem or "")
    append(ledger_engine, [draft(9)])
    with pytest.raises(CheckpointRefused, match="checkpoint 8"):
        make_checkpoint(ledger_engine, signer, ORIGIN)


# --- cosignatures -------------------------------------------------------------------------


def test_cosignatures_are_verified_before_they_are_stored(ledger_engine: Engine, signer: NoteSigner) -> None:
    ledger_with_checkpoints(ledger_engine, signer, 6)
    auditor = NoteSigner.generate("auditor.example/accord")
    c6 = checkpoint_at(ledger_engine, 6)
    assert c6 is not None
    line = auditor.signature(SignedNote.parse(c6.note).text).line
    stored = add_cosignature(ledger_engine, 6, line, auditor.verifier.vkey)
    assert stored.cosigner == "auditor.example/accord" and stored.key_id == auditor.verifier.key_id.hex()
    add_cosignature(ledger_engine, 6, line, auditor.verifier.vkey)  # again: a no-op
    note = cosigned_note(ledger_engine, 6)
    assert note is not None
    assert SignedNote.parse(note).open(auditor.verifier) == SignedNote.parse(note).open(signer.verifier)
    # A line over other text, or checked against another key, is refused.
    wrong = auditor.signature("something else\n").line
    with pytest.raises(NoteError):
        add_cosignature(ledger_engine, 6, wrong, auditor.verifier.vkey)
    with pytest.raises(NoteError):
        add_cosignature(ledger_engine, 6, line, NoteSigner.generate("auditor.example/accord").verifier.vkey)
    with pytest.raises(LookupError):
        add_cosignature(ledger_engine, 7, line, auditor.verifier.vkey)
    assert check(ledger_engine, signer).ok
    # Proofs carry the cosigned note.
    assert auditor.name in prove_entry(ledger_engine, 2).checkpoint
    # A replaced cosignature is named.
    tamper_checkpoints(ledger_engine, "UPDATE ledger_cosignatures SET signature_line = :l", l=wrong.rstrip("\n"))
    result = check(ledger_engine, signer)
    assert (result.ok, result.bad_checkpoint) == (False, 6)
    assert "cosignature of auditor.example/accord" in (result.checkpoint_problem or "")


# --- publication on the real embedded broker -----------------------------------------------------


def test_checkpoint_published_and_verifiable(broker: str, ledger_engine: Engine, signer: NoteSigner) -> None:
    names = TopicNames(f"t{uuid.uuid4().hex[:8]}.")
    settings = Settings(
        bootstrap_servers=broker, topic_prefix=names.prefix, session_timeout_ms=2000, heartbeat_interval_ms=500
    )
    catalogue = [s for s in names.catalogue({}) if s.name == names.ledger_checkpoints]
    assert create_topics(kafka.admin(settings), catalogue) == {names.ledger_checkpoints: "created"}
    append(ledger_engine, [draft(i) for i in range(1, 15)])
    checkpointer = Checkpointer(ledger_engine, signer, ORIGIN, kafka.producer(settings), names, 10, 60)
    made = checkpointer.tick()
    assert made is not None and made.tree_size == 14

    consumer = kafka.consumer(settings, f"{names.prefix}auditor")
    consumer.subscribe([names.ledger_checkpoints])
    try:
        msg = None
        while msg is None:  # bounded by the deadline below, not by a sleep
            msg = consumer.poll(1.0)
            if msg is not None and msg.error():
                raise AssertionError(msg.error())
            assert datetime.now(UTC) < made.created_at + timedelta(seconds=60), "checkpoint never arrived"
    finally:
        consumer.close()
    assert msg.key() == b"14"
    value = msg.value()
    assert value is not None
    note = value.decode()
    body = open_checkpoint(note, NoteVerifier.parse(signer.verifier.vkey), ORIGIN)
    assert (body.tree_size, body.root) == (14, made.root)
    assert headers_of(msg)["accord.tree_size"] == b"14"
    # An auditor reads every published note back and checks the ledger against them.
    kept = [open_checkpoint(n, signer.verifier, ORIGIN) for n in read_published_notes(settings, names)]
    assert kept == [body]
    assert verify(ledger_engine, signer.verifier, ORIGIN, kept).ok


def test_a_removed_checkpoint_is_caught_by_a_kept_copy(ledger_engine: Engine, signer: NoteSigner) -> None:
    """Rewrite entry 15, rehash, and delete checkpoint 20, the one that covered it."""
    ledger_with_checkpoints(ledger_engine, signer, 10, 20)
    c20 = checkpoint_at(ledger_engine, 20)
    assert c20 is not None
    kept = [open_checkpoint(c20.note, signer.verifier, ORIGIN)]
    tamper(ledger_engine, "UPDATE ledger_entries SET reason = 'rewritten' WHERE seq = 15")
    rehash_from(ledger_engine, 15)
    tamper_checkpoints(ledger_engine, "DELETE FROM ledger_checkpoints WHERE tree_size = 20")
    assert check(ledger_engine, signer).ok  # what the ledger still holds agrees with itself...
    result = verify(ledger_engine, signer.verifier, ORIGIN, kept)  # ...not with what others kept
    assert (result.ok, result.bad_checkpoint) == (False, 20)
    assert "a copy kept outside the ledger has it" in result.describe()
    assert result.first_bad_seq is not None and 11 <= result.first_bad_seq <= 15


# --- the command line (SQLite, as the demo) -----------------------------------------------


def accord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_keygen_checkpoint_prove_cosign_verify(tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    env = {"ACCORD_STATE_DIR": str(tmp_path), "ACCORD_LEDGER_URL": "", "ACCORD_LEDGER_SIGNING_KEY": ""}
    assert accord("ledger", "init", env=env).returncode == 0
    refused = accord("ledger", "checkpoint", "--no-publish", env=env)
    assert refused.returncode == 2 and "no signing key" in refused.stderr
    made = accord("ledger", "keygen", env=env)
    assert made.returncode == 0, made.stderr
    vkey = made.stdout.strip().splitlines()[-1]
    assert NoteVerifier.parse(vkey).name == ORIGIN
    assert accord("ledger", "keygen", env=env).stdout.strip().endswith(vkey)  # kept, not overwritten

    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    append(engine, [draft(i) for i in range(1, 13)])
    out = accord("ledger", "checkpoint", "--no-publish", env=env)
    assert out.returncode == 0 and "new checkpoint at tree size 12" in out.stdout, out.stderr
    kept_note = tmp_path / "checkpoint-12.note"
    kept_note.write_text(out.stdout.split("\n\n", 1)[1], encoding="utf-8")  # what an auditor keeps
    append(engine, [draft(i) for i in range(13, 21)])
    assert "tree size 20" in accord("ledger", "checkpoint", "--no-publish", env=env).stdout

    proof = json.loads(accord("ledger", "prove", "--entry", "5", env=env).stdout)
    assert proof["seq"] == 5 and proof["tree_size"] == 20
    body = open_checkpoint(proof["checkpoint"], NoteVerifier.parse(vkey), ORIGIN)
    from ledger import merkle

    leaf_hash = merkle.leaf_hash(base64.b64decode(proof["leaf"]))
    assert merkle.verify_inclusion(leaf_hash, 4, 20, [base64.b64decode(p) for p in proof["proof"]], body.root)
    consistency = json.loads(accord("ledger", "prove", "--from-size", "12", "--to-size", "20", env=env).stdout)
    assert merkle.verify_consistency(
        12,
        20,
        base64.b64decode(consistency["old_root"]),
        base64.b64decode(consistency["new_root"]),
        [base64.b64decode(p) for p in consistency["proof"]],
    )
    assert accord("ledger", "prove", "--entry", "99", env=env).returncode == 2

    auditor_key = tmp_path / "auditor.key"
    assert accord("ledger", "keygen", "--name", "auditor.example", "--out", str(auditor_key), env=env).returncode == 0
    cosigned = accord("ledger", "cosign", "--sign-with", str(auditor_key), env=env)
    assert cosigned.returncode == 0 and "auditor.example" in cosigned.stdout, cosigned.stderr
    line = cosigned.stdout.strip().splitlines()[-1]
    bad = accord("ledger", "cosign", "--size", "12", "--line", line, "--vkey", vkey, env=env)
    assert bad.returncode == 1 and "refused" in bad.stderr

    ok = accord("ledger", "verify", "--notes", str(kept_note), env=env)
    assert ok.returncode == 0 and "consistent with 2 signed checkpoints" in ok.stdout, ok.stdout + ok.stderr
    kept_note.write_text(kept_note.read_text(encoding="utf-8").replace("12\n", "11\n", 1), encoding="utf-8")
    forged = accord("ledger", "verify", "--notes", str(kept_note), env=env)
    assert forged.returncode == 1 and "does not verify" in forged.stdout
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER ledger_entries_no_delete")
        conn.exec_driver_sql("DELETE FROM ledger_entries WHERE seq > 15")
    engine.dispose()
    broken = accord("ledger", "verify", env=env)
    assert broken.returncode == 1 and "entries 16 to 20 are missing" in broken.stdout


# --- the leaf encoding, rebuilt from docs/ledger.md alone ------------------------------------------


def _zigzag(n: int) -> bytes:
    """Avro long/int: zig-zag, then 7 bits a byte, least significant first, high bit = more."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode("utf-8")
    return _zigzag(len(data)) + data


def _optional(s: str | None) -> bytes:
    return b"\x00" if s is None else b"\x02" + _string(s)


def documented_leaf(seq: int, e, prev_hash: bytes) -> bytes:  # e: EntryDraft
    """The canonical bytes, field by field, exactly as docs/ledger.md specifies them."""
    outcomes = ["DISCLOSED", "WITHHELD", "RETRACTED", "RECEIVED", "NOT_COVERED"]
    millis = (e.decided_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)

    def strings(values: tuple[str, ...]) -> bytes:
        return (_zigzag(len(values)) + b"".join(_string(v) for v in values) if values else b"") + b"\x00"

    return b"".join(
        [
            _zigzag(seq),
            _string(e.disclosure_id),
            _string(e.event_id),
            _string(e.event_type),
            _string(e.provider),
            _string(e.recipient),
            _string(e.agreement_id),
            _zigzag(e.agreement_version),
            _string(e.purpose),
            _string(e.legal_basis),
            _zigzag(outcomes.index(e.outcome)),
            _optional(e.reason),
            strings(e.fields),
            _string(e.consent_mode),
            _zigzag(e.consent_version),
            _string(e.subject_key),
            _zigzag(millis),
            _optional(e.refers_to),
            _string(e.event_digest),
            strings(e.subjects),
            prev_hash,
        ]
    )


def test_leaf_encoding_as_documented(ledger_engine: Engine, signer: NoteSigner) -> None:
    """Someone holding an export and docs/ledger.md rebuilds every leaf and the signed root."""
    drafts = [draft(i) for i in range(1, 40)]
    drafts[5] = replace(drafts[5], purpose="caf\u00e9 \u2014 non-ASCII " * 10, refers_to=drafts[1].disclosure_id)
    drafts[6] = replace(drafts[6], consent_version=-3, agreement_version=300)
    drafts[7] = not_covered(drafts[7])
    drafts[8] = replace(drafts[8], subjects=("nhs:9434765870", "local:b\u00e9b\u00e9"), event_digest="")
    append(ledger_engine, drafts)
    made = make_checkpoint(ledger_engine, signer, ORIGIN)
    assert made is not None
    from ledger import merkle

    leaves = []
    for e in entries(ledger_engine):
        leaf = documented_leaf(e.seq, e.draft, e.prev_hash)
        assert leaf == canonical_bytes(e.seq, e.draft, e.prev_hash)
        assert hashlib.sha256(leaf).digest() == e.entry_hash
        leaves.append(leaf)
    assert merkle.root([merkle.leaf_hash(x) for x in leaves]) == made.root


# --- the running processor checkpoints and publishes ----------------------------------------------


def test_processor_signs_and_publishes_checkpoints(broker: str, tmp_path: Path) -> None:
    """The real processor, as the app role, with a key in its state directory (`accord ledger keygen`)."""
    import random
    import time

    from agreements import load_dir
    from producers.synthetic import build_scenario
    from tests.bus import Bus, make_settings
    from tests.conftest import fresh_role_database

    with fresh_role_database() as db:
        # The first checkpoint is made as soon as the ledger grows, often mid-batch; the one
        # covering everything waits for the interval, so the test sets one well under its deadline.
        settings = make_settings(broker, db.app_url, tmp_path).model_copy(update={"checkpoint_interval_s": 2.0})
        key = generate_key_file(tmp_path / KEY_FILE_NAME, settings.ledger_origin)
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        try:
            scenario = build_scenario(n_events=30, seed=random.SystemRandom().randrange(1 << 30))
            bus.publish([(e.event_type, e.record) for e in scenario.events])
            size = ledger_size(db.owner)
            assert size > 0
            deadline = time.monotonic() + 60
            kept: list[CheckpointBody] = []
            while not kept or kept[-1].tree_size < size:  # the checkpoint covering everything so far
                assert time.monotonic() < deadline, "no checkpoint covering the ledger was published"
                notes = read_published_notes(settings, bus.names)
                kept = sorted(
                    (open_checkpoint(n, key.verifier, settings.ledger_origin) for n in notes), key=lambda b: b.tree_size
                )
                if not kept or kept[-1].tree_size < size:
                    time.sleep(0.5)  # the processor ticks once a second
        finally:
            bus.stop_processor()
        assert [c.tree_size for c in checkpoints(db.owner)] == sorted({b.tree_size for b in kept})
        result = verify(db.owner, key.verifier, settings.ledger_origin, kept)
        assert result.ok, result.describe()
        assert prove_entry(db.owner, size).verify()


def test_documented_examples() -> None:
    """docs/ledger.md's worked example (bytes, leaf hash) and signed checkpoint are what the code makes."""
    import re

    from ledger import GENESIS_HASH, EntryDraft, merkle
    from ledger.checkpoint import CheckpointBody

    doc = (Path(__file__).resolve().parents[2] / "docs" / "ledger.md").read_text(encoding="utf-8")
    leaf_section = doc.split("### The leaf, byte by byte", 1)[1]
    hex_block = leaf_section.split("```\n", 2)[1]
    documented = bytes.fromhex(hex_block.replace("\n", " "))
    entry = EntryDraft(
        "d1",
        "e1",
        "custody",
        "gmp",
        "cps",
        "a",
        1,
        "p",
        "l",
        "DISCLOSED",
        None,
        ("x",),
        "not-required",
        0,
        "s",
        datetime(2026, 1, 1, tzinfo=UTC),
        None,
        hashlib.sha256(b"abc").hexdigest(),
        ("t",),
    )
    leaf = canonical_bytes(1, entry, GENESIS_HASH)
    assert documented == leaf == documented_leaf(1, entry, GENESIS_HASH)
    assert f"is these {len(leaf)} bytes" in leaf_section
    [leaf_hash] = re.findall(r"its leaf hash is `([0-9a-f]{64})`", leaf_section)
    assert bytes.fromhex(leaf_hash) == merkle.leaf_hash(leaf)

    signed_section = doc.split("## Signed checkpoints", 1)[1]
    note = signed_section.split("```\n", 2)[1]
    [vkey] = re.findall(r"e\.g\. `(accord\.example/ledger\+[0-9a-f]{8}\+[A-Za-z0-9+/=]+)`", signed_section)
    signer = NoteSigner(
        "accord.example/ledger", hashlib.sha256(b"accord documentation example key; never use").digest()
    )
    assert signer.verifier.vkey == vkey
    body = open_checkpoint(note, NoteVerifier.parse(vkey), "accord.example/ledger")
    assert (body.tree_size, body.root) == (1, merkle.leaf_hash(leaf))
    assert note == sign_note(CheckpointBody("accord.example/ledger", 1, body.root).text(), signer)
