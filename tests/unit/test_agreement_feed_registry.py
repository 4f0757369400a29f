"""A version published on the agreements feed naming a recipient the partner registry lacks is refused.

The processor reads its registry at start; a version naming a partner outside it would be
decided without that partner's recipient class, so a citizen's consent choice for the class
could not apply. Refused like any bad publication: the versions already in force stay.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from accord.processor.agreement_feed import AgreementSet
from agreements import load_dir
from agreements.partners import load_partners
from agreements.recipient_schemas import recipient_catalogue

ROOT = Path(__file__).resolve().parents[2]
PARTNERS = ROOT / "agreements" / "partners.yaml"


def _set(partners: dict[str, str] | None) -> tuple[AgreementSet, list]:
    agreements = load_dir(ROOT / "agreements" / "examples")
    return AgreementSet(
        agreements, recipient_catalogue(agreements), partners=partners, partners_file=PARTNERS
    ), agreements


def test_a_new_version_with_an_unregistered_recipient_is_refused_and_the_old_stays() -> None:
    agreements_set, agreements = _set(load_partners(PARTNERS))
    [v1] = [a for a in agreements if a.id == "custody-to-prosecution"]
    v2 = v1.model_copy(update={"version": 2, "recipients": [*v1.recipients, "manchester-courts"]})
    with pytest.raises(ValueError, match="'manchester-courts' is not in the partner registry"):
        agreements_set.apply(v2.model_dump_json().encode())
    assert [a.key for a in agreements_set.current(date.today()) if a.id == v1.id] == [v1.key]

    registered = v1.model_copy(update={"version": 3})
    assert agreements_set.apply(registered.model_dump_json().encode()).key == registered.key


def test_without_a_registry_nothing_is_checked() -> None:
    agreements_set, agreements = _set(None)
    [v1] = [a for a in agreements if a.id == "custody-to-prosecution"]
    v2 = v1.model_copy(update={"version": 2, "recipients": [*v1.recipients, "manchester-courts"]})
    assert agreements_set.apply(v2.model_dump_json().encode()).key == v2.key


def test_a_version_on_the_feed_under_another_key_is_refused() -> None:
    """A compacted feed keeps a key's last record: a version filed under another key would outlive
    or replace a record it has nothing to do with."""
    agreements_set, agreements = _set(load_partners(PARTNERS))
    [v1] = [a for a in agreements if a.id == "custody-to-prosecution"]
    v2 = v1.model_copy(update={"version": 2})
    with pytest.raises(ValueError, match="published under the key b'something-else@v1', not its own"):
        agreements_set.apply(v2.model_dump_json().encode(), b"something-else@v1")
    with pytest.raises(ValueError, match="published under the key b'', not its own"):  # a record with no key
        agreements_set.apply(v2.model_dump_json().encode(), b"")
    assert agreements_set.apply(v2.model_dump_json().encode(), v2.key.encode()).key == v2.key
    assert agreements_set.apply(v1.model_dump_json().encode(), v1.key.encode()) == v1  # the folder's, confirmed
