"""An agreement may only name fields present in every version of the event types it covers.

The processor decodes each event with the version it was written with, so a
field that only some versions have cannot be disclosed from the others. The
loader refuses such a field at load time, at its file and line, like any other
problem of an agreement file. Each test loads a temporary agreements folder
against a temporary copy of the schema catalogue.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agreements.loader import AgreementError, AgreementsRefused, load_dir, load_file, schema_problems, validate_dir

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "schemas" / "events"
MASH = ROOT / "agreements" / "examples" / "referral-to-mash.yaml"


def _v1(event_type: str) -> dict[str, Any]:
    return json.loads((EVENTS / event_type / "v1.avsc").read_text(encoding="utf-8"))


def _subject(schema: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == "subject")["type"]


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A copy of the shipped catalogue whose referral has only v1 (each test adds its own v2)."""
    folder = tmp_path / "events"
    shutil.copytree(EVENTS, folder)
    for extra in (folder / "referral").glob("v*.avsc"):
        if extra.name != "v1.avsc":
            extra.unlink()
    return folder


def _write_v2(catalogue: Path, schema: dict[str, Any]) -> None:
    (catalogue / "referral" / "v2.avsc").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")


def _with_optional_field(name: str) -> dict[str, Any]:
    schema = copy.deepcopy(_v1("referral"))
    _subject(schema)["fields"].append({"name": name, "type": ["null", "string"], "default": None})
    return schema


def _agreement(folder: Path, text: str) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / "referral-to-mash.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _line_of(path: Path, needle: str) -> int:
    [line] = [n for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if needle in text]
    return line


def test_a_field_only_the_new_version_has_is_refused_at_its_line(tmp_path: Path, catalogue: Path) -> None:
    _write_v2(catalogue, _with_optional_field("interpreter_language"))
    text = MASH.read_text(encoding="utf-8").replace(
        "    - narrative\n", "    - narrative\n    - subject.interpreter_language\n"
    )
    path = _agreement(tmp_path / "agreements", text)

    with pytest.raises(AgreementError) as refused:
        load_file(path, events_dir=catalogue)
    err = refused.value
    assert (err.path, err.line) == (path, _line_of(path, "- subject.interpreter_language"))
    assert err.field == "fields.referral[14]"
    assert err.problem == (
        "'subject.interpreter_language' is a field of the referral schema's v2 but not of its v1: an agreement "
        "may only name fields present in every version of its event types (a referral v1 event has no such "
        "field to disclose)"
    )
    assert str(err).startswith(f"{path}:{err.line}: fields.referral[14]: 'subject.interpreter_language'")
    with pytest.raises(AgreementsRefused) as folder_refused:
        load_dir(path.parent, events_dir=catalogue)
    assert [str(p) for p in folder_refused.value.problems] == [str(err)]


def test_the_same_agreement_loads_while_the_catalogue_has_one_version(tmp_path: Path, catalogue: Path) -> None:
    """Without v2 the field is in no version: the loader's usual refusal, not the every-version one."""
    text = MASH.read_text(encoding="utf-8").replace(
        "    - narrative\n", "    - narrative\n    - subject.interpreter_language\n"
    )
    path = _agreement(tmp_path / "agreements", text)
    [err] = validate_dir(path.parent, events_dir=catalogue)
    assert err.problem == "'subject.interpreter_language' is not a field of the referral schema"


def test_a_field_a_new_version_removed_is_refused_at_its_line(tmp_path: Path, catalogue: Path) -> None:
    """Removing a field is backward compatible in Avro (a v2 reader skips it), but an agreement naming it
    would disclose it from v1 events only: the loader refuses it."""
    v2 = copy.deepcopy(_v1("referral"))
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "narrative"]
    _write_v2(catalogue, v2)
    path = _agreement(tmp_path / "agreements", MASH.read_text(encoding="utf-8"))

    [err] = validate_dir(path.parent, events_dir=catalogue)
    assert (err.path, err.line, err.field) == (path, _line_of(path, "    - narrative"), "fields.referral[13]")
    assert err.problem.startswith("'narrative' is a field of the referral schema's v1 but not of its v2: ")


def test_a_condition_on_a_field_of_one_version_only_is_refused(tmp_path: Path, catalogue: Path) -> None:
    _write_v2(catalogue, _with_optional_field("interpreter_language"))
    text = MASH.read_text(encoding="utf-8").replace(
        "fields:\n", "conditions:\n  - {field: subject.interpreter_language, op: present}\nfields:\n", 1
    )
    path = _agreement(tmp_path / "agreements", text)

    [err] = validate_dir(path.parent, events_dir=catalogue)
    assert (err.line, err.field) == (_line_of(path, "{field: subject.interpreter_language"), "conditions[0].field")
    assert err.problem == "'subject.interpreter_language' is not a field of the referral v1 schema"


def test_fields_every_version_has_load_as_before(tmp_path: Path, catalogue: Path) -> None:
    _write_v2(catalogue, _with_optional_field("interpreter_language"))
    shutil.copytree(ROOT / "agreements" / "examples", tmp_path / "agreements")
    assert validate_dir(tmp_path / "agreements", events_dir=catalogue) == []
    [mash] = [a for a in load_dir(tmp_path / "agreements", events_dir=catalogue) if a.id == "referral-to-mash"]
    assert schema_problems(mash, events_dir=catalogue) == []


def test_the_agreement_feed_sees_the_same_problem(catalogue: Path) -> None:
    _write_v2(catalogue, _with_optional_field("interpreter_language"))
    mash = load_file(MASH, events_dir=catalogue)
    wider = mash.model_copy(update={"fields": {"referral": (*mash.fields["referral"], "subject.interpreter_language")}})
    [problem] = schema_problems(wider, events_dir=catalogue)
    assert problem.startswith(
        "fields.referral[14]: 'subject.interpreter_language' is a field of the referral schema's v2"
    )


def test_the_shipped_agreements_name_only_fields_of_every_shipped_version() -> None:
    assert validate_dir(ROOT / "agreements" / "examples") == []
