"""A new event type is data: a schema folder, an agreement and a partner, and no code.

The project's packages are copied to a temporary folder, and only data is added
to the copy: ``schemas/events/school_attendance/v1.avsc`` (a school reports a
pupil's persistent absence to the safeguarding hub), an agreement naming it in
``agreements/examples/`` and its recipient in ``agreements/partners.yaml``. The
copy then runs as its own processes (``PYTHONPATH=<copy>``): topics are created,
an event is published, the processor decides, the partner reads its topic and the
subject report is asked for, each checked from outside, on the real broker and
PostgreSQL. Were any module still listing the event types, the event would never
reach the partner.

What the copy runs is the copy's code: the test first asks the copy where its
``schemas`` package is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from accord.dev.drain import wait_for_group
from tests.bus import make_settings, settings_env
from tests.conftest import fresh_role_database
from tests.copies import copy_packages

EVENT_TYPE = "school_attendance"
SCHOOL = "oakfield-school"
HUB = "salford-attendance-hub"
NHS_NUMBER = "9434765919"  # passes Modulus 11 (schemas.subject_keys' own example)

ENVELOPE = {
    "name": "envelope",
    "doc": "Provenance shared by every event.",
    "type": {
        "type": "record",
        "name": "Envelope",
        "namespace": "accord.events",
        "fields": [
            {"name": "event_id", "type": "string", "doc": "Globally unique id set by the source system (UUID)."},
            {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "recorded_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "source_agency", "type": "string", "doc": "Agency id, e.g. met-police."},
            {"name": "source_system", "type": "string"},
        ],
    },
}

SCHEMA = {
    "type": "record",
    "name": "SchoolAttendanceEvent",
    "namespace": "accord.events.school_attendance",
    "doc": "A school's report of a pupil's persistent absence to the safeguarding hub.",
    "accord.subject_key": [
        {"scheme": "nhs", "field": "subject.nhs_number"},
        {"scheme": "local", "field": "subject.pupil_id"},
    ],
    "accord.identifiers": ["subject.nhs_number", "subject.pupil_id"],
    "accord.partitions": 2,
    "fields": [
        ENVELOPE,
        {
            "name": "subject",
            "type": {
                "type": "record",
                "name": "Pupil",
                "fields": [
                    {"name": "pupil_id", "type": "string", "doc": "The school's own id for the pupil."},
                    {"name": "nhs_number", "type": ["null", "string"], "default": None},
                    {"name": "given_names", "type": "string"},
                    {"name": "family_name", "type": "string"},
                    {"name": "date_of_birth", "type": {"type": "int", "logicalType": "date"}},
                ],
            },
        },
        {
            "name": "school",
            "type": {
                "type": "record",
                "name": "School",
                "fields": [{"name": "urn", "type": "string"}, {"name": "name", "type": "string"}],
            },
        },
        {"name": "term", "type": "string", "doc": "e.g. 2025-26 autumn."},
        {"name": "sessions_possible", "type": "int"},
        {"name": "sessions_missed", "type": "int"},
    ],
}

AGREEMENT = f"""\
# A school's reports of persistent absence shared with the safeguarding hub's
# attendance team, who follow up children missing education.
id: school-attendance-to-hub
version: 1
title: Persistent absence reports to the Salford attendance hub
status: active
providers: [{SCHOOL}]
recipients: [{HUB}]
parties:
  - {{name: Oakfield School, role: controller, id: {SCHOOL}}}
  - {{name: Salford attendance and safeguarding hub, role: joint_controller, id: {HUB}}}
event_types: [{EVENT_TYPE}]
purpose: safeguarding
legal_basis: >-
  UK GDPR Art 6(1)(e) and Art 9(2)(g); DPA 2018 Sch 1 Pt 2 para 18; Education Act 1996 s.436A
lawful_basis:
  article_6: 6(1)(e)
  article_9: 9(2)(g)
  dpa_2018_schedule_1: Sch 1 Pt 2 para 18
  statutory_gateway: Education Act 1996 s.436A
consent_mode: not_required
consent_justification: Education Act 1996 s.436A (children missing education); a statutory duty to identify them.
fields:
  {EVENT_TYPE}:
    - envelope.event_id
    - envelope.occurred_at
    - envelope.source_agency
    - subject.pupil_id
    - subject.nhs_number
    - subject.given_names
    - subject.family_name
    - school
    - term
    - sessions_missed
valid_from: 2026-01-01
review_date: 2027-03-31
"""

# Publishes one JSON line as `accord publish --type school_attendance --agency ...` does (the same
# ingest_jsonl), and prints the end offsets for the test to wait on.
PUBLISH = """\
import json, sys
from pathlib import Path
from bus.settings import Settings
from producers import Publisher, ingest_jsonl
report = ingest_jsonl(Path(sys.argv[1]), sys.argv[2], sys.argv[3], Publisher(Settings()))
print(json.dumps({"refused": [r.describe(Path(sys.argv[1])) for r in report.refused],
                  "failed": len(report.published.failed),
                  "end_offsets": [[t, p, o] for (t, p), o in report.published.end_offsets.items()]}))
"""


def make_copy(root: Path) -> Path:
    """The project's packages, then only data added: the schema folder, the agreement, the partner."""
    copy = copy_packages(root / "copy")
    folder = copy / "schemas" / "events" / EVENT_TYPE
    folder.mkdir()
    (folder / "v1.avsc").write_text(json.dumps(SCHEMA, indent=2) + "\n", encoding="utf-8")
    (copy / "agreements" / "examples" / "school-attendance-to-hub.yaml").write_text(AGREEMENT, encoding="utf-8")
    partners = copy / "agreements" / "partners.yaml"
    partners.write_text(partners.read_text(encoding="utf-8") + f"{HUB}: safeguarding_partnership\n", encoding="utf-8")
    return copy


def run(copy: Path, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args[:4])} exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def event(event_id: str) -> dict[str, Any]:
    return {
        "envelope": {
            "event_id": event_id,
            "occurred_at": "2026-03-20T09:00:00Z",
            "recorded_at": "2026-03-20T09:05:00Z",
            "source_agency": SCHOOL,
            "source_system": "school-mis",
        },
        "subject": {
            "pupil_id": "OAK-P-00042",
            "nhs_number": NHS_NUMBER,
            "given_names": "Robin",
            "family_name": "Testperson",
            "date_of_birth": "2014-09-01",
        },
        "school": {"urn": "100000", "name": "Oakfield School"},
        "term": "2025-26 spring",
        "sessions_possible": 120,
        "sessions_missed": 31,
    }


def test_a_new_event_type_needs_only_data(broker: str, tmp_path: Path) -> None:
    copy = make_copy(tmp_path)
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path / "state")
        settings.state_dir.mkdir()
        env = {**os.environ, **settings_env(settings), "PYTHONPATH": str(copy)}
        env.pop("ACCORD_AGREEMENTS_DIR", None)
        env.pop("ACCORD_PARTNERS_FILE", None)

        where = run(
            copy,
            env,
            "-c",
            "import schemas, bus.topics; print(schemas.__file__); "
            "print(bus.topics.EVENT_TOPIC_PARTITIONS['school_attendance'])",
        )
        assert where.stdout.split() == [str(copy / "schemas" / "__init__.py"), "2"]

        topics = run(copy, env, "-m", "accord.cli", "topics", "create").stdout
        prefix = settings.topic_prefix
        assert f"{prefix}events.{EVENT_TYPE}.v1" in topics
        assert f"{prefix}partner.{HUB}.{EVENT_TYPE}" in topics

        log = (settings.state_dir / "processor.log").open("ab")
        processor = subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            cwd=copy,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            event_id = str(uuid.uuid4())
            lines = tmp_path / "absence.jsonl"
            lines.write_text(json.dumps(event(event_id)) + "\n", encoding="utf-8")
            published = json.loads(run(copy, env, "-c", PUBLISH, str(lines), EVENT_TYPE, SCHOOL).stdout)
            assert published["refused"] == [] and published["failed"] == 0, published
            targets = {(t, p): o for t, p, o in published["end_offsets"]}
            assert [t for t, _ in targets] == [f"{prefix}events.{EVENT_TYPE}.v1"]
            wait_for_group(settings, settings.processor_group, targets, timeout=90)

            consumed = run(copy, env, "-m", "accord.cli", "consume", "--partner", HUB, "--json", "--idle", "3")
            [got] = [json.loads(line) for line in consumed.stdout.splitlines() if line.startswith("{")]
            assert (got["event_type"], got["agreement"]) == (EVENT_TYPE, "school-attendance-to-hub@v1"), got
            record = got["record"]
            assert record["envelope"]["event_id"] == event_id
            assert record["sessions_missed"] == 31 and record["term"] == "2025-26 spring"
            assert record["subject"]["nhs_number"] == NHS_NUMBER
            assert "sessions_possible" not in record and "date_of_birth" not in record["subject"]  # not allowed

            report_out = run(
                copy, env, "-m", "accord.cli", "ledger", "report", "--subject", f"nhs:{NHS_NUMBER}", "--format", "json"
            ).stdout
            report = json.loads(report_out)
            items = [i for i in _items(report) if i.get("disclosure_id") == got["disclosure_id"]]
            assert len(items) == 1, report_out[:2000]
            [item] = items
            assert (item["outcome"], item["recipient"], item["event_type"], item["provider"]) == (
                "DISCLOSED",
                HUB,
                EVENT_TYPE,
                SCHOOL,
            )
            assert item["agreement"]["id"] == "school-attendance-to-hub"
        finally:
            processor.terminate()
            try:
                processor.wait(15)
            except subprocess.TimeoutExpired:
                processor.kill()
                processor.wait()
            log.close()


def _items(report: Any) -> list[dict[str, Any]]:
    """Every decision item in the report, wherever the report nests them."""
    if isinstance(report, dict):
        found = [report] if "disclosure_id" in report and "outcome" in report else []
        for value in report.values():
            found += _items(value)
        return found
    if isinstance(report, list):
        return [item for value in report for item in _items(value)]
    return []
