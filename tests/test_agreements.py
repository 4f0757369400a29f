"""Agreement files: the examples load; bad files are refused with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from accord.settings import PACKAGE_ROOT
from agreements import AgreementError, load_dir, load_file

EXAMPLES = PACKAGE_ROOT / "agreements" / "examples"
GOOD = (EXAMPLES / "natal-care-to-health-visiting.yaml").read_text()


def test_examples_load() -> None:
    ids = {a.id for a in load_dir(EXAMPLES)}
    assert ids == {"custody-to-prosecution", "custody-to-liaison-diversion", "natal-care-to-health-visiting",
                   "natal-care-to-research", "referral-to-mash", "custody-to-youth-offending"}


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
