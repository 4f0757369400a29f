"""accord.sharing.decide._uuid5, cut from the hex digest, is str(uuid.uuid5(...)) character for character."""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.sharing.decide import _DISCLOSURE_NS, DISCLOSURE_NAMESPACE, _uuid5, disclosure_id

RNG = random.Random(1202)
# Code points but the surrogates (which no str encodes to UTF-8)
ALPHABET = [chr(c) for c in (*range(0x20, 0x7F), *range(0xA0, 0x800), 0x1F600, 0x10FFFF)]


def test_random_names_give_uuid5s_string() -> None:
    names = ["".join(RNG.choices(ALPHABET, k=RNG.randrange(0, 120))) for _ in range(20_000)]
    got = [_uuid5(_DISCLOSURE_NS + n.encode()) for n in names]
    assert got == [str(uuid.uuid5(DISCLOSURE_NAMESPACE, n)) for n in names]
    assert {g[19] for g in got} == set("89ab")  # every variant digit was met
    assert {g[14] for g in got} == {"5"}


@settings(max_examples=500, deadline=None)
@given(st.text(), st.text(), st.text(), st.integers(-(2**63), 2**63))
def test_disclosure_ids_are_uuid5_of_their_name(event_id: str, recipient: str, agreement_id: str, v: int) -> None:
    name = f"{event_id}|{recipient}|{agreement_id}|{v}"
    try:
        expected = str(uuid.uuid5(DISCLOSURE_NAMESPACE, name))
    except UnicodeEncodeError:  # a lone surrogate: the disclosure id refuses it too
        with pytest.raises(UnicodeEncodeError):
            disclosure_id(event_id, recipient, agreement_id, v)
        return
    assert disclosure_id(event_id, recipient, agreement_id, v) == expected
