"""Subject keys: every form the processor derives is accepted as is, anything else is refused with a reason."""

from __future__ import annotations

import random

import pytest

from accord.sharing.decide import subject_key
from producers.nhs_number import generate, is_valid
from producers.synthetic import build_scenario
from schemas.subject_keys import InvalidSubjectKey, kind, normalise

GOOD_NHS = "9991408916"  # not the example number the reasons quote
BAD_CHECK = "9991408917"


def test_test_numbers() -> None:
    assert is_valid(GOOD_NHS) and not is_valid(BAD_CHECK)


@pytest.mark.parametrize(
    ("text", "key", "kind_"),
    [
        (GOOD_NHS, f"nhs:{GOOD_NHS}", "nhs"),  # the bare number is the one normalisation
        (f"nhs:{GOOD_NHS}", f"nhs:{GOOD_NHS}", "nhs"),
        ("pnc:26/123456A", "pnc:26/123456A", "pnc"),
        ("pnc:03/1234567Z", "pnc:03/1234567Z", "pnc"),
        ("local:salford-council:LCS123456", "local:salford-council:LCS123456", "local"),
        ("local:oakfield-school:OAK-00001", "local:oakfield-school:OAK-00001", "local"),
    ],
)
def test_well_formed_keys(text: str, key: str, kind_: str) -> None:
    assert normalise(text) == key
    assert kind(text) == kind_
    assert normalise(key) == key  # idempotent


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("nhs:123", "10 digits"),
        ("123", "10 digits"),
        (BAD_CHECK, "Modulus 11"),
        (f"nhs:{BAD_CHECK}", "Modulus 11"),
        (f"NHS:{GOOD_NHS}", "lower case"),
        ("Pnc:26/123456A", "lower case"),
        (f" nhs:{GOOD_NHS}", "contains spaces"),
        (f"nhs:{GOOD_NHS} ", "contains spaces"),
        ("nhs: 9991408916", "contains spaces"),
        ("999 140 8916", "contains spaces"),
        (f"nhs:{GOOD_NHS}\t", "contains spaces"),
        ("nhs:９９９１４０８９１６", "10 digits"),  # full-width digits are not ASCII digits
        ("passport:123456789", "unknown subject key scheme"),
        ("nhs", "no scheme"),
        ("pnc:26/123456a", "PNC id"),
        ("pnc:26/123456I", "PNC id"),  # I, O and S are never check letters
        ("pnc:2026/123456A", "PNC id"),
        ("pnc:26123456A", "PNC id"),
        ("local:salford-council", "local:<agency>:<id>"),
        ("local:Salford:LCS1", "local:<agency>:<id>"),
        ("local:salford-council:", "local:<agency>:<id>"),
        ("local:x:" + "9" * 130, "longer than 128"),
    ],
)
def test_malformed_keys_are_refused_with_a_reason(text: str, reason: str) -> None:
    with pytest.raises(InvalidSubjectKey) as info:
        normalise(text)
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)
    # The reason never repeats the identifier (it may reach a log or a response body).
    assert GOOD_NHS not in info.value.reason and BAD_CHECK not in info.value.reason
    with pytest.raises(InvalidSubjectKey):
        kind(text)


def test_non_string_is_refused() -> None:
    with pytest.raises(InvalidSubjectKey):
        normalise(None)  # type: ignore[arg-type]


def test_every_key_the_processor_derives_from_synthetic_data_is_accepted_unchanged() -> None:
    scenario = build_scenario(n_events=400, seed=11)
    keys = {subject_key(e.event_type, e.record) for e in scenario.events}
    kinds = {kind(k) for k in keys}
    assert kinds == {"nhs", "pnc", "local"}  # the scenario exercises every kind
    for key in keys:
        assert normalise(key) == key


def test_generated_nhs_numbers_normalise() -> None:
    rng = random.Random(5)
    for _ in range(200):
        number = generate(rng)
        assert normalise(number) == f"nhs:{number}"
