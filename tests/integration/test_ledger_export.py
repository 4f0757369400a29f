"""Ledger exports re-verified from the file alone: leaves, chain links, inclusion proofs, signature."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger import append
from ledger.checkpoint import make_checkpoint
from ledger.export import export_rows, render_csv, render_jsonl, verify_export
from ledger.note import NoteSigner
from ledger.proofs import NotCovered
from tests.conftest import RoleDatabase
from tests.integration.test_ledger import draft

ORIGIN = "accord.test/export"


@pytest.fixture
def signed(role_db: RoleDatabase) -> NoteSigner:
    """30 entries under a checkpoint, then 5 more that no checkpoint covers yet."""
    signer = NoteSigner.generate(ORIGIN)
    append(role_db.app, [draft(i, "x") for i in range(1, 31)])
    make_checkpoint(role_db.app, signer, ORIGIN)
    append(role_db.app, [draft(i, "x") for i in range(31, 36)])
    return signer


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_verifies_offline(role_db: RoleDatabase, signed: NoteSigner, fmt: str, tmp_path: Path) -> None:
    export = export_rows(role_db.app, 5, 25)
    path = tmp_path / f"export.{fmt}"
    path.write_text("".join(render_jsonl(export) if fmt == "jsonl" else render_csv(export)), encoding="utf-8")

    text = path.read_text(encoding="utf-8")  # from here on: the file alone, no database
    result = verify_export(text, signed.verifier, ORIGIN)
    assert result.ok, result.problems
    assert (result.entries, result.tree_size, result.signature_checked) == (21, 30, True)
    assert "21 entries" in result.describe() and "signature verified" in result.describe()
    unsigned = verify_export(text)
    assert unsigned.ok and "NOT checked" in unsigned.describe()
    with path.open(encoding="utf-8", newline="") as lines:  # read as it is checked: any size, bounded memory
        streamed = verify_export(lines, signed.verifier, ORIGIN)
    assert (streamed.ok, streamed.entries, streamed.tree_size) == (True, 21, 30)


def _jsonl(role_db: RoleDatabase) -> list[dict]:
    return [json.loads(line) for line in "".join(render_jsonl(export_rows(role_db.app, 1, 30))).splitlines()]


def _text(lines: list[dict]) -> str:
    return "".join(json.dumps(obj) + "\n" for obj in lines)


def test_tampered_exports_are_caught(role_db: RoleDatabase, signed: NoteSigner) -> None:
    lines = _jsonl(role_db)
    changed = [dict(o) for o in lines]
    changed[10]["recipient"] = "partner-evil"  # the readable column, not the leaf
    result = verify_export(_text(changed), signed.verifier, ORIGIN)
    assert not result.ok and any("entry 10: columns recipient differ" in p for p in result.problems)

    removed = lines[:5] + lines[6:]
    result = verify_export(_text(removed), signed.verifier, ORIGIN)
    assert any("entry 6: seq does not follow 4" in p for p in result.problems)

    import base64

    forged = [dict(o) for o in lines]
    leaf = bytearray(base64.b64decode(forged[3]["leaf"]))
    leaf[-40] ^= 1
    forged[3]["leaf"] = base64.b64encode(bytes(leaf)).decode()
    result = verify_export(_text(forged), signed.verifier, ORIGIN)
    assert any("entry 3: inclusion proof does not lead" in p for p in result.problems)

    other_key = NoteSigner.generate(ORIGIN)
    result = verify_export(_text(lines), other_key.verifier, ORIGIN)
    assert not result.ok and result.problems[0].startswith("checkpoint:")


def test_export_beyond_the_newest_checkpoint_is_refused(role_db: RoleDatabase, signed: NoteSigner) -> None:
    with pytest.raises(NotCovered):
        export_rows(role_db.app, 25, 33)


def test_export_commands(role_db: RoleDatabase, signed: NoteSigner, tmp_path: Path) -> None:
    env = {**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)}

    def accord(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "accord.cli", "ledger", *args], env=env, capture_output=True, text=True, timeout=120
        )

    out = tmp_path / "range.csv"
    made = accord("export", "--from", "1", "--to", "30", "--format", "csv", "--out", str(out))
    assert made.returncode == 0, made.stderr
    checked = accord("verify-export", str(out), "--key", signed.verifier.vkey)
    assert checked.returncode == 0 and "export OK: 30 entries" in checked.stdout
    out.write_text(out.read_text().replace("partner-1", "partner-9", 1))
    assert accord("verify-export", str(out), "--key", signed.verifier.vkey).returncode == 1
    refused = accord("export", "--from", "1", "--to", "35")
    assert refused.returncode == 2 and "not covered" in refused.stderr
    make_checkpoint(role_db.app, signed, ORIGIN)
    newer = tmp_path / "newer.jsonl"
    assert accord("export", "--from", "31", "--to", "35", "--since", "30", "--out", str(newer)).returncode == 0
    checked = accord("verify-export", str(newer), "--key", signed.verifier.vkey)
    assert checked.returncode == 0 and "extends checkpoint(s) 30" in checked.stdout


def test_export_carries_consistency_from_a_checkpoint_the_reader_holds(
    role_db: RoleDatabase, signed: NoteSigner
) -> None:
    make_checkpoint(role_db.app, signed, ORIGIN)  # a second checkpoint, of 35 entries
    export = export_rows(role_db.app, 31, 35, since=[30])
    text = "".join(render_jsonl(export))
    result = verify_export(text, signed.verifier, ORIGIN)
    assert result.ok, result.problems
    assert result.consistent_with == [30] and "extends checkpoint(s) 30" in result.describe()
    csv_result = verify_export("".join(render_csv(export)), signed.verifier, ORIGIN)
    assert csv_result.ok and csv_result.consistent_with == [30]

    header = json.loads(text.splitlines()[0])
    header["consistency"][0]["proof"][0] = "A" * 43 + "="  # 32 zero bytes instead of the first hash
    broken = json.dumps(header) + "\n" + "".join(text.splitlines(keepends=True)[1:])
    bad = verify_export(broken, signed.verifier, ORIGIN)
    assert not bad.ok and any("consistency from checkpoint 30" in p for p in bad.problems)


def test_an_export_missing_a_column_is_a_finding(role_db: RoleDatabase, signed: NoteSigner) -> None:
    """A file from before event_digest and subjects, or with a column cut: named, never a traceback."""
    lines = _jsonl(role_db)
    for obj in lines[1:]:
        del obj["subjects"]
    result = verify_export(_text(lines), signed.verifier, ORIGIN)
    assert not result.ok
    assert result.describe() == "export BROKEN: not an accord-ledger-export/2 file: column 'subjects' is missing"
    records = list(csv.reader(io.StringIO("".join(render_csv(export_rows(role_db.app, 1, 3))))))
    gone = records[0].index("event_digest")
    cut = io.StringIO()
    csv.writer(cut, lineterminator="\n").writerows([r[:gone] + r[gone + 1 :] for r in records])
    assert verify_export(cut.getvalue()).describe() == (
        "export BROKEN: not an accord-ledger-export/2 file: column 'event_digest' is missing"
    )


def test_entries_cut_from_either_end_are_caught(role_db: RoleDatabase, signed: NoteSigner) -> None:
    """Each remaining entry's chain and proof still hold: only the stated range tells what is missing."""
    lines = _jsonl(role_db)  # the header, then entries 1..30
    header, entries = lines[0], lines[1:]
    assert (
        verify_export(_text(lines), signed.verifier, ORIGIN)
        .describe()
        .startswith("export OK: 30 entries, entries 1 to 30,")
    )
    for kept, held in ((entries[:15], "1 to 15"), (entries[10:], "11 to 30"), (entries[:-1], "1 to 29")):
        result = verify_export(_text([header, *kept]), signed.verifier, ORIGIN)
        assert not result.ok
        assert result.problems == [f"the file states entries 1 to 30 but it holds entries {held}"]
    empty = verify_export(_text([header]), signed.verifier, ORIGIN)
    assert empty.problems == ["the file states entries 1 to 30 but it holds no entries"]

    # The stated range edited to fit the cut: the file is consistent, so the reader's range decides.
    narrowed = {**header, "from": 11}
    assert verify_export(_text([narrowed, *entries[10:]]), signed.verifier, ORIGIN).ok
    asked = verify_export(_text([narrowed, *entries[10:]]), signed.verifier, ORIGIN, expected=(1, 30))
    assert asked.problems == ["you asked for entries 1 to 30 but it holds entries 11 to 30"]
    stretched = verify_export(_text([{**header, "to": 31}, *entries]), signed.verifier, ORIGIN)
    assert "the file states entries 1 to 31 but it holds entries 1 to 30" in stretched.problems
    assert "it states entries up to 31, past the checkpoint's 30" in stretched.problems
    no_range = {k: v for k, v in header.items() if k != "to"}
    assert verify_export(_text([no_range, *entries])).problems == [
        "not an accord-ledger-export/2 file: column 'to' is missing"
    ]

    # csv states the range in its first row; one from before it did is checked and says so.
    rows = list(csv.reader(io.StringIO("".join(render_csv(export_rows(role_db.app, 1, 30))))))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows[:-1])
    assert verify_export(out.getvalue(), signed.verifier, ORIGIN).problems == [
        "the file states entries 1 to 30 but it holds entries 1 to 29"
    ]
    old = io.StringIO()
    csv.writer(old, lineterminator="\n").writerows([r[:-2] for r in rows])
    older = verify_export(old.getvalue(), signed.verifier, ORIGIN)
    assert older.ok and "(the file does not state the range it was exported for)" in older.describe()


def test_verify_export_holds_the_file_to_the_range_asked_for(
    role_db: RoleDatabase, signed: NoteSigner, tmp_path: Path
) -> None:
    env = {**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)}

    def accord(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "accord.cli", "ledger", *args], env=env, capture_output=True, text=True, timeout=120
        )

    out = tmp_path / "range.jsonl"
    assert accord("export", "--from", "5", "--to", "20", "--out", str(out)).returncode == 0
    key = ("--key", signed.verifier.vkey)
    ok = accord("verify-export", str(out), *key, "--from", "5", "--to", "20")
    assert ok.returncode == 0 and "entries 5 to 20" in ok.stdout, ok.stdout + ok.stderr
    wrong = accord("verify-export", str(out), *key, "--from", "1", "--to", "20")
    assert wrong.returncode == 1
    assert wrong.stdout.strip() == "export BROKEN: you asked for entries 1 to 20 but it holds entries 5 to 20"
    half = accord("verify-export", str(out), *key, "--from", "5")
    assert half.returncode == 2 and half.stderr.strip() == (
        "accord ledger verify-export: give both --from and --to, or neither"
    )


def test_prove_and_export_say_whether_an_entry_does_not_exist_or_is_not_checkpointed_yet(
    role_db: RoleDatabase, signed: NoteSigner, tmp_path: Path
) -> None:
    """35 entries, the newest checkpoint of 30: waiting helps for entry 33, never for 0 or 99."""
    env = {**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)}

    def refused(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "accord.cli", "ledger", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2 and done.stdout == "", done.stdout + done.stderr
        return done.stderr.strip()

    assert refused("prove", "--entry", "0") == "accord ledger prove: there is no entry 0: entries are numbered from 1"
    assert refused("prove", "--entry", "99") == "accord ledger prove: there is no entry 99: the ledger holds 35"
    assert refused("prove", "--entry", "33") == (
        "accord ledger prove: entry 33 is not covered by checkpoint 30 yet (the next checkpoint will cover it)"
    )
    assert refused("export", "--from", "1", "--to", "99") == (
        "accord ledger export: there is no entry 99: the ledger holds 35"
    )
    assert refused("prove", "--entry", "5", "--from-size", "30") == (
        "accord ledger prove: give --entry N (an inclusion proof) or --from-size M (a consistency proof), not both"
    )
    assert refused("prove", "--from-size", "50") == (
        "accord ledger prove: no checkpoint of tree size 50 (the newest is of 30 entries)"
    )
    assert refused("prove", "--entry", "5", "--size", "7") == (
        "accord ledger prove: no checkpoint of tree size 7 (the newest is of 30 entries)"
    )
