"""schemas.catalogue: the facts of each event type read from schemas/events/, and what a malformed folder gets.

The loader is pointed at a copy of the package's folder, changed one way per test,
so every refusal is checked against a catalogue that is otherwise the real one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas import catalogue
from schemas.catalogue import CatalogueError, KeyField, load
from schemas.serde import Catalogue, SerdeError, fingerprint, load_schema


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The shipped catalogue with each type's v1 only: the cases below edit a type's latest version."""
    copy = tmp_path / "events"
    shutil.copytree(catalogue.EVENTS_DIR, copy, ignore=shutil.ignore_patterns("v[2-9]*.avsc", "v[1-9][0-9]*.avsc"))
    return copy


def edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    raw = json.loads(path.read_text(encoding="utf-8"))
    change(raw)
    path.write_text(json.dumps(raw, indent=2), encoding="utf-8")


def test_the_package_catalogue_states_what_the_code_did() -> None:
    """The facts as decide.subject_key, other_subjects, pseudonymise and topics had them in code."""
    cat = catalogue.default()
    assert cat.names() == ("custody", "natal_care", "referral")
    custody, natal, referral = cat["custody"], cat["natal_care"], cat["referral"]
    assert custody.subject_key == (KeyField("nhs", "subject.nhs_number"), KeyField("pnc", "subject.pnc_id"))
    assert referral.subject_key == (KeyField("nhs", "subject.nhs_number"), KeyField("local", "subject.local_id"))
    assert natal.subject_key == (KeyField("nhs", "mother.nhs_number"),)
    assert natal.other_subjects == (KeyField("nhs", "baby.nhs_number"),)
    assert custody.other_subjects == referral.other_subjects == ()
    assert custody.identifiers == ("subject.pnc_id", "subject.nhs_number", "custody_record_id")
    assert referral.identifiers == ("subject.nhs_number", "subject.local_id", "referral_id")
    assert natal.identifiers == ("mother.nhs_number", "baby.nhs_number")
    assert {t.partitions for t in cat} == {4}
    assert {t.compatibility for t in cat} == {"BACKWARD_TRANSITIVE"}
    for t in cat:
        assert [v.number for v in t.versions] == list(range(1, len(t.versions) + 1))
        assert t.latest.fingerprint == fingerprint(load_schema(t.name))


def test_defaults_when_partitions_and_compatibility_are_absent(folder: Path) -> None:
    def drop(raw: dict[str, Any]) -> None:
        del raw["accord.partitions"], raw["accord.compatibility"]

    edit(folder / "custody" / "v1.avsc", drop)
    custody = load(folder)["custody"]
    assert (custody.partitions, custody.compatibility) == (4, "BACKWARD_TRANSITIVE")


def add_v2(folder: Path, event_type: str = "referral") -> Path:
    """A v2 with one optional field more, facts as v1's."""
    v2 = folder / event_type / "v2.avsc"

    def extend(raw: dict[str, Any]) -> None:
        raw["fields"].append({"name": "school_year", "type": ["null", "int"], "default": None})

    shutil.copy(folder / event_type / "v1.avsc", v2)
    edit(v2, extend)
    return v2


def test_versions_are_sorted_and_the_latest_is_the_highest(folder: Path) -> None:
    add_v2(folder)
    shutil.copy(folder / "referral" / "v2.avsc", folder / "referral" / "v10.avsc")
    for n in range(3, 10):
        shutil.copy(folder / "referral" / "v1.avsc", folder / "referral" / f"v{n}.avsc")
    with pytest.raises(CatalogueError, match="the same schema as"):  # v3 is v1 again: ambiguous
        load(folder)
    for n in range(3, 11):
        edit(
            folder / "referral" / f"v{n}.avsc",
            lambda raw, n=n: raw["fields"].append(  # type: ignore[misc]
                {"name": f"extra_{n}", "type": ["null", "string"], "default": None}
            ),
        )
    referral = load(folder)["referral"]
    assert [v.number for v in referral.versions] == list(range(1, 11))
    assert referral.latest.path.name == "v10.avsc"


def test_every_version_decodes_as_the_type_side_by_side(folder: Path) -> None:
    """The serde catalogue registers each version's fingerprint: v1 and v2 records both decode."""
    add_v2(folder)
    cat = load(folder)
    serde = Catalogue.default(cat)
    v1_schema, v2_schema = (v.schema for v in cat["referral"].versions)
    assert fingerprint(v1_schema) != fingerprint(v2_schema)
    assert serde.fingerprint_of("referral") == fingerprint(v2_schema)  # producers write the latest
    assert "referral.v1" in serde.versions() and "referral.v1" not in serde.names()
    record = {
        "envelope": {
            "event_id": "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f",
            "occurred_at": datetime(2026, 3, 1, tzinfo=UTC),
            "recorded_at": datetime(2026, 3, 1, tzinfo=UTC),
            "source_agency": "oakfield-school",
            "source_system": "mis",
        },
        "referral_id": "R-1",
        "referrer": {"agency": "oakfield-school", "role": "DSL"},
        "subject": {
            "subject_kind": "CHILD",
            "local_id": "L1",
            "nhs_number": None,
            "given_names": "Sam",
            "family_name": "Testperson",
            "date_of_birth": date(2015, 5, 1),
            "address": None,
        },
        "concern_categories": ["NEGLECT"],
        "urgency": "ROUTINE",
        "narrative": "synthetic",
    }
    old = serde.encode("referral.v1", record)
    new = serde.encode("referral", {**record, "school_year": 5})
    assert old[2:10] == fingerprint(v1_schema) and new[2:10] == fingerprint(v2_schema)
    assert serde.decode(old) == ("referral", record)
    assert serde.decode(new) == ("referral", {**record, "school_year": 5})
    with pytest.raises(SerdeError):  # a v1 record's bytes cut short are refused as ever
        serde.decode(old[:-3])


@pytest.mark.parametrize(
    ("where", "change", "expected"),
    [
        (
            "custody/v1.avsc",
            lambda r: r["accord.subject_key"].__setitem__(0, {"scheme": "ssn", "field": "subject.nhs_number"}),
            "custody/v1.avsc: accord.subject_key[0]: unknown scheme 'ssn' (known: nhs, pnc, local)",
        ),
        (
            "custody/v1.avsc",
            lambda r: r["accord.subject_key"].__setitem__(0, {"scheme": "nhs", "field": "subject.nhs"}),
            "custody/v1.avsc: accord.subject_key[0]: subject.nhs is not a field of this schema",
        ),
        (
            "custody/v1.avsc",
            lambda r: r["accord.subject_key"].pop(),
            "custody/v1.avsc: accord.subject_key[0]: subject.nhs_number may be null, but the last subject-key field",
        ),
        ("custody/v1.avsc", lambda r: r.pop("accord.subject_key"), "custody/v1.avsc: accord.subject_key is missing"),
        (
            "custody/v1.avsc",
            lambda r: r["accord.subject_key"].__setitem__(1, {"scheme": "pnc", "field": "subject"}),
            "custody/v1.avsc: accord.subject_key[1]: subject is not a string field",
        ),
        (
            "custody/v1.avsc",
            lambda r: r["accord.subject_key"].__setitem__(1, {"scheme": "pnc"}),
            "custody/v1.avsc: accord.subject_key[1] must be",
        ),
        (
            "natal_care/v1.avsc",
            lambda r: r["accord.other_subjects"].__setitem__(0, {"scheme": "nhs", "field": "baby.nhs"}),
            "natal_care/v1.avsc: accord.other_subjects[0]: baby.nhs is not a field of this schema",
        ),
        (
            "referral/v1.avsc",
            lambda r: r["accord.identifiers"].append("subject.shoe_size"),
            "referral/v1.avsc: accord.identifiers[3]: subject.shoe_size is not a field of this schema",
        ),
        (
            "referral/v1.avsc",
            lambda r: r["accord.identifiers"].append("subject"),
            "referral/v1.avsc: accord.identifiers[3]: subject is not a string field",
        ),
        (
            "referral/v1.avsc",
            lambda r: r.__setitem__("accord.partitions", 0),
            "referral/v1.avsc: accord.partitions must be a whole number of at least 1",
        ),
        (
            "referral/v1.avsc",
            lambda r: r.__setitem__("accord.partitions", True),
            "referral/v1.avsc: accord.partitions must be a whole number of at least 1",
        ),
        (
            "referral/v1.avsc",
            lambda r: r.__setitem__("accord.compatibility", "SIDEWAYS"),
            "referral/v1.avsc: accord.compatibility: unknown mode 'SIDEWAYS'",
        ),
        (
            "referral/v1.avsc",
            lambda r: r.__setitem__("accord.partition", 4),
            "referral/v1.avsc: unknown property accord.partition",
        ),
        (
            "referral/v1.avsc",
            lambda r: r.__setitem__("type", "enum"),
            "referral/v1.avsc: an event schema is an Avro record schema",
        ),
        (
            "referral/v1.avsc",
            lambda r: r["fields"].append({"name": "x", "type": "no.such.Type"}),
            "referral/v1.avsc: not a valid Avro schema",
        ),
    ],
)
def test_a_malformed_catalogue_is_refused_in_one_line_naming_the_file(
    folder: Path, where: str, change: Callable[[dict[str, Any]], None], expected: str
) -> None:
    edit(folder / where, change)
    with pytest.raises(CatalogueError) as info:
        load(folder)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(str(folder / where.split("/")[0])), message
    assert expected in message.replace(str(folder) + "/", ""), message


def test_a_subject_key_field_must_be_in_every_version(folder: Path) -> None:
    """Records of v1 are still decoded and keyed: a key field only v2 has would leave them keyless."""
    v2 = add_v2(folder)
    edit(v2, lambda r: r["accord.subject_key"].insert(0, {"scheme": "local", "field": "referrer.role"}))
    load(folder)  # referrer.role is in v1 too
    edit(v2, lambda r: r["fields"].append({"name": "upn", "type": ["null", "string"], "default": None}))
    edit(v2, lambda r: r["accord.subject_key"].insert(0, {"scheme": "local", "field": "upn"}))
    with pytest.raises(CatalogueError, match=r"referral/v1\.avsc: accord\.subject_key\[0\]: upn is not a field"):
        load(folder)


def test_file_and_folder_shapes_are_refused(folder: Path) -> None:
    (folder / "custody" / "notes.txt").write_text("x")
    with pytest.raises(CatalogueError, match=r"custody/notes\.txt: not a version of the event type"):
        load(folder)
    (folder / "custody" / "notes.txt").unlink()
    shutil.copy(folder / "custody" / "v1.avsc", folder / "custody" / "v3.avsc")
    with pytest.raises(CatalogueError, match=r"custody/v2\.avsc: missing: versions are numbered from v1 without gaps"):
        load(folder)
    (folder / "custody" / "v3.avsc").unlink()
    (folder / "custody" / "v1.avsc").write_text("{not json")
    with pytest.raises(CatalogueError, match=r"custody/v1\.avsc: not JSON"):
        load(folder)
    shutil.rmtree(folder / "custody")
    (folder / "Custody").mkdir()
    with pytest.raises(CatalogueError, match=r"Custody: an event type's folder is named in lower case"):
        load(folder)
    (folder / "Custody").rmdir()
    (folder / "stray.avsc").write_text("{}")
    with pytest.raises(CatalogueError, match=r"stray\.avsc: not an event type"):
        load(folder)
    with pytest.raises(CatalogueError, match="no such folder"):
        load(folder / "nope")


def test_the_facts_are_frozen() -> None:
    custody = catalogue.default()["custody"]
    with pytest.raises(AttributeError):
        custody.partitions = 8  # type: ignore[misc]
    with pytest.raises(TypeError):
        catalogue.default().types["x"] = custody  # type: ignore[index]
