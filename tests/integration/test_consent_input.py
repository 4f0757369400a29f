"""`accord consent deny|permit` records only what will apply, and refuses the rest in one line.

Run as a person runs it (a subprocess against PostgreSQL as the app role): every
refusal is one line on stderr naming the option, exit 2, no traceback, nothing
recorded. What is accepted applies: the sharing decision, given the consent
history the store returns for the event's subject, withholds.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

import consent
from accord.sharing.decide import Context, Decision, Outcome, decide, subject_key
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from consent.store import ConsentRow
from producers.nhs_number import is_valid
from producers.synthetic import build_scenario
from tests.conftest import RoleDatabase

NUMBER = "9434765919"
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
KNOWN = consent.KnownScopes.from_partners(PARTNERS)
AGREEMENTS = load_dir(PACKAGE_ROOT / "agreements" / "examples")
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def _accord(role_db: RoleDatabase, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCORD_LEDGER_URL": role_db.app_url, "ACCORD_STATE_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "consent", *args], env=env, capture_output=True, text=True, timeout=120
    )


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(ConsentRow)).scalar_one()


def _natal_event_of(mother_nhs: str) -> dict:
    event = next(e for e in build_scenario(n_events=60, seed=7).events if e.event_type == "natal_care")
    record = copy.deepcopy(event.record)
    record["mother"]["nhs_number"] = mother_nhs
    return record


def _decide(engine: Engine, record: dict) -> dict[str, Decision]:
    """What the processor decides: the store's history for the event's own subject key."""
    key = subject_key("natal_care", record)
    consents = consent.history(engine, [key]).get(key, [])
    return {
        d.recipient: d
        for d in decide(
            "natal_care", record, AGREEMENTS, consents, Context(NOW, PARTNERS, b"unit-test-key-0123456789abcdef01")
        )
    }


def test_the_issue_numbers() -> None:
    assert is_valid(NUMBER) and not is_valid("9434765918")


def test_a_bare_nhs_number_is_recorded_as_nhs_key_and_applies(role_db: RoleDatabase, tmp_path: Path) -> None:
    record = _natal_event_of(NUMBER)
    before = _decide(role_db.app, record)["salford-health-visiting"]
    assert before.outcome is Outcome.DISCLOSED  # opt-out agreement: shared until the citizen opts out

    result = _accord(role_db, tmp_path, "deny", "--subject", NUMBER, "--recipient", "salford-health-visiting")
    assert result.returncode == 0, result.stderr
    assert f"subject=nhs:{NUMBER}" in result.stdout
    [rec] = consent.history(role_db.app, [f"nhs:{NUMBER}"])[f"nhs:{NUMBER}"]
    assert consent.history(role_db.app, [NUMBER]) == {}  # never filed under the bare number

    after = _decide(role_db.app, record)["salford-health-visiting"]
    assert after.outcome is Outcome.WITHHELD
    assert after.reason == f"consent denied (consent record {rec.id})" and after.consent_version == rec.id


def test_a_recipient_class_is_recorded_and_applies_to_its_partners(role_db: RoleDatabase, tmp_path: Path) -> None:
    record = _natal_event_of(NUMBER)
    result = _accord(role_db, tmp_path, "deny", "--subject", f"nhs:{NUMBER}", "--recipient-class", "local_authority")
    assert result.returncode == 0, result.stderr
    assert "recipient=class:local_authority" in result.stdout
    assert _decide(role_db.app, record)["salford-health-visiting"].outcome is Outcome.WITHHELD


@pytest.mark.parametrize(
    "subject", ["pnc:26/123456A", "local:salford-council:LCS123456", "local:oakfield-school:OAK-00001"]
)
def test_pnc_and_local_keys_are_recorded_as_given(role_db: RoleDatabase, tmp_path: Path, subject: str) -> None:
    result = _accord(role_db, tmp_path, "permit", "--subject", subject, "--purpose", "research")
    assert result.returncode == 0, result.stderr
    assert [r.subject_key for r in consent.history(role_db.app, [subject])[subject]] == [subject]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--subject", "nhs:123", "--purpose", "research"], "--subject: an NHS number is 10 digits"),
        (["--subject", "9434765918", "--purpose", "research"], "--subject: not a valid NHS number"),
        (["--subject", "nhs:9434765918", "--purpose", "research"], "Modulus 11"),
        (["--subject", f"NHS:{NUMBER}", "--purpose", "research"], "--subject: the scheme must be lower case"),
        (["--subject", f"nhs:{NUMBER} ", "--purpose", "research"], "--subject: the subject key contains spaces"),
        (["--subject", f" nhs:{NUMBER}", "--purpose", "research"], "contains spaces"),
        (["--subject", "943 476 5919", "--purpose", "research"], "contains spaces"),
        (["--subject", "", "--purpose", "research"], "--subject: the subject key is empty"),
        (["--subject", f"passport:{NUMBER}", "--purpose", "research"], "--subject: unknown subject key scheme"),
        (["--subject", NUMBER, "--recipient", "nobody"], "--recipient: unknown recipient: use a partner id"),
        (["--subject", NUMBER, "--recipient", "nhs"], "--recipient: unknown recipient: that is a recipient class"),
        (["--subject", NUMBER, "--recipient-class", "nobody"], "--recipient-class: unknown recipient class"),
        (["--subject", NUMBER, "--recipient-class", "cps"], "that is a partner, not a class"),
        (["--subject", NUMBER, "--purpose", "marketing"], "--purpose: unknown purpose: use one of"),
        (["--subject", NUMBER, "--purpose", "Research"], "--purpose: unknown purpose"),
        (["--subject", NUMBER], "names a purpose, a recipient or a recipient class"),
        (["--subject", NUMBER, "--recipient", "cps", "--recipient-class", "prosecution"], "not both"),
        # Year 10000 once in UTC: no reader could load it back, and the processor waited on it for ever.
        (
            ["--subject", NUMBER, "--recipient", "cps", "--expires", "9999-12-31T23:00:00-05:00"],
            "--expires: the expiry time must be before 9999-12-31",
        ),
        (
            ["--subject", NUMBER, "--recipient", "cps", "--expires", "2020-01-01T00:00:00Z"],
            "--expires: the expiry time has passed",
        ),
        (
            ["--subject", NUMBER, "--recipient", "cps", "--evidence", "x" * 257],
            "--evidence: at most 256 printable characters",
        ),
        (
            ["--subject", NUMBER, "--recipient", "cps", "--method", "web\x01"],
            "--method: at most 64 printable characters",
        ),
        (["--subject", NUMBER, "--recipient", "cps", "--collected-by", "y" * 129], "--collected-by: at most 128"),
    ],
    ids=[
        "nhs-123",
        "bad-check-digit-bare",
        "bad-check-digit",
        "upper-case-scheme",
        "trailing-space",
        "leading-space",
        "grouped-digits",
        "empty",
        "unknown-scheme",
        "unknown-recipient",
        "class-as-recipient",
        "unknown-class",
        "partner-as-class",
        "unknown-purpose",
        "purpose-case",
        "no-scope",
        "recipient-and-class",
        "expiry-past-year-9999-in-utc",
        "expiry-passed",
        "evidence-too-long",
        "method-control-character",
        "collected-by-too-long",
    ],
)
def test_refused_in_one_line_with_the_reason_and_nothing_recorded(
    role_db: RoleDatabase, tmp_path: Path, args: list[str], expected: str
) -> None:
    result = _accord(role_db, tmp_path, "deny", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("accord consent: ") and expected in lines[0] and "nothing recorded" in lines[0]
    if lines[0].startswith(("accord consent: --recipient:", "accord consent: --recipient-class:")):
        assert "partners.yaml" in lines[0]  # where the known recipients come from
    assert _count(role_db.app) == 0


def test_the_store_itself_refuses_what_would_never_apply(role_db: RoleDatabase) -> None:
    """Not only the CLI: every path into consent.record goes through the same check."""
    for subject, kwargs, field in [
        (f"NHS:{NUMBER}", {"purpose": "research"}, "subject"),
        (f"nhs:{NUMBER}\n", {"purpose": "research"}, "subject"),
        (NUMBER, {"recipient": "nobody"}, "recipient"),
        (NUMBER, {"purpose": "marketing"}, "purpose"),
        (NUMBER, {"recipient_class": "nobody"}, "recipient_class"),
    ]:
        with pytest.raises(consent.InvalidPreference) as info:
            # The cases pass only str preferences (purpose, recipient, recipient_class).
            consent.record(role_db.app, subject, consent.ConsentDecision.DENY, known=KNOWN, **kwargs)  # type: ignore[arg-type]
        assert info.value.field == field
    assert _count(role_db.app) == 0
    rec = consent.record(role_db.app, NUMBER, consent.ConsentDecision.DENY, known=KNOWN, recipient="cps")
    assert rec.subject_key == f"nhs:{NUMBER}"


def test_an_expiry_with_an_offset_is_kept_as_the_same_instant_on_sqlite_too(tmp_path: Path) -> None:
    """SQLite kept 09:00-08:00 as 09:00 UTC, eight hours early: the store now writes UTC."""
    from datetime import timedelta, timezone

    from sqlalchemy import create_engine

    from accord.provision import init_database

    engine = create_engine(f"sqlite:///{tmp_path / 'ledger.db'}")
    init_database(engine)
    pacific = timezone(timedelta(hours=-8))
    expires = datetime(datetime.now(UTC).year + 1, 1, 1, 9, tzinfo=pacific)
    consent.record(engine, NUMBER, consent.ConsentDecision.DENY, known=KNOWN, recipient="cps", expires_at=expires)
    [stored] = consent.history(engine, [f"nhs:{NUMBER}"])[f"nhs:{NUMBER}"]
    assert stored.expires_at is not None
    assert stored.expires_at.replace(tzinfo=stored.expires_at.tzinfo or UTC) == expires
    engine.dispose()


def test_a_mistyped_number_does_not_reach_the_database(tmp_path: Path) -> None:
    """Refused before connecting: the reason comes even when the database is unreachable."""
    env = {
        **os.environ,
        "ACCORD_LEDGER_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        "ACCORD_STATE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "consent", "deny", "--subject", "9434765918", "--purpose", "research"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Modulus 11" in result.stderr and "Traceback" not in result.stderr


def test_a_no_that_statutory_sharing_reaches_is_recorded_and_says_what_it_cannot_stop(
    role_db: RoleDatabase, tmp_path: Path
) -> None:
    cps = _accord(role_db, tmp_path, "deny", "--subject", NUMBER, "--recipient", "cps")
    assert cps.returncode == 0, cps.stderr
    assert "\nnote: All sharing with cps does not rest on your consent" in cps.stdout, cps.stdout
    purpose = _accord(role_db, tmp_path, "deny", "--subject", NUMBER, "--purpose", "crime_prevention_and_prosecution")
    assert "note: All sharing for crime prevention and prosecution does not rest on your consent" in purpose.stdout
    research = _accord(role_db, tmp_path, "deny", "--subject", NUMBER, "--recipient", "salford-research")
    assert research.returncode == 0 and "note:" not in research.stdout, research.stdout
    courts = _accord(role_db, tmp_path, "deny", "--subject", NUMBER, "--recipient-class", "prosecution")
    assert courts.returncode == 0, courts.stderr
    assert "\nnote: All sharing with prosecution recipients (cps) does not rest on your consent" in courts.stdout
    assert _count(role_db.app) == 4
