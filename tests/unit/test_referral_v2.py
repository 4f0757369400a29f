"""Referral v2: one optional field more than v1, ``subject.interpreter_language``.

A hub that arranges an interpreter before it contacts a family needs to know
the language; v1 had nowhere to say it. The field is optional (a union with
null, default null), so v2 reads every v1 referral, and v1 readers skip it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from producers.synthetic import build_scenario
from schemas.compatibility import DEFAULT_MODE, check_catalogue, check_versions
from schemas.serde import Catalogue
from tests.unit.test_compatibility import _records

EVENTS = Path(__file__).resolve().parents[2] / "schemas" / "events"


def _version(n: int) -> dict[str, Any]:
    return json.loads((EVENTS / "referral" / f"v{n}.avsc").read_text(encoding="utf-8"))


def test_v2_adds_one_optional_field_with_v1s_properties() -> None:
    v1, v2 = _version(1), _version(2)
    assert {k: v for k, v in v2.items() if k.startswith("accord.")} == {
        k: v for k, v in v1.items() if k.startswith("accord.")
    }
    old = {p: {f["name"] for f in r["fields"]} for p, r in _records(v1)}
    added = [(p, f) for p, r in _records(v2) for f in r["fields"] if f["name"] not in old[p]]
    assert [(p, f["name"], f["type"], f["default"]) for p, f in added] == [
        ("subject", "interpreter_language", ["null", "string"], None)
    ]


def test_v2_is_backward_transitive_compatible_with_v1_and_forward_too() -> None:
    v1, v2 = _version(1), _version(2)
    assert v2.get("accord.compatibility", DEFAULT_MODE) == "BACKWARD_TRANSITIVE"
    assert check_versions("referral", {1: v1, 2: v2}) == []
    assert check_versions("referral", {1: v1, 2: v2}, "FULL_TRANSITIVE") == []  # v1 readers skip the field
    assert check_catalogue(EVENTS) == []


def test_the_serde_reads_v1_and_v2_referrals_side_by_side() -> None:
    [record] = [e.record for e in build_scenario(n_events=80, seed=7).events if e.event_type == "referral"][:1]
    serde = Catalogue.default()
    with_language = {**record, "subject": {**record["subject"], "interpreter_language": "British Sign Language"}}
    old, new = serde.encode("referral.v1", record), serde.encode("referral", with_language)
    assert old[2:10] != new[2:10]
    name, got_old = serde.decode(old)
    assert name == "referral" and "interpreter_language" not in got_old["subject"]
    name, got_new = serde.decode(new)
    assert name == "referral" and got_new["subject"]["interpreter_language"] == "British Sign Language"
