"""Schema compatibility: Avro's resolution rules, the Confluent modes, and the catalogue check.

Each rule of the specification's "Schema Resolution" has a case below; where
the Apache ``avro`` package is installed its own checker
(``avro.compatibility``) is the oracle for every case and for a corpus of
mutations of the real event schemas. It is never used at run time.
"""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from schemas.compatibility import (
    DEFAULT_MODE,
    IncompatibleCatalogue,
    check_catalogue,
    check_versions,
    reader_problems,
    require_compatible,
)

EVENTS = Path(__file__).resolve().parents[2] / "schemas" / "events"
PRIMITIVES = ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
PROMOTIONS = {
    ("int", "long"),
    ("int", "float"),
    ("int", "double"),
    ("long", "float"),
    ("long", "double"),
    ("float", "double"),
    ("string", "bytes"),
    ("bytes", "string"),
}  # (writer, reader)


def rec(name: str, *fields: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields), **extra}


def field(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


def enum(name: str, *symbols: str, **extra: Any) -> dict[str, Any]:
    return {"type": "enum", "name": name, "symbols": list(symbols), **extra}


def compatible(reader: Any, writer: Any) -> bool:
    return not reader_problems(reader, writer)


def _oracle() -> Any:
    avro_compat = pytest.importorskip("avro.compatibility", reason="the Apache avro package is the oracle")
    import avro.schema

    def verdict(reader: Any, writer: Any) -> bool | None:
        try:
            r, w = avro.schema.parse(json.dumps(reader)), avro.schema.parse(json.dumps(writer))
        except Exception:  # a schema the avro package will not parse: no verdict
            return None
        result = avro_compat.ReaderWriterCompatibilityChecker().get_compatibility(r, w)
        return result.compatibility is avro_compat.SchemaCompatibilityType.compatible

    return verdict


# --------------------------------------------------------------------------- the rules, one case each

CASES: list[tuple[str, Any, Any, bool]] = [
    # (what, reader, writer, the reader can read the writer's data)
    *[
        (f"{w} read as {r}", rec("R", field("x", r)), rec("R", field("x", w)), r == w or (w, r) in PROMOTIONS)
        for w in PRIMITIVES
        for r in PRIMITIVES
    ],
    (
        "a logical type rides on its type: date read as int",
        rec("R", field("x", "int")),
        rec("R", field("x", {"type": "int", "logicalType": "date"})),
        True,
    ),
    (
        "int promoted to a timestamp-millis long",
        rec("R", field("x", {"type": "long", "logicalType": "timestamp-millis"})),
        rec("R", field("x", "int")),
        True,
    ),
    (
        "a date is no string",
        rec("R", field("x", "string")),
        rec("R", field("x", {"type": "int", "logicalType": "date"})),
        False,
    ),
    (
        "fields matched by name, in any order",
        rec("R", field("b", "string"), field("a", "int")),
        rec("R", field("a", "int"), field("b", "string")),
        True,
    ),
    (
        "a writer field the reader lacks is skipped",
        rec("R", field("a", "int")),
        rec("R", field("a", "int"), field("b", "string")),
        True,
    ),
    (
        "a reader field the writer lacks takes its default",
        rec("R", field("a", "int"), field("b", "string", default="")),
        rec("R", field("a", "int")),
        True,
    ),
    (
        "an optional field (null first, default null)",
        rec("R", field("a", "int"), field("b", ["null", "string"], default=None)),
        rec("R", field("a", "int")),
        True,
    ),
    (
        "a reader field the writer lacks, without a default",
        rec("R", field("a", "int"), field("b", "string")),
        rec("R", field("a", "int")),
        False,
    ),
    (
        "a renamed field found through the reader's alias",
        rec("R", field("new", "int", aliases=["old"])),
        rec("R", field("old", "int")),
        True,
    ),
    (
        "a writer alias does not count",
        rec("R", field("new", "int")),
        rec("R", field("old", "int", aliases=["new"])),
        False,
    ),
    (
        "records matched by unqualified name: a new namespace",
        rec("R", field("a", "int"), namespace="x"),
        rec("R", field("a", "int"), namespace="y"),
        True,
    ),
    ("a renamed record", rec("S", field("a", "int")), rec("R", field("a", "int")), False),
    (
        "a renamed record with the old name as alias",
        rec("S", field("a", "int"), aliases=["R"]),
        rec("R", field("a", "int")),
        True,
    ),
    (
        "a nested record's new required field",
        rec("R", field("n", rec("N", field("a", "int"), field("b", "int")))),
        rec("R", field("n", rec("N", field("a", "int")))),
        False,
    ),
    (
        "enum: the reader has more symbols",
        rec("R", field("e", enum("E", "A", "B", "C"))),
        rec("R", field("e", enum("E", "A", "B"))),
        True,
    ),
    (
        "enum: a writer symbol the reader lacks",
        rec("R", field("e", enum("E", "A"))),
        rec("R", field("e", enum("E", "A", "B"))),
        False,
    ),
    (
        "enum: ... read as the reader's enum default",
        rec("R", field("e", enum("E", "A", "U", default="U"))),
        rec("R", field("e", enum("E", "A", "B"))),
        True,
    ),
    ("enum: a renamed enum", rec("R", field("e", enum("F", "A"))), rec("R", field("e", enum("E", "A"))), False),
    (
        "fixed: same name and size",
        rec("R", field("f", {"type": "fixed", "name": "F", "size": 16})),
        rec("R", field("f", {"type": "fixed", "name": "F", "size": 16})),
        True,
    ),
    (
        "fixed: another size",
        rec("R", field("f", {"type": "fixed", "name": "F", "size": 8})),
        rec("R", field("f", {"type": "fixed", "name": "F", "size": 16})),
        False,
    ),
    (
        "fixed: another name",
        rec("R", field("f", {"type": "fixed", "name": "G", "size": 16})),
        rec("R", field("f", {"type": "fixed", "name": "F", "size": 16})),
        False,
    ),
    (
        "array items promoted",
        rec("R", field("a", {"type": "array", "items": "long"})),
        rec("R", field("a", {"type": "array", "items": "int"})),
        True,
    ),
    (
        "array items that cannot be read",
        rec("R", field("a", {"type": "array", "items": "int"})),
        rec("R", field("a", {"type": "array", "items": "long"})),
        False,
    ),
    (
        "map values promoted",
        rec("R", field("m", {"type": "map", "values": "double"})),
        rec("R", field("m", {"type": "map", "values": "float"})),
        True,
    ),
    (
        "map values that cannot be read",
        rec("R", field("m", {"type": "map", "values": "string"})),
        rec("R", field("m", {"type": "map", "values": "int"})),
        False,
    ),
    (
        "an array is no map",
        rec("R", field("m", {"type": "map", "values": "int"})),
        rec("R", field("m", {"type": "array", "items": "int"})),
        False,
    ),
    ("a value read by a union reader", rec("R", field("x", ["null", "string"])), rec("R", field("x", "string")), True),
    ("a value promoted into a union reader", rec("R", field("x", ["null", "long"])), rec("R", field("x", "int")), True),
    (
        "a union reader with no branch for the value",
        rec("R", field("x", ["null", "string"])),
        rec("R", field("x", "int")),
        False,
    ),
    (
        "a union writer's null, which a plain reader cannot read",
        rec("R", field("x", "string")),
        rec("R", field("x", ["null", "string"])),
        False,
    ),
    (
        "every branch of a union writer readable",
        rec("R", field("x", ["null", "long", "string"])),
        rec("R", field("x", ["null", "int", "string"])),
        True,
    ),
    (
        "a union writer's branch the reader's union lacks",
        rec("R", field("x", ["null", "string"])),
        rec("R", field("x", ["null", "string", "int"])),
        False,
    ),
    (
        "a union writer whose one branch a plain reader reads",
        rec("R", field("x", "long")),
        rec("R", field("x", ["int"])),
        True,
    ),
    (
        "a record inside a nullable union gains an optional field",
        rec(
            "R",
            field(
                "a",
                ["null", rec("A", field("p", "string"), field("q", ["null", "string"], default=None))],
                default=None,
            ),
        ),
        rec("R", field("a", ["null", rec("A", field("p", "string"))], default=None)),
        True,
    ),
    (
        "a record inside a nullable union gains a required field",
        rec("R", field("a", ["null", rec("A", field("p", "string"), field("q", "string"))], default=None)),
        rec("R", field("a", ["null", rec("A", field("p", "string"))], default=None)),
        False,
    ),
    (
        "a named type referred to by name",
        rec("R", field("e", enum("E", "A", "B")), field("f", "E")),
        rec("R", field("e", enum("E", "A", "B")), field("f", "E")),
        True,
    ),
    (
        "a recursive type",
        rec("L", field("v", "long"), field("next", ["null", "L"], default=None)),
        rec("L", field("v", "int"), field("next", ["null", "L"], default=None)),
        True,
    ),
    (
        "a recursive type whose values cannot be read",
        rec("L", field("v", "int"), field("next", ["null", "L"], default=None)),
        rec("L", field("v", "long"), field("next", ["null", "L"], default=None)),
        False,
    ),
]


@pytest.mark.parametrize(("what", "reader", "writer", "expected"), CASES, ids=[c[0] for c in CASES])
def test_resolution_rules(what: str, reader: Any, writer: Any, expected: bool) -> None:
    assert compatible(reader, writer) is expected, reader_problems(reader, writer)


@pytest.mark.parametrize(("what", "reader", "writer", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_avro_package_agrees(what: str, reader: Any, writer: Any, expected: bool) -> None:
    verdict = _oracle()(reader, writer)
    assert verdict is not None, "the oracle parses every case"
    assert verdict is compatible(reader, writer)


def test_a_default_that_is_not_of_its_type_cannot_fill_a_missing_field() -> None:
    """A union's default is a value of its first branch (the specification): "" is not null."""
    reader = rec("R", field("a", "int"), field("b", ["null", "string"], default=""))
    [problem] = reader_problems(reader, rec("R", field("a", "int")), reader_label="v2", writer_label="v1")
    assert problem.path == "b" and "default" in problem.problem and "first branch" in problem.problem


# --------------------------------------------------------------------------- the real schemas, mutated


def _records(schema: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, record definition) for every record defined inline in a JSON schema."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _records(branch, path)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "error"):
            yield path, schema
            for f in schema["fields"]:
                yield from _records(f["type"], f"{path}.{f['name']}" if path else f["name"])
        elif schema.get("type") == "array":
            yield from _records(schema["items"], path)
        elif schema.get("type") == "map":
            yield from _records(schema["values"], path)


def _mutations(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """One change at a time to every field: removed, retyped, made optional; fields added; enums changed."""
    for rpath, record in list(_records(schema)):
        index = [id(r) for _, r in _records(schema)].index(id(record))
        for i, f in enumerate(record["fields"]):
            where = f"{rpath}.{f['name']}" if rpath else f["name"]

            def changed(change: Any, what: str, index: int = index, i: int = i) -> tuple[str, dict[str, Any]]:
                out = copy.deepcopy(schema)
                target = [r for _, r in _records(out)][index]
                change(target, i)
                return what, out

            yield changed(lambda r, i: r["fields"].pop(i), f"remove {where}")
            for t in ("int", "long", "double", "string", "bytes", "boolean"):
                yield changed(lambda r, i, t=t: _retype(r["fields"][i], t), f"{where} becomes {t}")
            yield changed(
                lambda r, i: r["fields"][i].update(type=["null", r["fields"][i]["type"]], default=None),
                f"{where} becomes optional",
            )
            if isinstance(f["type"], dict) and f["type"].get("type") == "enum":
                yield changed(
                    lambda r, i: r["fields"][i]["type"]["symbols"].append("NEW_SYMBOL"), f"{where} gains a symbol"
                )
                yield changed(lambda r, i: r["fields"][i]["type"]["symbols"].pop(), f"{where} loses a symbol")
        yield from (
            (
                f"{rpath or '(record)'} gains a required field",
                _with_field(schema, index, {"name": "added", "type": "string"}),
            ),
            (
                f"{rpath or '(record)'} gains an optional field",
                _with_field(schema, index, {"name": "added", "type": ["null", "string"], "default": None}),
            ),
        )


def _retype(f: dict[str, Any], type_: str) -> None:
    f["type"] = type_
    f.pop("default", None)


def _with_field(schema: dict[str, Any], index: int, new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    [r for _, r in _records(out)][index]["fields"].append(new)
    return out


@pytest.mark.parametrize("event_type", ["custody", "referral", "natal_care"])
def test_the_avro_package_agrees_on_every_mutation_of_the_event_schemas(event_type: str) -> None:
    oracle = _oracle()
    original = json.loads((EVENTS / event_type / "v1.avsc").read_text(encoding="utf-8"))
    checked = disagreements = 0
    seen_both = set()
    for what, mutated in _mutations(original):
        for direction, reader, writer in (("reads old", mutated, original), ("old reads it", original, mutated)):
            verdict = oracle(reader, writer)
            if verdict is None:
                continue
            ours = compatible(reader, writer)
            seen_both.add(ours)
            checked += 1
            if ours is not verdict:
                disagreements += 1
                pytest.fail(
                    f"{event_type}: {what}, {direction}: ours {ours}, avro {verdict}: {reader_problems(reader, writer)}"
                )
    assert checked > 100 and seen_both == {True, False} and disagreements == 0


# --------------------------------------------------------------------------- wording

V1 = rec(
    "Ev", field("id", "string"), field("subject", rec("Subject", field("pnc_id", "string"), field("name", "string")))
)


def _without_pnc(schema: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(schema)
    out["fields"][1]["type"]["fields"] = [f for f in out["fields"][1]["type"]["fields"] if f["name"] != "pnc_id"]
    return out


def test_a_removed_required_field_names_type_versions_and_field() -> None:
    v2 = {**_without_pnc(V1), "accord.compatibility": "FORWARD"}
    assert check_versions("custody", {1: V1, 2: v2}) == [
        "custody: v1 cannot read v2: field subject.pnc_id (string) was removed in v2, "
        "and v1 requires it (it has no default there)"
    ]


def test_an_added_required_field_names_type_versions_and_field() -> None:
    v2 = copy.deepcopy(V1)
    v2["fields"][1]["type"]["fields"].append(field("custody_suite", "string"))
    [line] = check_versions("custody", {1: V1, 2: v2})
    assert line.startswith(
        "custody: v2 cannot read v1: field subject.custody_suite (string) was added in v2 without a default"
    )


def test_a_changed_type_says_both_types() -> None:
    v2 = copy.deepcopy(V1)
    v2["fields"][0]["type"] = "long"
    assert check_versions("custody", {1: V1, 2: v2}) == [
        "custody: v2 cannot read v1: field id is string in v1 but long in v2, and Avro does not read string as long"
    ]


def test_an_enum_symbol_the_reader_lacks_is_named() -> None:
    v1 = rec("Ev", field("urgency", enum("Urgency", "ROUTINE", "URGENT")))
    v2 = {
        **rec("Ev", field("urgency", enum("Urgency", "ROUTINE", "URGENT", "IMMEDIATE"))),
        "accord.compatibility": "FULL",
    }
    assert check_versions("referral", {1: v1, 2: v2}) == [
        "referral: v1 cannot read v2: field urgency (enum Urgency): v2 has symbol IMMEDIATE, which v1 does not, "
        "and v1's enum has no default to read it as"
    ]


def test_an_unreadable_union_branch_is_named() -> None:
    v2 = copy.deepcopy(V1)
    v2["fields"][0]["type"] = ["null", "string"]
    v2["accord.compatibility"] = "FORWARD"
    assert check_versions("custody", {1: V1, 2: v2}) == [
        "custody: v1 cannot read v2: field id is null in v2 but string in v1, and Avro does not read null as string"
    ]
    v3 = copy.deepcopy(V1)
    v3["fields"][0]["type"] = ["null", "string"]
    v4 = {**copy.deepcopy(V1), "accord.compatibility": "BACKWARD"}
    v4["fields"][0]["type"] = ["null", "long"]
    assert check_versions("custody", {1: v3, 2: v4}) == [
        "custody: v2 cannot read v1: field id: v1 may hold string there, which no branch of v2's null or long can read"
    ]


# --------------------------------------------------------------------------- modes over versions

A = rec("Ev", field("a", "int"))
AB_DEFAULT = rec("Ev", field("a", "int"), field("b", "string", default=""))
AB = rec("Ev", field("a", "int"), field("b", "string"))


def _mode(schema: dict[str, Any], mode: str | None) -> dict[str, Any]:
    return copy.deepcopy(schema) if mode is None else {**copy.deepcopy(schema), "accord.compatibility": mode}


def test_backward_checks_the_previous_version_only_and_transitive_every_earlier_one() -> None:
    # v3 requires b: v2 data has it (v2 gave it a default, so wrote it), v1 data does not.
    assert check_versions("t", {1: A, 2: AB_DEFAULT, 3: _mode(AB, "BACKWARD")}) == []
    assert check_versions("t", {1: A, 2: AB_DEFAULT, 3: _mode(AB, "BACKWARD_TRANSITIVE")}) == [
        "t: v3 cannot read v1: field b (string) was added in v3 without a default, and v1 data does not have it: "
        "give it a default (an optional field is a union with null, default null)"
    ]


def test_no_mode_is_backward_transitive() -> None:
    assert DEFAULT_MODE == "BACKWARD_TRANSITIVE"
    assert check_versions("t", {1: A, 2: AB_DEFAULT, 3: _mode(AB, None)}) == check_versions(
        "t", {1: A, 2: AB_DEFAULT, 3: _mode(AB, "BACKWARD_TRANSITIVE")}
    )


def test_backward_lets_a_version_drop_a_field_and_forward_does_not() -> None:
    """Avro skips a writer field the reader lacks, so removing one only breaks the older readers."""
    for mode in ("BACKWARD", "BACKWARD_TRANSITIVE", "NONE"):
        assert check_versions("t", {1: AB, 2: _mode(A, mode)}) == [], mode
    for mode in ("FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"):
        assert check_versions("t", {1: AB, 2: _mode(A, mode)}) == [
            "t: v1 cannot read v2: field b (string) was removed in v2, and v1 requires it (it has no default there)"
        ], mode


def test_forward_transitive_checks_that_every_earlier_version_reads_the_new_one() -> None:
    # v1 requires b, v2 gives it a default, v3 drops it: v2 reads v3 (with the default), v1 cannot.
    assert check_versions("t", {1: AB, 2: AB_DEFAULT, 3: _mode(A, "FORWARD")}) == []
    assert check_versions("t", {1: AB, 2: AB_DEFAULT, 3: _mode(A, "FORWARD_TRANSITIVE")}) == [
        "t: v1 cannot read v3: field b (string) was removed in v3, and v1 requires it (it has no default there)"
    ]


def test_full_checks_both_directions_and_none_nothing() -> None:
    retyped = rec("Ev", field("a", "long"))  # v2 reads v1's int as long; v1 cannot read v2's long
    assert check_versions("t", {1: A, 2: _mode(retyped, "BACKWARD")}) == []
    assert check_versions("t", {1: A, 2: _mode(retyped, "FORWARD")}) == [
        "t: v1 cannot read v2: field a is long in v2 but int in v1, and Avro does not read long as int"
    ]
    assert check_versions("t", {1: A, 2: _mode(retyped, "FULL")}) == check_versions(
        "t", {1: A, 2: _mode(retyped, "FORWARD")}
    )
    assert check_versions("t", {1: A, 2: _mode(rec("Ev", field("z", "string")), "NONE")}) == []


def test_an_unknown_mode_is_a_problem() -> None:
    [line] = check_versions("t", {1: A, 2: _mode(AB_DEFAULT, "backwards")})
    assert line.startswith("t: v2: accord.compatibility 'backwards' is not a compatibility mode")


# --------------------------------------------------------------------------- the catalogue folder


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    """A copy of the shipped schemas/events to change."""
    folder = tmp_path / "events"
    shutil.copytree(EVENTS, folder)
    return folder


def test_the_shipped_catalogue_is_compatible() -> None:
    assert check_catalogue(EVENTS) == []
    require_compatible(EVENTS)


def _write(folder: Path, event_type: str, version: int, schema: dict[str, Any]) -> None:
    (folder / event_type / f"v{version}.avsc").write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")


def _referral_without(field_name: str, mode: str | None) -> dict[str, Any]:
    schema = json.loads((EVENTS / "referral" / "v1.avsc").read_text(encoding="utf-8"))
    schema["fields"] = [f for f in schema["fields"] if f["name"] != field_name]
    if mode is not None:
        schema["accord.compatibility"] = mode
    return schema


def test_a_v2_that_removes_a_required_field_is_refused_naming_type_versions_and_field(catalogue: Path) -> None:
    _write(catalogue, "referral", 2, _referral_without("narrative", "FULL_TRANSITIVE"))
    problems = check_catalogue(catalogue)
    assert problems == [
        "referral: v1 cannot read v2: field narrative (string) was removed in v2, "
        "and v1 requires it (it has no default there)"
    ]
    with pytest.raises(IncompatibleCatalogue) as refused:
        require_compatible(catalogue)
    assert str(refused.value) == problems[0] and refused.value.problems == problems


def test_under_the_default_mode_removing_a_field_is_backward_compatible(catalogue: Path) -> None:
    """v2 readers skip v1's narrative: Avro allows it. What still reads the field is an agreement
    naming it, which agreements.loader refuses (a field must be in every version)."""
    _write(catalogue, "referral", 2, _referral_without("narrative", None))
    assert check_catalogue(catalogue) == []


def test_a_v2_adding_a_required_field_is_refused_under_the_default_mode(catalogue: Path) -> None:
    schema = json.loads((EVENTS / "referral" / "v1.avsc").read_text(encoding="utf-8"))
    schema["fields"].append({"name": "outcome", "type": "string"})
    for version in sorted(int(p.stem[1:]) for p in (catalogue / "referral").glob("v*.avsc"))[1:]:
        (catalogue / "referral" / f"v{version}.avsc").unlink()
    _write(catalogue, "referral", 2, schema)
    [line] = check_catalogue(catalogue)
    assert line.startswith("referral: v2 cannot read v1: field outcome (string) was added in v2 without a default")


def test_the_types_mode_is_its_latest_versions(catalogue: Path) -> None:
    _write(catalogue, "referral", 2, _referral_without("narrative", "FULL"))
    assert len(check_catalogue(catalogue)) == 1
    v3 = _referral_without("narrative", "NONE")
    v3["fields"] = [f for f in v3["fields"] if f["name"] != "urgency"]
    _write(catalogue, "referral", 3, v3)
    assert check_catalogue(catalogue) == []
    # Given outright, the mode wins over the property; transitive modes check every earlier version.
    versions = {n: json.loads((catalogue / "referral" / f"v{n}.avsc").read_text(encoding="utf-8")) for n in (1, 2, 3)}
    assert [
        line.split(": field ")[0] + ": " + line.split(": field ")[1].split(" ")[0]
        for line in check_versions("referral", versions, "FULL_TRANSITIVE")
    ] == [
        "referral: v1 cannot read v2: narrative",
        "referral: v1 cannot read v3: urgency",
        "referral: v1 cannot read v3: narrative",
        "referral: v2 cannot read v3: urgency",
    ]
    assert len(check_versions("referral", versions, "FORWARD")) == 2  # v1 reads not v2, v2 reads not v3
    assert check_versions("referral", versions, "BACKWARD_TRANSITIVE") == []


def test_a_catalogue_the_catalogue_loader_refuses_is_one_line(catalogue: Path) -> None:
    v1 = json.loads((EVENTS / "custody" / "v1.avsc").read_text(encoding="utf-8"))
    _write(catalogue, "custody", 3, v1)
    [line] = check_catalogue(catalogue)
    assert line.startswith(f"{catalogue / 'custody' / 'v2.avsc'}: missing: ")
    (catalogue / "custody" / "v3.avsc").unlink()
    (catalogue / "natal_care" / "v2.avsc").write_text('{"type": "record", "name": "X"', encoding="utf-8")
    [line] = check_catalogue(catalogue)
    assert line.startswith(f"{catalogue / 'natal_care' / 'v2.avsc'}: not JSON")
    with pytest.raises(IncompatibleCatalogue, match="not JSON"):
        require_compatible(catalogue)
