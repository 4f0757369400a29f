"""Agreement files: the examples load; bad files are refused with file, line and field."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from agreements import AgreementError, Status, load_dir, load_file, validate_dir
from bus.settings import PACKAGE_ROOT

EXAMPLES = PACKAGE_ROOT / "agreements" / "examples"
GOOD = (EXAMPLES / "natal-care-to-health-visiting.yaml").read_text()


def test_examples_load() -> None:
    ids = {a.id for a in load_dir(EXAMPLES)}
    assert ids == {
        "custody-to-prosecution",
        "custody-to-liaison-diversion",
        "natal-care-to-health-visiting",
        "natal-care-to-research",
        "referral-to-mash",
        "custody-to-youth-offending",
    }


def _refusal(tmp_path: Path, text: str) -> AgreementError:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AgreementError) as info:
        load_file(path)
    assert info.value.path == path
    return info.value


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_unknown_key_is_refused_with_its_line(tmp_path: Path) -> None:
    text = GOOD.replace("consent_mode: opt_out", "consent_mode: opt_out\nshare_everything: true")
    err = _refusal(tmp_path, text)
    assert (err.field, err.line) == ("share_everything", _line_of(text, "share_everything"))


def test_unknown_purpose_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("purpose: individual_care", "purpose: marketing")
    err = _refusal(tmp_path, text)
    assert (err.field, err.line) == ("purpose", _line_of(text, "purpose: marketing"))


def test_field_missing_from_the_schema_is_refused(tmp_path: Path) -> None:
    text = GOOD.replace("    - gestation_weeks", "    - gestation_days")
    err = _refusal(tmp_path, text)
    assert err.line == _line_of(text, "gestation_days")
    assert err.field.startswith("fields.natal_care[") and "gestation_days" in err.problem


def test_not_required_needs_a_justification(tmp_path: Path) -> None:
    text = GOOD.replace("consent_mode: opt_out", "consent_mode: not_required")
    err = _refusal(tmp_path, text)
    assert "consent_justification" in err.problem
    assert str(err).startswith(f"{tmp_path / 'bad.yaml'}:")


def test_duplicate_id_and_version_in_a_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(AgreementError, match="also defined in"):
        load_dir(tmp_path)


YOUTH = (EXAMPLES / "custody-to-youth-offending.yaml").read_text()


def test_an_expired_agreement_loads_and_is_noted_not_refused(tmp_path: Path) -> None:
    """Its planned end must not stop every processor at its next restart: it loads, no longer
    applies (in_force), and is noted until its status says revoked."""
    from agreements import lapsed

    text = GOOD.replace("valid_from: 2026-01-01", "valid_from: 2026-01-01\nvalid_until: 2026-03-31")
    path = tmp_path / "old.yaml"
    path.write_text(text)
    expired = load_file(path)
    assert not expired.in_force(date(2026, 6, 1)) and expired.in_force(date(2026, 3, 31))  # the last day counts
    [note] = lapsed([expired], today=date(2026, 6, 1))
    assert note.startswith(f"{expired.key} expired on 2026-03-31 (today is 2026-06-01) and no longer applies")
    assert lapsed([expired], today=date(2026, 3, 31)) == []
    path.write_text(text.replace("status: active", "status: revoked"))
    assert lapsed([load_file(path)], today=date(2026, 6, 1)) == []


def test_a_newer_version_decides_from_its_valid_from_and_the_older_until_then(tmp_path: Path) -> None:
    """An open-ended v1 and a v2 from 2026-07-01 load together (no published file is edited to end v1):
    v1 decides until 2026-06-30, v2 from 2026-07-01. Before, the folder was refused ("overlap"), and a
    v2 published ahead of its day left nothing deciding under the id until then."""
    from agreements.model import deciding, superseded_by

    (tmp_path / "v1.yaml").write_text(GOOD)
    v2_text = GOOD.replace("version: 1", "version: 2").replace("valid_from: 2026-01-01", "valid_from: 2026-07-01")
    (tmp_path / "v2.yaml").write_text(v2_text)
    v1, v2 = sorted(load_dir(tmp_path), key=lambda a: a.version)
    assert deciding([v1, v2], date(2026, 6, 30)) == [v1]
    assert deciding([v2, v1], date(2026, 7, 1)) == [v2]
    assert deciding([v2], date(2026, 6, 30)) == []  # none has begun
    assert superseded_by(v1, [v1, v2], date(2026, 7, 1)) == v2 and superseded_by(v2, [v1, v2], date(2026, 7, 1)) is None
    # A suspending version with no valid_from decides at once, and shares nothing.
    v3 = v2.model_copy(update={"version": 3, "status": Status.SUSPENDED, "valid_from": None})
    assert deciding([v1, v2, v3], date(2026, 6, 30)) == [v3]


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        (
            "{field: subject.shoe_size, op: age_under, value: 18}",
            "conditions[0].field",
            "not a field of the custody schema",
        ),
        ("{field: subject.family_name, op: age_under, value: 18}", "conditions[0].op", "needs a date field"),
        ("{field: event_kind, op: eq, value: PARDON}", "conditions[0].value", "not one of the field's symbols"),
        ("{field: subject.date_of_birth, op: age_under, value: old}", "conditions[0]", "whole number of years"),
        ("{field: subject.date_of_birth, op: run_code, value: 18}", "conditions[0].op", "Input should be"),
    ],
)
def test_bad_conditions_are_refused_with_line_and_field(tmp_path: Path, change: str, field: str, needle: str) -> None:
    text = YOUTH.replace("{field: subject.date_of_birth, op: age_under, value: 18}", change)
    err = _refusal(tmp_path, text)
    assert err.field == field and needle in err.problem, str(err)
    assert err.line == _line_of(text, change.split(",")[0])


def test_special_category_basis_needs_its_schedule_1_condition(tmp_path: Path) -> None:
    text = GOOD.replace("  dpa_2018_schedule_1: Sch 1 Pt 1 para 2\n", "")
    err = _refusal(tmp_path, text)
    assert err.field == "lawful_basis" and "Sch 1 Pt 1" in err.problem


def test_party_must_be_a_provider_or_recipient(tmp_path: Path) -> None:
    text = GOOD.replace("id: salford-health-visiting}", "id: some-other-council}")
    err = _refusal(tmp_path, text)
    assert err.field == "parties" and "some-other-council" in err.problem


def test_validate_dir_reports_every_problem_in_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD.replace("purpose: individual_care", "purpose: marketing"))
    (tmp_path / "b.yaml").write_text(
        YOUTH.replace("    - outcome\n", "    - outcome\n    - subject.shoe_size\n").replace("title:", "titel:")
    )
    problems = validate_dir(tmp_path)
    found = {(p.path.name, p.field) for p in problems}
    assert ("a.yaml", "purpose") in found
    assert ("b.yaml", "titel") in found and ("b.yaml", "title") in found
    assert any(p.path.name == "b.yaml" and "shoe_size" in p.problem for p in problems)
    assert validate_dir(EXAMPLES) == []


def test_an_impossible_date_is_a_problem_at_its_line_with_the_others(tmp_path: Path) -> None:
    """PyYAML raises a bare ValueError for 2026-02-30; the loader reports it like any other problem."""
    bad_dates = GOOD.replace("valid_from: 2026-01-01", "valid_from: 2026-02-30").replace(
        "review_date: 2027-03-31", "review_date: 2027-13-01\nshare_everything: true"
    )
    (tmp_path / "a.yaml").write_text(bad_dates)
    (tmp_path / "b.yaml").write_text(
        GOOD.replace("id: natal-care-to-health-visiting", "id: other").replace(
            "purpose: individual_care", "purpose: marketing"
        )
    )
    (tmp_path / "c.yaml").write_text(
        (EXAMPLES / "referral-to-mash.yaml").read_text().replace("until: 2027-03-31", "until: 2027-04-31")
    )
    problems = validate_dir(tmp_path)
    by_field = {(p.path.name, p.field): p for p in problems}
    valid_from = by_field[("a.yaml", "valid_from")]
    assert valid_from.line == _line_of(bad_dates, "valid_from")
    assert valid_from.problem == (
        "'2026-02-30' is not a date (day value is outside expected range); write a calendar date as YYYY-MM-DD"
    )
    assert by_field[("a.yaml", "review_date")].line == _line_of(bad_dates, "review_date")
    assert "'2027-13-01' is not a date (month value" in by_field[("a.yaml", "review_date")].problem
    assert ("a.yaml", "share_everything") in by_field  # the rest of the file is still checked
    assert ("b.yaml", "purpose") in by_field  # and the other files
    until = by_field[("c.yaml", "transparency.until")]
    assert "'2027-04-31' is not a date" in until.problem and until.line == _line_of(
        (tmp_path / "c.yaml").read_text(), "until: 2027-04-31"
    )
    assert len(problems) == 5


def test_load_dir_refuses_with_every_problem(tmp_path: Path) -> None:
    from agreements.loader import AgreementsRefused

    (tmp_path / "a.yaml").write_text(GOOD.replace("valid_from: 2026-01-01", "valid_from: 2026-02-30"))
    (tmp_path / "b.yaml").write_text(
        GOOD.replace("id: natal-care-to-health-visiting", "id: other").replace(
            "purpose: individual_care", "purpose: marketing"
        )
    )
    with pytest.raises(AgreementsRefused) as info:
        load_dir(tmp_path)
    assert [(p.path.name, p.field) for p in info.value.problems] == [("a.yaml", "valid_from"), ("b.yaml", "purpose")]
    assert str(info.value) == str(info.value.problems[0])  # reads as the first, as before
    assert info.value.directory == tmp_path


def test_a_valid_date_still_loads_as_a_date() -> None:
    agreement = load_file(EXAMPLES / "referral-to-mash.yaml")
    assert agreement.valid_from == date(2026, 1, 1) and agreement.transparency.until == date(2027, 3, 31)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"cps: [prosecution\nfoo: bar\n",
            "2: (yaml): expected ',' or ']', but got ':' (while parsing a flow sequence that began on line 1)",
        ),
        (b"\xd0\x00\xff", "1: (file): not UTF-8 text (byte 0xd0 at offset 0)"),
        (b"- cps\n", "1: (document): the partner registry must map partner id to class"),
    ],
)
def test_a_broken_partner_registry_is_one_line_naming_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    from agreements.partners import load_partners

    path = tmp_path / "partners.yaml"
    path.write_bytes(content)
    with pytest.raises(AgreementError) as refused:
        load_partners(path)
    assert str(refused.value) == f"{path}:{message}"


def test_a_yaml_syntax_error_in_an_agreement_says_what_and_where(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("id: x\nrecipients: [cps\nversion: 1\n", encoding="utf-8")
    [problem] = validate_dir(tmp_path)
    assert str(problem) == (
        f"{tmp_path / 'a.yaml'}:3: (yaml): expected ',' or ']', but got ':' (while parsing a flow sequence that "
        "began on line 2)"
    )


def test_a_key_given_twice_is_refused_at_its_second_line(tmp_path: Path) -> None:
    """YAML keeps the last value without a word: a second fields block would share more."""
    text = GOOD + "fields:\n  natal_care:\n    - mother.address\n"
    (tmp_path / "twice.yaml").write_text(text)
    [problem] = validate_dir(tmp_path)
    second = len(GOOD.splitlines()) + 1
    assert (problem.line, problem.field) == (second, "fields")
    assert problem.problem == f"given twice (first on line {_line_of(GOOD, 'fields:')}): keep one"
    with pytest.raises(AgreementError):
        load_dir(tmp_path)


def test_a_partner_given_twice_in_the_registry_is_refused(tmp_path: Path) -> None:
    from agreements.partners import load_partners

    registry = tmp_path / "partners.yaml"
    registry.write_text("cps: prosecution\nliaison-diversion: nhs\nliaison-diversion: local_authority\n")
    with pytest.raises(AgreementError, match=r"partners.yaml:3: liaison-diversion: given twice \(first on line 2\)"):
        load_partners(registry)


def test_a_yml_file_is_named_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD)
    (tmp_path / "suspension.yml").write_text(GOOD.replace("status: active", "status: suspended"))
    [problem] = validate_dir(tmp_path)
    assert problem.path == tmp_path / "suspension.yml" and "*.yaml files only" in problem.problem


def test_a_version_number_the_ledger_cannot_hold_is_refused_at_its_line(tmp_path: Path) -> None:
    """A version over 2^31 - 1 loaded and published, then every event it applied to was dead-lettered."""
    path = tmp_path / "big.yaml"
    path.write_text(GOOD.replace("version: 1", "version: 202612070001"))
    [problem] = validate_dir(tmp_path)
    assert problem.field == "version" and "2147483647" in str(problem), problem
