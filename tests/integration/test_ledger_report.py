"""Subject reports: exactly the subject's entries, proofs that verify, deferred ones counted not shown."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from io import BytesIO

import fastavro
import pytest
from sqlalchemy import event

from agreements import load_dir
from bus.settings import PACKAGE_ROOT
from ledger import EntryDraft, append
from ledger.checkpoint import make_checkpoint, open_checkpoint
from ledger.entry import SCHEMA_PATH
from ledger.merkle import leaf_hash, verify_inclusion
from ledger.note import NoteSigner
from ledger.report import InvalidSubjectKey, collect, render_html, render_json, subject_entries
from producers.nhs_number import generate
from tests.conftest import RoleDatabase

AGREEMENTS = {a.key: a for a in load_dir(PACKAGE_ROOT / "agreements" / "examples")}
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
ORIGIN = "accord.test/ledger"


def _entry(key: str, subject: str, i: int, outcome: str = "DISCLOSED", **changes) -> EntryDraft:
    a = AGREEMENTS[key]
    d = EntryDraft(
        disclosure_id=f"d-{subject}-{i}",
        event_id=f"e-{subject}-{i}",
        event_type=a.event_types[0],
        provider=a.providers[0],
        recipient=a.recipients[0],
        agreement_id=a.id,
        agreement_version=a.version,
        purpose=a.purpose.value,
        legal_basis=a.legal_basis,
        outcome=outcome,
        reason=None if outcome == "DISCLOSED" else "consent denied (consent record 3)",
        fields=a.fields[a.event_types[0]][:3] if outcome == "DISCLOSED" else (),
        consent_mode=a.consent_mode.value,
        consent_version=3 if outcome != "DISCLOSED" else 0,
        subject_key=f"nhs:{subject}",
        decided_at=T0 + timedelta(minutes=i),
    )
    return replace(d, **changes)


@pytest.fixture
def people() -> tuple[str, str]:
    rng = random.Random(20261124)
    return generate(rng), generate(rng)


def _ledger(role_db: RoleDatabase, me: str, other: str) -> dict[str, list[int]]:
    drafts = [
        _entry("natal-care-to-health-visiting@v1", me, 1),
        _entry("custody-to-prosecution@v1", other, 2),
        _entry("referral-to-mash@v1", me, 3),  # deferred transparency
        _entry("natal-care-to-health-visiting@v1", me, 4, outcome="WITHHELD"),
        _entry("referral-to-mash@v1", other, 5),
        # Record text with markup in it must be escaped in the HTML.
        _entry("custody-to-prosecution@v1", me, 6, legal_basis="<script>alert('x')</script> & co"),
    ]
    out = append(role_db.app, drafts)
    mine = [a.seq for a, d in zip(out, drafts, strict=True) if d.subject_key == f"nhs:{me}"]
    return {
        "mine_visible": [
            s
            for s, d in zip(mine, [d for d in drafts if d.subject_key == f"nhs:{me}"], strict=True)
            if d.agreement_id != "referral-to-mash"
        ]
    }


def test_report_lists_exactly_the_subjects_visible_entries_with_verifying_proofs(role_db: RoleDatabase, people) -> None:
    me, other = people
    expected = _ledger(role_db, me, other)["mine_visible"]
    signer = NoteSigner.generate(ORIGIN)
    make_checkpoint(role_db.app, signer, ORIGIN)
    # A later entry, not yet under a checkpoint: shown, without a proof.
    [late] = append(role_db.app, [_entry("natal-care-to-health-visiting@v1", me, 7)])

    report = collect(role_db.app, me, AGREEMENTS, as_of=date(2026, 11, 24))
    assert [i.seq for i in report.items] == [*expected, late.seq]
    assert report.left_out_deferred == 1 and report.unproven == 1
    assert {i.outcome for i in report.items} == {"DISCLOSED", "WITHHELD"}
    first = report.items[0]
    assert first.agreement_title == AGREEMENTS["natal-care-to-health-visiting@v1"].title
    assert first.fields and first.consent_mode == AGREEMENTS["natal-care-to-health-visiting@v1"].consent_mode.value

    data = json.loads(render_json(report))
    assert data["left_out_deferred"] == 1
    body = open_checkpoint(data["checkpoint"], signer.verifier, ORIGIN)
    schema = fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text()))
    for entry in data["entries"]:
        proof = entry["proof"]
        if entry["seq"] == late.seq:
            assert proof is None
            continue
        leaf = base64.b64decode(proof["leaf"])
        # The leaf is the entry's canonical bytes: it decodes to this subject's entry ...
        decoded = fastavro.schemaless_reader(BytesIO(leaf), schema)
        assert isinstance(decoded, dict)
        assert decoded["subject_key"] == f"nhs:{me}" and decoded["seq"] == entry["seq"]
        assert decoded["disclosure_id"] == entry["disclosure_id"]
        # ... and is in the tree the signed checkpoint commits to.
        assert base64.b64decode(proof["root"]) == body.root and proof["tree_size"] == body.tree_size
        assert verify_inclusion(
            leaf_hash(leaf),
            entry["seq"] - 1,
            proof["tree_size"],
            [base64.b64decode(p) for p in proof["proof"]],
            body.root,
        )
    # Never another subject's entries.
    assert other not in render_json(report) and other not in render_html(report)

    # After the deferred agreement's date, the referral shows too.
    later = collect(role_db.app, me, AGREEMENTS, as_of=date(2027, 3, 31))
    assert later.left_out_deferred == 0 and len(later.items) == len(report.items) + 1


def test_html_is_escaped_and_self_contained(role_db: RoleDatabase, people) -> None:
    me, other = people
    _ledger(role_db, me, other)
    page = render_html(collect(role_db.app, me, AGREEMENTS, as_of=date(2026, 11, 24)))
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "src=" not in page
    assert "1 further entry is not shown yet" in page
    assert AGREEMENTS["custody-to-prosecution@v1"].title in page
    assert "No proof yet" in page  # no checkpoint was made


@pytest.mark.parametrize(
    "bad",
    [
        "943476591",
        "9434765918",
        "94347659l9",
        "",
        "NHS:9434765919",
        "nhs:9434765919 ",
        "943 476 5919",
        "pnc:25/123456a",
        "passport:1",
    ],
)
def test_malformed_subjects_are_refused_before_the_ledger_is_read(bad: str) -> None:
    with pytest.raises(InvalidSubjectKey):
        collect(None, bad, AGREEMENTS)  # type: ignore[arg-type]  # never reaches the engine


def _custody(subject_key: str, i: int, **changes) -> EntryDraft:
    return _entry(
        "custody-to-prosecution@v1",
        "x",
        i,
        subject_key=subject_key,
        disclosure_id=f"d-{subject_key}-{i}",
        event_id=f"e-{subject_key}-{i}",
        **changes,
    )


@pytest.mark.parametrize(
    ("key", "near", "words"),
    [
        ("pnc:25/123456A", "pnc:25/1234567A", "Police National Computer id 25/123456A"),
        # `_` is SQL LIKE's one-character wildcard: the near miss must not match.
        ("local:salford_council:LCS_12", "local:salford_council:LCSX12", "record LCS_12 at salford_council"),
    ],
)
def test_reports_for_pnc_and_local_subjects(role_db: RoleDatabase, people, key: str, near: str, words: str) -> None:
    me, _other = people
    out = append(
        role_db.app,
        [
            _custody(key, 1),
            _custody(near, 2),
            _custody(f"nhs:{me}", 3, subjects=(near,)),
            _custody(key, 4),
        ],
    )
    report = collect(role_db.app, key, AGREEMENTS, as_of=date(2026, 11, 24))
    assert [i.seq for i in report.items] == [out[0].seq, out[3].seq]
    data = json.loads(render_json(report))
    assert data["subject"] == {"key": key, "kind": key.partition(":")[0]}
    page = render_html(report)
    assert words in page and near not in page and me not in page


def test_a_baby_is_found_in_the_natal_care_entries_about_them(role_db: RoleDatabase, people) -> None:
    """The baby's NHS number was shared in the mother's event: the baby's report shows it, with its aftermath."""
    mother, baby = people
    natal = "natal-care-to-health-visiting@v1"
    birth = _entry(natal, mother, 1, subjects=(f"nhs:{baby}",))
    unrelated = _entry(natal, mother, 2)  # the mother alone
    # A retraction and a receipt of the birth disclosure, filed under the mother only.
    retracted = _entry(natal, mother, 3, outcome="RETRACTED", refers_to=birth.disclosure_id)
    received = _entry(natal, mother, 4, outcome="RECEIVED", refers_to=birth.disclosure_id, reason=None)
    out = append(role_db.app, [birth, unrelated, retracted, received])

    report = collect(role_db.app, baby, AGREEMENTS, as_of=date(2026, 11, 24))  # a bare NHS number works
    assert report.subject_key == f"nhs:{baby}"
    assert [(i.seq, i.outcome) for i in report.items] == [(out[0].seq, "DISCLOSED"), (out[2].seq, "RETRACTED")]
    assert report.items[0].acknowledged_at == received.decided_at
    assert json.loads(render_json(report))["subject"] == {"key": f"nhs:{baby}", "kind": "nhs", "nhs_number": baby}
    # The mother's report still has all of hers.
    assert [i.seq for i in collect(role_db.app, f"nhs:{mother}", AGREEMENTS, as_of=date(2026, 11, 24)).items] == [
        out[0].seq,
        out[1].seq,
        out[2].seq,
    ]


def test_report_command(role_db: RoleDatabase, people, tmp_path) -> None:
    me, other = people
    _ledger(role_db, me, other)
    env = {**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "accord.cli", "ledger", "report", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    ok = run("--subject", me, "--format", "json", "--as-of", "2026-11-24")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["left_out_deferred"] == 1
    out = tmp_path / "report.html"
    assert run("--subject", me, "--format", "html", "--out", str(out)).returncode == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    bad = run("--subject", me[:9] + str((int(me[9]) + 1) % 10))
    assert bad.returncode == 2 and "Modulus 11" in bad.stderr
    for text, reason in [(f"NHS:{me}", "lower case"), (f"nhs:{me} ", "contains spaces")]:
        refused = run("--subject", text)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and reason in refused.stderr
    prefixed = run("--subject", f"nhs:{me}", "--as-of", "2026-11-24")
    assert prefixed.returncode == 0 and json.loads(prefixed.stdout) == {
        **json.loads(ok.stdout),
        "generated_at": json.loads(prefixed.stdout)["generated_at"],
    }


def test_report_on_a_tampered_ledger_gives_no_proofs_but_an_error(role_db: RoleDatabase, people, tmp_path) -> None:
    from sqlalchemy import text

    from ledger.guard import install_guards

    me, other = people
    _ledger(role_db, me, other)
    signer = NoteSigner.generate(ORIGIN)
    make_checkpoint(role_db.app, signer, ORIGIN)
    with role_db.owner.begin() as conn:  # the owner, behind the triggers' back
        conn.execute(text("ALTER TABLE ledger_entries DISABLE TRIGGER ALL"))
        conn.execute(text("UPDATE ledger_entries SET recipient = 'someone-else' WHERE seq = 1"))
        install_guards(conn)
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "ledger", "report", "--subject", me],
        env={**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "accord ledger verify" in result.stderr and result.stdout == ""


def test_entries_read_by_the_caller_are_not_read_again_and_give_the_same_report(role_db: RoleDatabase, people) -> None:
    """The citizen's page reads the subject's entries for itself and hands them to collect."""
    me, other = people
    _ledger(role_db, me, other)
    make_checkpoint(role_db.app, NoteSigner.generate(ORIGIN), ORIGIN)
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    now = datetime(2026, 11, 24, 12, tzinfo=UTC)
    expected = collect(role_db.app, me, AGREEMENTS, now=now)
    stored = subject_entries(role_db.app, f"nhs:{me}")
    event.listen(role_db.app, "before_cursor_execute", seen)
    try:
        given = collect(role_db.app, me, AGREEMENTS, now=now, stored=stored)
    finally:
        event.remove(role_db.app, "before_cursor_execute", seen)
    assert given == expected
    by_subject = [s for s in statements if "subject" in s.partition("WHERE")[2]]  # subject_entries' look-ups
    assert statements and not by_subject, by_subject
