"""ledger/entry.py: the entry's fields are schemas/disclosure.avsc's, and everything else agrees with it.

The schema is read here on its own (json), so the test does not lean on the code it
checks. Each refusal changes one thing in a copy (the schema dict, the draft class,
the stored class, the table) and shows agreement_problems names it; one changes the
schema in a fresh interpreter and shows ``import ledger`` refuses to start.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import fastavro
import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text

from ledger import EntryDraft, LedgerEntry, StoredEntry, canonical_bytes, stored_entry
from ledger.entry import (
    ASSIGNED,
    COLUMNS,
    DRAFT_FIELDS,
    FIELDS,
    NOT_COVERED,
    OUTCOMES,
    agreement_problems,
    check_draft,
    write_row,
)
from ledger.leaf_codec import FIELD_NAMES

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "disclosure.avsc"


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def python_type(avro: Any) -> Any:
    """The Python type a draft holds for an Avro type of the schema, written out here."""
    if isinstance(avro, list):
        assert avro[0] == "null" and len(avro) == 2
        return python_type(avro[1]) | None
    if isinstance(avro, str):
        return {"long": int, "int": int, "string": str}[avro]
    if avro.get("logicalType") == "timestamp-millis":
        return datetime
    return {"enum": str, "array": tuple[str, ...], "fixed": bytes}[avro["type"]]


# --------------------------------------------------------------------------- they agree


def test_fields_are_the_schemas_in_order() -> None:
    names = [f["name"] for f in schema()["fields"]]
    assert [f.name for f in FIELDS] == names
    assert list(FIELD_NAMES) == names  # what leaf_codec encodes
    assert [f.name for f in DRAFT_FIELDS] == [n for n in names if n not in ("seq", "prev_hash")]
    assert ASSIGNED == ("seq", "prev_hash")
    assert (*names, "entry_hash", "leaf_hash") == COLUMNS


def test_draft_stored_entry_and_table_agree_with_the_schema() -> None:
    avro = {f["name"]: f["type"] for f in schema()["fields"]}
    hints = {f.name: f.type for f in dataclasses.fields(EntryDraft)}
    assert list(hints) == [f.name for f in DRAFT_FIELDS]
    import typing

    for name, hint in typing.get_type_hints(EntryDraft).items():
        assert hint == python_type(avro[name]), name
    assert [f.name for f in dataclasses.fields(StoredEntry)] == ["seq", "draft", "prev_hash", "entry_hash", "leaf_hash"]
    columns = LedgerEntry.__table__.columns
    assert tuple(c.name for c in columns) == COLUMNS
    for name, a in avro.items():
        assert columns[name].nullable == isinstance(a, list), name
    symbols = next(f["type"]["symbols"] for f in schema()["fields"] if f["name"] == "outcome")
    assert frozenset(symbols) == OUTCOMES and NOT_COVERED in OUTCOMES
    assert agreement_problems(schema()) == []


# --------------------------------------------------------------------------- one of them changed


def changed(**edits: Any) -> dict[str, Any]:
    """A copy of the schema with fields added (insert={index: field}), retyped (type={name: t}) or swapped."""
    s = copy.deepcopy(schema())
    fields = s["fields"]
    for name, t in edits.get("type", {}).items():
        next(f for f in fields if f["name"] == name)["type"] = t
    for i, f in sorted(edits.get("insert", {}).items()):
        fields.insert(i, f)
    if "swap" in edits:
        a, b = (next(k for k, f in enumerate(fields) if f["name"] == n) for n in edits["swap"])
        fields[a], fields[b] = fields[b], fields[a]
    return s


def test_a_field_only_the_schema_has_is_refused() -> None:
    problems = agreement_problems(changed(insert={-1: {"name": "note", "type": "string"}}))
    assert "EntryDraft's fields are not the schema's (other than seq, prev_hash): no note" in problems
    assert "the table's columns are not the schema's fields then entry_hash, leaf_hash: no note" in problems


def test_an_assigned_field_only_the_schema_has_is_refused() -> None:
    s = changed()
    s["fields"] = [f for f in s["fields"] if f["name"] != "prev_hash"]
    problems = agreement_problems(s)
    assert "the schema has no prev_hash field (ASSIGNED)" in problems
    assert "StoredEntry's fields are not draft, seq, entry_hash, leaf_hash: prev_hash not in the schema" in problems


def test_fields_out_of_order_are_refused() -> None:
    problems = agreement_problems(changed(swap=("provider", "recipient")))
    assert any(p.startswith("EntryDraft's fields") and "out of order" in p for p in problems)
    assert any(p.startswith("the table's columns") and "out of order" in p for p in problems)


def test_a_field_of_another_type_is_refused() -> None:
    assert agreement_problems(changed(type={"agreement_version": "long"})) == [
        "column agreement_version is Integer(), which cannot store a field of kind long"
    ]
    problems = agreement_problems(changed(type={"consent_version": "string"}))
    assert any("EntryDraft.consent_version is <class 'int'>" in p for p in problems)
    assert any("column consent_version is BigInteger()" in p for p in problems)


def test_nullability_must_agree() -> None:
    problems = agreement_problems(changed(type={"reason": "string"}))
    assert any(p.startswith("EntryDraft.reason is str | None") for p in problems)
    assert any(p.startswith("column reason is nullable") for p in problems)


def test_an_array_must_say_how_it_is_stored() -> None:
    problems = agreement_problems(changed(type={"event_type": {"type": "array", "items": "string"}}))
    assert any("ARRAY_JSON" in p and "event_type" in p for p in problems)


def test_a_type_the_ledger_does_not_store_is_refused() -> None:
    problems = agreement_problems(changed(type={"purpose": "double"}))
    assert problems == ["field purpose: Avro type 'double' is not one the ledger stores (ledger/entry.py)"]


def test_a_field_only_the_draft_has_is_refused() -> None:
    note = ("note", "str", dataclasses.field(default=""))
    extra = dataclasses.make_dataclass(
        "EntryDraft", [*((f.name, f.type, f) for f in dataclasses.fields(EntryDraft)), note], frozen=True
    )
    problems = agreement_problems(schema(), draft=extra)
    assert problems == ["EntryDraft's fields are not the schema's (other than seq, prev_hash): note not in the schema"]


def test_a_draft_field_of_another_type_is_refused() -> None:
    retyped = dataclasses.make_dataclass(
        "EntryDraft",
        [(f.name, "list[str]" if f.name == "subjects" else f.type, f) for f in dataclasses.fields(EntryDraft)],
        frozen=True,
        namespace={"datetime": datetime},
    )
    assert agreement_problems(schema(), draft=retyped) == [
        "EntryDraft.subjects is list[str], the schema's field is tuple[str, ...]"
    ]


def test_a_field_only_the_stored_entry_has_is_refused() -> None:
    extra = dataclasses.make_dataclass(
        "StoredEntry", [(f.name, f.type, f) for f in dataclasses.fields(StoredEntry)] + [("tile", "bytes", b"")]
    )
    problems = agreement_problems(schema(), stored=extra)
    assert problems == [
        "StoredEntry's fields are not draft, seq, prev_hash, entry_hash, leaf_hash: tile not in the schema"
    ]


def table_with(change: dict[str, Column[Any] | None], extra: list[Column[Any]] = ()) -> Table:  # type: ignore[assignment]
    """ledger_entries' columns, one replaced (or removed, None), others added at the end."""
    columns: list[Column[Any]] = []
    for c in LedgerEntry.__table__.columns:
        if c.name in change:
            new = change[c.name]
            if new is not None:
                columns.append(new)
        else:
            columns.append(c._copy())
    return Table("ledger_entries", MetaData(), *columns, *extra)


def test_a_column_only_the_table_has_is_refused() -> None:
    problems = agreement_problems(schema(), table=table_with({}, [Column("note", Text, nullable=False)]))
    assert problems == [
        "the table's columns are not the schema's fields then entry_hash, leaf_hash: note not in the schema"
    ]


def test_a_missing_column_is_refused() -> None:
    problems = agreement_problems(schema(), table=table_with({"subjects": None}))
    assert problems == ["the table's columns are not the schema's fields then entry_hash, leaf_hash: no subjects"]


def test_a_column_of_another_type_is_refused() -> None:
    table = table_with({"agreement_version": Column("agreement_version", BigInteger, nullable=False)})
    assert agreement_problems(schema(), table=table) == [
        "column agreement_version is BigInteger(), which cannot store a field of kind int"
    ]


def test_import_refuses_a_schema_field_nothing_else_has() -> None:
    """A field added to disclosure.avsc alone: ``import ledger`` stops, naming it, before any entry is written."""
    code = (  # json.load gives leaf_codec the schema with one more field, as if the file had it
        "import json\n"
        "load = json.load\n"
        "def with_note(f, **kw):\n"
        "    s = load(f, **kw)\n"
        "    if f.name.endswith('disclosure.avsc'):\n"
        "        s['fields'].insert(-1, {'name': 'note', 'type': 'string'})\n"
        "    return s\n"
        "json.load = with_note\n"
        "import ledger\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "RuntimeError: the ledger entry disagrees with disclosure.avsc" in done.stderr
    assert "EntryDraft's fields are not the schema's (other than seq, prev_hash): no note" in done.stderr
    unchanged = subprocess.run([sys.executable, "-c", "import ledger"], cwd=ROOT, capture_output=True, timeout=60)
    assert unchanged.returncode == 0, unchanged.stderr


# --------------------------------------------------------------------------- what is compiled from the definition


def distinct_draft() -> EntryDraft:
    """A draft whose every field holds a value no other field holds, so a value in the wrong place shows."""
    values: dict[str, Any] = {}
    for k, f in enumerate(DRAFT_FIELDS):
        if f.kind in ("long", "int"):
            values[f.name] = 1000 + k
        elif f.kind == "enum":
            values[f.name] = "RECEIVED"
        elif f.kind == "array":
            values[f.name] = (f"{f.name}.a", f"{f.name}.é")  # non-ASCII: ARRAY_JSON's escaping shows
        elif f.kind == "timestamp":
            values[f.name] = datetime(2026, 3, 4, 5, 6, 7, 891_234, tzinfo=timezone(timedelta(hours=2)))
        else:
            values[f.name] = f"{f.name}-value"
    values["event_digest"] = hashlib.sha256(b"synthetic").hexdigest()
    return EntryDraft(**values)


def fastavro_leaf(seq: int, draft: EntryDraft, prev: bytes) -> bytes:
    ms = (draft.decided_at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    record = {
        **{f.name: getattr(draft, f.name) for f in DRAFT_FIELDS},
        "seq": seq,
        "prev_hash": prev,
        "decided_at": ms,
        "fields": list(draft.fields),
        "subjects": list(draft.subjects),
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema()), record, strict=True)
    return buf.getvalue()


def test_the_row_holds_each_field_in_its_column() -> None:
    draft, prev = distinct_draft(), bytes(range(32))
    check_draft(draft)
    utc = datetime(2026, 3, 4, 3, 6, 7, 891_000, tzinfo=UTC)
    ms = (utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    rows: list[tuple[Any, ...]] = []
    h = write_row(rows.append, draft, 7, prev, utc, ms)
    row = dict(zip(COLUMNS, rows[0], strict=True))
    leaf = canonical_bytes(7, draft, prev)
    assert leaf == fastavro_leaf(7, draft, prev)
    assert h == row["entry_hash"] == hashlib.sha256(leaf).digest()
    assert row["leaf_hash"] == hashlib.sha256(b"\x00" + leaf).digest()
    assert (row["seq"], row["prev_hash"], row["decided_at"]) == (7, prev, utc)
    assert row["fields"] == '["fields.a","fields.\\u00e9"]'  # ASCII-escaped
    assert row["subjects"] == '["subjects.a","subjects.é"]'  # as written (SQL LIKE)
    for f in DRAFT_FIELDS:
        if f.kind not in ("array", "timestamp"):
            assert row[f.name] == getattr(draft, f.name), f.name
    stored = stored_entry(SimpleNamespace(**row))
    assert stored == StoredEntry(7, dataclasses.replace(draft, decided_at=utc), prev, h, row["leaf_hash"])
    assert canonical_bytes(7, stored.draft, prev) == leaf


def test_a_row_as_sqlite_keeps_it_reads_back() -> None:
    draft = distinct_draft()
    utc = datetime(2026, 3, 4, 3, 6, 7, 891_000, tzinfo=UTC)
    rows: list[tuple[Any, ...]] = []
    write_row(rows.append, draft, 1, bytes(32), utc, 0)
    row = {**dict(zip(COLUMNS, rows[0], strict=True)), "decided_at": utc.replace(tzinfo=None)}
    del row["leaf_hash"]  # a row read without it
    stored = stored_entry(SimpleNamespace(**row))
    assert stored.draft.decided_at == utc and stored.draft.decided_at.tzinfo is UTC
    assert stored.leaf_hash == b""
    with pytest.raises(ValueError, match="fields is not a JSON list of strings"):
        stored_entry(SimpleNamespace(**{**row, "fields": '{"a": 1}'}))


# --------------------------------------------------------------------------- the builders


class _Mode(str, Enum):
    OPT_OUT = "opt_out"


class _Purpose(str, Enum):
    SAFEGUARDING = "safeguarding"


class _Outcome(str, Enum):
    WITHHELD = "WITHHELD"


def test_of_decision_records_the_decision() -> None:
    agreement = SimpleNamespace(
        id="ag-1", version=3, purpose=_Purpose.SAFEGUARDING, legal_basis="a basis", consent_mode=_Mode.OPT_OUT
    )
    d = SimpleNamespace(
        disclosure_id="did",
        event_id="eid",
        event_type="custody",
        provider="prov",
        recipient="rec",
        agreement=agreement,
        outcome=_Outcome.WITHHELD,
        reason="consent denied",
        fields=(),
        consent_version=9,
        subject_key="nhs:9434765919",
    )
    at = datetime(2026, 1, 1, tzinfo=UTC)
    draft = EntryDraft.of_decision(d, at, "ab" * 32, ("nhs:9434765870",))
    assert draft == EntryDraft(
        "did",
        "eid",
        "custody",
        "prov",
        "rec",
        "ag-1",
        3,
        "safeguarding",
        "a basis",
        "WITHHELD",
        "consent denied",
        (),
        "opt_out",
        9,
        "nhs:9434765919",
        at,
        event_digest="ab" * 32,
        subjects=("nhs:9434765870",),
    )
    assert type(draft.purpose) is str and type(draft.outcome) is str and type(draft.consent_mode) is str
    check_draft(draft)


def test_not_covered_has_no_recipient_agreement_or_fields() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    draft = EntryDraft.not_covered(
        disclosure_id="did",
        event_id="eid",
        event_type="custody",
        provider="prov",
        subject_key="nhs:9434765919",
        consent_version=2,
        decided_at=at,
    )
    assert draft == EntryDraft(
        "did",
        "eid",
        "custody",
        "prov",
        "",
        "",
        0,
        "",
        "",
        NOT_COVERED,
        "no agreement in force covers this custody event from prov",
        (),
        "",
        2,
        "nhs:9434765919",
        at,
    )
    check_draft(draft)
    with pytest.raises(ValueError, match="NOT_COVERED entry has no recipient"):
        check_draft(dataclasses.replace(draft, recipient="rec"))
