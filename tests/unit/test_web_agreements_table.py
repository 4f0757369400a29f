"""The dashboard's agreements table says which version of an agreement is the one in force (pure)."""

from __future__ import annotations

from datetime import date

from accord.web.dashboard import agreements_table
from accord.web.names import Directory
from agreements import load_dir
from bus.settings import PACKAGE_ROOT

EXAMPLES = load_dir(PACKAGE_ROOT / "agreements" / "examples")


def test_a_replaced_version_and_one_not_begun_are_not_shown_in_force() -> None:
    v1 = next(a for a in EXAMPLES if a.id == "referral-to-mash")
    v2 = v1.model_copy(update={"version": 2, "valid_from": date(2026, 7, 1)})
    table = agreements_table([v1, v2], Directory(), date(2026, 6, 30))
    assert [row[1:3] for row in table.rows] == [(f"{v1.id} v1", "in force"), (f"{v1.id} v2", "from 2026-07-01")]
    table = agreements_table([v1, v2], Directory(), date(2026, 7, 1))
    assert [row[2] for row in table.rows] == ["replaced by v2", "in force"]
