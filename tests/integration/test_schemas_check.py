"""`accord schemas check` and the processor's start refuse versions their mode forbids.

Each case copies the real catalogue to a temporary folder and adds a v2 to one type:
an added optional field passes; an added required field (no default) fails
BACKWARD_TRANSITIVE, the default mode, because v2 cannot read v1's records; a removed
required field fails FULL_TRANSITIVE (under BACKWARD a reader may drop a field: Avro's
resolution skips it, and an agreement naming it is refused at load instead). The
refusal is one line per problem naming the type, the versions and the field.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bus.settings import PACKAGE_ROOT
from tests.copies import copy_packages

EVENTS = PACKAGE_ROOT / "schemas" / "events"


def accord(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
    )


def with_v2(folder: Path, change: Any) -> Path:
    """The catalogue in ``folder`` with referral v2 = ``change(a copy of referral v1)``."""
    shutil.copytree(EVENTS, folder, ignore=shutil.ignore_patterns("v[2-9]*.avsc"))
    v1 = json.loads((folder / "referral" / "v1.avsc").read_text(encoding="utf-8"))
    v2 = change(copy.deepcopy(v1))
    (folder / "referral" / "v2.avsc").write_text(json.dumps(v2, indent=2), encoding="utf-8")
    return folder


def subject_fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    [subject] = [f for f in schema["fields"] if f["name"] == "subject"]
    return subject["type"]["fields"]


def test_the_shipped_catalogue_is_compatible() -> None:
    done = accord("schemas", "check")
    assert done.returncode == 0, done.stderr
    assert "every type's versions are compatible" in done.stdout


def test_an_added_optional_field_passes(tmp_path: Path) -> None:
    def add_optional(s: dict[str, Any]) -> dict[str, Any]:
        subject_fields(s).append({"name": "preferred_name", "type": ["null", "string"], "default": None})
        return s

    done = accord("schemas", "check", "--events", str(with_v2(tmp_path / "events", add_optional)))
    assert done.returncode == 0, done.stderr


def test_an_added_required_field_is_refused_under_the_default_mode(tmp_path: Path) -> None:
    def add_required(s: dict[str, Any]) -> dict[str, Any]:
        subject_fields(s).append({"name": "school_urn", "type": "string"})
        return s

    done = accord("schemas", "check", "--events", str(with_v2(tmp_path / "events", add_required)))
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("accord schemas check: referral: ")
    assert "v1" in line and "v2" in line and "subject.school_urn" in line
    assert "Traceback" not in done.stderr


def test_a_removed_required_field_is_refused_under_full_transitive(tmp_path: Path) -> None:
    def remove_field(s: dict[str, Any]) -> dict[str, Any]:
        s["accord.compatibility"] = "FULL_TRANSITIVE"
        fields = subject_fields(s)
        fields[:] = [f for f in fields if f["name"] != "family_name"]
        return s

    v1 = json.loads((EVENTS / "referral" / "v1.avsc").read_text(encoding="utf-8"))
    assert any(f["name"] == "family_name" and "default" not in f for f in subject_fields(v1)), "the case needs it"
    done = accord("schemas", "check", "--events", str(with_v2(tmp_path / "events", remove_field)))
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines and all(x.startswith("accord schemas check: referral: ") for x in lines)
    assert any("v1" in x and "v2" in x and "subject.family_name" in x for x in lines), lines


def test_the_processor_refuses_to_start_on_an_incompatible_catalogue(tmp_path: Path) -> None:
    """A copy of the packages whose catalogue has a bad v2: `accord run processor` exits 2 with the one line."""
    project = copy_packages(tmp_path / "copy")
    shutil.rmtree(project / "schemas" / "events")

    def add_required(s: dict[str, Any]) -> dict[str, Any]:
        subject_fields(s).append({"name": "school_urn", "type": "string"})
        return s

    with_v2(project / "schemas" / "events", add_required)
    done = accord(
        "run",
        "processor",
        cwd=project,
        env={
            "PYTHONPATH": str(project),
            "ACCORD_STATE_DIR": str(tmp_path / "state"),
            "ACCORD_BOOTSTRAP_SERVERS": "127.0.0.1:9",
            "ACCORD_HEALTH_PORT": "0",
        },
    )
    assert done.returncode == 2, (done.returncode, done.stderr[-500:])
    [line] = [x for x in done.stderr.splitlines() if x.startswith("accord run:")]
    assert "referral" in line and "subject.school_urn" in line and "Traceback" not in done.stderr
