"""Agreement projection: only allowed fields ever reach a recipient (no Kafka)."""

from __future__ import annotations

from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.projection import UnknownField, check_paths, project_record, project_schema
from schemas.serde import Catalogue, InvalidRecord, fingerprint, load_schema
from tests.unit.test_serde import custody_record, natal_care_record, referral_record

NS_CPS = "accord.partner.cps.custody_to_cps.v1"
NS_LD = "accord.partner.liaison.custody_to_ld.v1"

CPS_PATHS = [
    "envelope.event_id",
    "envelope.occurred_at",
    "event_kind",
    "custody_record_id",
    "subject.given_names",
    "subject.date_of_birth",
    "subject.address.town",
    "offence_codes",
]


def leaf_paths(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every non-record value in a record by dotted path (a None sub-record is a leaf)."""
    out: dict[str, Any] = {}
    for key, v in value.items():
        path = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(leaf_paths(v, path + "."))
        else:
            out[path] = v
    return out


def schema_leaf_paths(schema: Any, names: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    names = names if names is not None else schema["__named_schemas"]
    out = []
    for f in schema["fields"]:
        t = f["type"]
        branches = t if isinstance(t, list) else [t]
        resolved = [names.get(b, b) if isinstance(b, str) else b for b in branches]
        records = [r for r in resolved if isinstance(r, dict) and r.get("type") == "record"]
        if records:
            out += schema_leaf_paths(records[0], names, f"{prefix}{f['name']}.")
        else:
            out.append(prefix + f["name"])
    return out


def allowed(path: str, value: Any, paths: set[str]) -> bool:
    """A leaf is allowed if named, under a named field, or a None parent of an allowed path."""
    if any(path == p or path.startswith(p + ".") for p in paths):
        return True
    return value is None and any(p.startswith(path + ".") for p in paths)


# --------------------------------------------------------------------------- check_paths


def test_check_paths_accepts_leaves_sub_records_and_paths_through_nullable_unions() -> None:
    check_paths(load_schema("custody"), ["subject", "subject.address", "subject.address.postcode", "offence_codes"])
    check_paths(load_schema("natal_care"), ["baby.sex", "health_visitor_handover.handover_date"])


@pytest.mark.parametrize(
    "bad",
    ["subject.shoe_size", "subjects", "offence_codes.code", "subject.nhs_number.digits", "", "subject.", ".subject"],
)
def test_check_paths_refuses_unknown_paths(bad: str) -> None:
    with pytest.raises(UnknownField) as info:
        check_paths(load_schema("custody"), ["event_kind", bad])
    assert info.value.path == bad


# --------------------------------------------------------------------------- project_record


def test_project_record_keeps_only_allowed_fields() -> None:
    record = custody_record()
    out = project_record(record, CPS_PATHS)
    assert out == {
        "envelope": {"event_id": record["envelope"]["event_id"], "occurred_at": record["envelope"]["occurred_at"]},
        "event_kind": "CHARGE",
        "custody_record_id": "MP-2026-000123",
        "subject": {
            "given_names": "Alex Jordan",
            "date_of_birth": record["subject"]["date_of_birth"],
            "address": {"town": "Exampleton"},
        },
        "offence_codes": ["TH68001", "CJ03507"],
    }
    assert "nhs_number" not in out["subject"] and "pnc_id" not in out["subject"]


def test_project_record_null_sub_record_stays_null() -> None:
    out = project_record(custody_record(with_address=False), ["subject.address.town"])
    assert out == {"subject": {"address": None}}


def test_project_record_whole_sub_record_wins_over_sub_paths() -> None:
    record = custody_record()
    out = project_record(record, ["subject.address.town", "subject.address"])
    assert out == {"subject": {"address": record["subject"]["address"]}}
    out["subject"]["address"]["town"] = "changed"
    assert record["subject"]["address"]["town"] == "Exampleton"  # a copy, not an alias


def test_project_record_refuses_a_non_record_under_a_partial_allow() -> None:
    record = custody_record()
    record["subject"] = "everything about the subject"
    with pytest.raises(ValueError):
        project_record(record, ["subject.given_names"])


def test_empty_allow_list_discloses_nothing() -> None:
    assert project_record(custody_record(), []) == {}


# --------------------------------------------------------------------------- project_schema


def test_project_schema_holds_only_allowed_fields_in_source_order() -> None:
    schema = project_schema(load_schema("custody"), CPS_PATHS, NS_CPS)
    assert [f["name"] for f in schema["fields"]] == [
        "envelope",
        "event_kind",
        "custody_record_id",
        "subject",
        "offence_codes",
    ]
    assert sorted(schema_leaf_paths(schema)) == sorted(CPS_PATHS)
    subject = next(f for f in schema["fields"] if f["name"] == "subject")["type"]
    assert [f["name"] for f in subject["fields"]] == ["given_names", "date_of_birth", "address"]
    address = next(f for f in subject["fields"] if f["name"] == "address")
    assert address["default"] is None and address["type"][0] == "null"
    assert [f["name"] for f in address["type"][1]["fields"]] == ["town"]


def test_project_schema_moves_every_named_type_into_the_namespace() -> None:
    schema = project_schema(load_schema("custody"), CPS_PATHS, NS_CPS)
    assert schema["name"] == f"{NS_CPS}.CustodyEvent"
    assert schema["__named_schemas"]
    assert all(name.startswith(NS_CPS + ".") for name in schema["__named_schemas"])
    assert f"{NS_CPS}.CustodyEventKind" in schema["__named_schemas"]
    assert fingerprint(schema) != fingerprint(load_schema("custody"))


def test_project_schema_refuses_unknown_paths() -> None:
    with pytest.raises(UnknownField):
        project_schema(load_schema("custody"), ["subject.shoe_size"], NS_CPS)


def test_full_projection_differs_from_source_only_by_name() -> None:
    source = load_schema("custody")
    every = [f["name"] for f in source["fields"]]
    schema = project_schema(source, every, NS_CPS)
    assert fingerprint(schema) != fingerprint(source)
    record = custody_record()
    assert project_record(record, every) == record


def test_projected_records_round_trip_through_a_catalogue() -> None:
    catalogue = Catalogue.default()
    ld_paths = ["envelope.event_id", "subject.nhs_number", "subject.date_of_birth"]
    catalogue.register("cps.custody", project_schema(load_schema("custody"), CPS_PATHS, NS_CPS))
    catalogue.register("ld.custody", project_schema(load_schema("custody"), ld_paths, NS_LD))
    for with_address in (True, False):
        record = custody_record(with_address)
        cps = project_record(record, CPS_PATHS)
        ld = project_record(record, ld_paths)
        assert catalogue.decode(catalogue.encode("cps.custody", cps)) == ("cps.custody", cps)
        assert catalogue.decode(catalogue.encode("ld.custody", ld)) == ("ld.custody", ld)


def test_projected_schema_refuses_a_field_outside_the_allow_list() -> None:
    catalogue = Catalogue()
    catalogue.register("cps.custody", project_schema(load_schema("custody"), CPS_PATHS, NS_CPS))
    leaky = project_record(custody_record(), CPS_PATHS)
    leaky["subject"]["nhs_number"] = "9434765919"
    with pytest.raises(InvalidRecord) as info:
        catalogue.encode("cps.custody", leaky)
    assert info.value.field == "subject.nhs_number"


def test_nullable_union_records_at_top_level() -> None:
    source = load_schema("natal_care")
    paths = ["event_kind", "baby.date_of_birth", "health_visitor_handover"]
    catalogue = Catalogue()
    catalogue.register("hv", project_schema(source, paths, "accord.partner.hv.natal.v1"))
    record = natal_care_record()
    out = project_record(record, paths)
    assert out == {
        "event_kind": "BIRTH",
        "baby": {"date_of_birth": record["baby"]["date_of_birth"]},
        "health_visitor_handover": record["health_visitor_handover"],
    }
    assert catalogue.decode(catalogue.encode("hv", out))[1] == out
    record["baby"] = None
    record["health_visitor_handover"] = None
    out = project_record(record, paths)
    assert out == {"event_kind": "BIRTH", "baby": None, "health_visitor_handover": None}
    assert catalogue.decode(catalogue.encode("hv", out))[1] == out


def test_projection_of_referral_keeps_enum_inside_partial_record() -> None:
    paths = ["subject.subject_kind", "urgency"]
    schema = project_schema(load_schema("referral"), paths, "accord.partner.mash.referral.v1")
    catalogue = Catalogue()
    catalogue.register("mash", schema)
    out = project_record(referral_record(), paths)
    assert out == {"subject": {"subject_kind": "CHILD"}, "urgency": "URGENT"}
    assert catalogue.decode(catalogue.encode("mash", out))[1] == out


def test_projected_schema_parses_from_its_json_form() -> None:
    schema = project_schema(load_schema("custody"), CPS_PATHS, NS_CPS)
    plain = {k: v for k, v in schema.items() if not k.startswith("__")}
    assert fingerprint(fastavro.parse_schema(plain)) == fingerprint(schema)


# --------------------------------------------------------------------------- property


CUSTODY = load_schema("custody")
CUSTODY_LEAVES = schema_leaf_paths(CUSTODY)


def test_custody_leaf_paths_are_what_the_property_test_samples() -> None:
    assert "subject.address.postcode" in CUSTODY_LEAVES and "subject.address" not in CUSTODY_LEAVES
    assert len(CUSTODY_LEAVES) == 17


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subset=st.sets(st.sampled_from(CUSTODY_LEAVES)), with_address=st.booleans())
def test_projection_never_leaks_a_leaf_outside_the_subset(subset: set[str], with_address: bool) -> None:
    record = custody_record(with_address)
    out = project_record(record, sorted(subset))
    leaves = leaf_paths(out)
    for path, value in leaves.items():
        assert allowed(path, value, subset), f"{path} leaked for allow list {sorted(subset)}"
    # and everything allowed that the source holds is there
    source_leaves = leaf_paths(record)
    for path in subset:
        if path in source_leaves:
            assert leaves[path] == source_leaves[path]
    # the schema side agrees: the projected record encodes with the projected schema
    catalogue = Catalogue()
    catalogue.register("p", project_schema(CUSTODY, sorted(subset), NS_CPS))
    assert catalogue.decode(catalogue.encode("p", out))[1] == out


# --------------------------------------------------------------------------- compiled projectors against the old one
#
# project_record and projector() compile each allow list once; given the schema's key
# order, records in that order take straight-line code. The oracle is project_record as
# it was (a tree built per call, a walk of the record's own keys), kept here: every
# projector must give the same dict, key order and value types included, or the same error.

from collections import OrderedDict  # noqa: E402
from collections.abc import Mapping  # noqa: E402

from schemas.projection import key_order, projector  # noqa: E402


def oracle_project_record(record: Any, paths: list[str]) -> dict[str, Any]:
    root: dict = {}
    for path in paths:
        parts = path.split(".")
        node = root
        for i, part in enumerate(parts):
            if part in node and node[part] is None:
                break
            if i == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})

    def copy(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: copy(v) for k, v in value.items()}
        if isinstance(value, list):
            return [copy(v) for v in value]
        return value

    def walk(value: Mapping[str, Any], tree: dict, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, v in value.items():
            if key not in tree:
                continue
            sub = tree[key]
            if sub is None:
                out[key] = copy(v)
            elif v is None:
                out[key] = None
            elif isinstance(v, Mapping):
                out[key] = walk(v, sub, f"{path}{key}.")
            else:
                raise ValueError(f"{path}{key}: expected a record or null to project, got {type(v).__name__}")
        return out

    return walk(record, root, "")


def exact(value: Any) -> Any:
    if isinstance(value, dict):
        return (type(value).__name__, [(k, exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [exact(v) for v in value])
    return (type(value).__name__, value)


def answer(fn: Any) -> Any:
    try:
        return exact(fn())
    except Exception as exc:
        return (type(exc).__name__, str(exc))


BUILDERS = {"custody": custody_record, "referral": referral_record, "natal_care": natal_care_record}
ORDERS = {t: key_order(load_schema(t)) for t in BUILDERS}
PATHS = {
    t: sorted(leaf_paths(BUILDERS[t]())) + sorted({p.split(".")[0] for p in leaf_paths(BUILDERS[t]()) if "." in p})
    for t in BUILDERS
}
ODD = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=4),
    st.lists(st.integers(), max_size=2),
    # Fresh objects each draw: a shared st.just dict, disturbed in place, came to hold itself.
    st.builds(lambda: {"line1": "x"}),
    st.builds(lambda: OrderedDict(town="y")),
    st.just(("t",)),
)


@st.composite
def disturbed(draw: st.DrawFn, event_type: str) -> dict[str, Any]:
    """A record as decode returns it, or with a key dropped, added, moved, or a value swapped for an odd one."""
    record = BUILDERS[event_type]()
    for _ in range(draw(st.integers(0, 2))):
        target: Any = record
        path = draw(st.sampled_from(PATHS[event_type])).split(".")
        for part in path[:-1]:
            target = target.get(part) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        how = draw(st.sampled_from(["drop", "add", "move", "odd"]))
        if how == "drop":
            target.pop(path[-1], None)
        elif how == "add":
            target["extra_key"] = draw(ODD)
        elif how == "move" and path[-1] in target:
            target[path[-1]] = target.pop(path[-1])
        else:
            target[path[-1]] = draw(ODD)
    return record


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(BUILDERS)), st.data())
def test_compiled_projectors_are_the_old_projection(event_type: str, data: st.DataObject) -> None:
    record = data.draw(disturbed(event_type))
    paths = data.draw(st.lists(st.sampled_from(PATHS[event_type]), min_size=1, max_size=8))
    expected = answer(lambda: oracle_project_record(record, paths))
    assert answer(lambda: project_record(record, paths)) == expected
    assert answer(lambda: projector(paths, ORDERS[event_type])(record)) == expected
    assert answer(lambda: projector(paths)(record)) == expected


def test_a_decoded_record_takes_the_straight_line_path() -> None:
    """The fast path is what decoded records meet (else the test above would only test the generic one)."""
    fast = projector(CPS_PATHS, ORDERS["custody"])
    assert fast is not projector(CPS_PATHS) and fast.__name__ == "project" and "slow" in fast.__globals__
    record = BUILDERS["custody"]()
    calls: list[Any] = []

    def spy(r: Any) -> dict[str, Any]:
        calls.append(r)
        return {}

    fast.__globals__["slow"], slow = spy, fast.__globals__["slow"]
    try:
        assert exact(fast(record)) == exact(oracle_project_record(record, CPS_PATHS))
        assert calls == []
    finally:
        fast.__globals__["slow"] = slow
