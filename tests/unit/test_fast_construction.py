"""EntryDraft and Decision as their fast builders make them are the ones their constructors make.

ledger.entry._new_draft (behind EntryDraft.of_decision, not_covered and the read path)
and accord.sharing.decide._new_decision (behind Sharing.decide) fill a new instance's
__dict__ instead of calling the frozen dataclass's __init__. Checked here over random
inputs: the same type, the same values (the same objects), in the same order, equal,
hashed and shown alike, and still frozen.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.sharing.decide import (
    Context,
    Decision,
    Outcome,
    Sharing,
    _new_decision,
    disclosure_id,
    subject_key,
)
from agreements import load_dir
from bus.settings import PACKAGE_ROOT
from consent.model import ConsentDecision, ConsentRecord, version
from ledger.entry import NOT_COVERED, EntryDraft, _new_draft
from producers.synthetic import build_scenario

AGREEMENTS = load_dir(PACKAGE_ROOT / "agreements" / "examples")
DRAFT_FIELDS = tuple(f.name for f in dataclasses.fields(EntryDraft))
DECISION_FIELDS = tuple(f.name for f in dataclasses.fields(Decision))

texts = st.text(max_size=12)
versions = st.integers(-(2**40), 2**40)
string_tuples = st.lists(texts, max_size=4).map(tuple)
aware = st.datetimes(
    datetime(1990, 1, 1), datetime(2100, 1, 1), timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))])
)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    """A Decision through its constructor, every field drawn."""
    return Decision(
        disclosure_id=draw(texts),
        event_id=draw(texts),
        event_type=draw(texts),
        provider=draw(texts),
        recipient=draw(texts),
        agreement=draw(st.sampled_from(AGREEMENTS)),
        outcome=draw(st.sampled_from(list(Outcome))),
        reason=draw(st.none() | texts),
        fields=draw(string_tuples),
        consent_version=draw(versions),
        subject_key=draw(texts),
        projected=draw(st.none() | st.dictionaries(texts, texts, max_size=3)),
    )


def draft_arguments() -> st.SearchStrategy[dict[str, Any]]:
    """Keyword arguments for EntryDraft, the defaulted ones sometimes left out."""
    required = {
        "disclosure_id": texts,
        "event_id": texts,
        "event_type": texts,
        "provider": texts,
        "recipient": texts,
        "agreement_id": texts,
        "agreement_version": versions,
        "purpose": texts,
        "legal_basis": texts,
        "outcome": texts,
        "reason": st.none() | texts,
        "fields": string_tuples,
        "consent_mode": texts,
        "consent_version": versions,
        "subject_key": texts,
        "decided_at": aware,
    }
    optional = {"refers_to": st.none() | texts, "event_digest": texts, "subjects": string_tuples}
    return st.fixed_dictionaries(required, optional=optional)


def assert_same(fast: Any, slow: Any, names: tuple[str, ...]) -> None:
    """fast is what slow's constructor made, down to which objects its fields hold."""
    assert type(fast) is type(slow)
    assert list(vars(fast)) == list(vars(slow)) == list(names)
    for name in names:
        assert getattr(fast, name) is getattr(slow, name) or (
            type(getattr(fast, name)) is str and getattr(fast, name) == getattr(slow, name)
        ), name
    assert fast == slow and slow == fast
    assert repr(fast) == repr(slow)
    assert dataclasses.astuple(fast) == dataclasses.astuple(slow)
    try:
        expected_hash = hash(slow)
    except TypeError:  # a Decision: its Agreement holds a dict
        with pytest.raises(TypeError):
            hash(fast)
    else:
        assert hash(fast) == expected_hash
    assert_frozen(fast, names)


def assert_frozen(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        before = getattr(obj, name)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, "changed")
        with pytest.raises(dataclasses.FrozenInstanceError):
            delattr(obj, name)
        assert getattr(obj, name) is before
    with pytest.raises(dataclasses.FrozenInstanceError):
        obj.not_a_field = 1


def draft_by_keywords(d: Decision, decided_at: datetime, event_digest: str, subjects: tuple[str, ...]) -> EntryDraft:
    """EntryDraft.of_decision as it was written before its fast path: every field by keyword."""
    a = d.agreement
    return EntryDraft(
        disclosure_id=d.disclosure_id,
        event_id=d.event_id,
        event_type=d.event_type,
        provider=d.provider,
        recipient=d.recipient,
        agreement_id=a.id,
        agreement_version=a.version,
        purpose=a.purpose.value,
        legal_basis=a.legal_basis,
        outcome=d.outcome.value,
        reason=d.reason,
        fields=d.fields,
        consent_mode=a.consent_mode.value,
        consent_version=d.consent_version,
        subject_key=d.subject_key,
        decided_at=decided_at,
        event_digest=event_digest,
        subjects=subjects,
    )


@settings(max_examples=300, deadline=None)
@given(decisions(), aware, texts, string_tuples)
def test_of_decision_is_the_draft_the_constructor_makes(
    d: Decision, decided_at: datetime, digest: str, subjects: tuple[str, ...]
) -> None:
    assert_same(
        EntryDraft.of_decision(d, decided_at, digest, subjects),
        draft_by_keywords(d, decided_at, digest, subjects),
        DRAFT_FIELDS,
    )
    assert_same(d.entry(decided_at), draft_by_keywords(d, decided_at, "", ()), DRAFT_FIELDS)


@settings(max_examples=300, deadline=None)
@given(texts, texts, texts, texts, texts, versions, aware, texts, string_tuples)
def test_not_covered_is_the_draft_the_constructor_makes(
    id_: str,
    event_id: str,
    event_type: str,
    provider: str,
    key: str,
    consent_version: int,
    decided_at: datetime,
    digest: str,
    subjects: tuple[str, ...],
) -> None:
    expected = EntryDraft(
        disclosure_id=id_,
        event_id=event_id,
        event_type=event_type,
        provider=provider,
        recipient="",
        agreement_id="",
        agreement_version=0,
        purpose="",
        legal_basis="",
        outcome=NOT_COVERED,
        reason=f"no agreement in force covers this {event_type} event from {provider}",
        fields=(),
        consent_mode="",
        consent_version=consent_version,
        subject_key=key,
        decided_at=decided_at,
        event_digest=digest,
        subjects=subjects,
    )
    made = EntryDraft.not_covered(
        id_, event_id, event_type, provider, key, consent_version, decided_at, digest, subjects
    )
    assert_same(made, expected, DRAFT_FIELDS)


@settings(max_examples=300, deadline=None)
@given(draft_arguments(), st.booleans())
def test_new_draft_is_entry_draft_by_keyword_or_position(kwargs: dict[str, Any], positional: bool) -> None:
    args = [kwargs[n] for n in DRAFT_FIELDS if n in kwargs]
    if positional and all(n in kwargs for n in DRAFT_FIELDS[: len(args)]):  # the given ones are a prefix
        assert_same(_new_draft(*args), EntryDraft(*args), DRAFT_FIELDS)
    assert_same(_new_draft(**kwargs), EntryDraft(**kwargs), DRAFT_FIELDS)


@settings(max_examples=300, deadline=None)
@given(decisions())
def test_new_decision_is_the_decision_the_constructor_makes(d: Decision) -> None:
    args = [getattr(d, n) for n in DECISION_FIELDS]
    assert_same(_new_decision(*args), Decision(*args), DECISION_FIELDS)
    assert_same(_new_decision(*args), d, DECISION_FIELDS)


def test_a_fast_draft_copies_pickles_and_replaces_as_a_constructed_one() -> None:
    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    fast = EntryDraft.not_covered("d-1", "e-1", "custody", "gmp", "nhs:9434765919", 2, at, "ab" * 32, ("nhs:1",))
    assert copy.copy(fast) == copy.deepcopy(fast) == pickle.loads(pickle.dumps(fast)) == fast
    changed = dataclasses.replace(fast, reason="other")
    assert changed.reason == "other" and changed.disclosure_id == "d-1" and fast.reason != "other"
    assert_frozen(pickle.loads(pickle.dumps(fast)), DRAFT_FIELDS)


def test_a_subclass_keeps_its_own_constructor() -> None:
    @dataclasses.dataclass(frozen=True)
    class Noted(EntryDraft):
        note: str = "kept"

    at = datetime(2026, 6, 1, 12, tzinfo=UTC)
    made = Noted.not_covered("d-1", "e-1", "custody", "gmp", "nhs:9434765919", 2, at)
    assert type(made) is Noted and made.note == "kept" and made.outcome == NOT_COVERED


def test_sharing_decide_builds_each_decision_from_its_event() -> None:
    """Sharing.decide's positional call: every field the one the event, agreement and consent give."""
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    context = Context(now, {}, b"test-pseudonym-key-0123456789abc")
    sharing = Sharing.of(AGREEMENTS)
    seen = 0
    for i, e in enumerate(build_scenario(n_events=150, seed=11).events):
        key = subject_key(e.event_type, e.record)
        consents = [ConsentRecord(1, key, None, None, ConsentDecision.PERMIT, now - timedelta(days=1))] if i % 2 else []
        for d in sharing.decide(e.event_type, e.record, consents, context, key=key):
            seen += 1
            assert type(d) is Decision
            envelope = e.record["envelope"]
            assert (d.event_id, d.event_type, d.provider, d.subject_key) == (
                envelope["event_id"],
                e.event_type,
                envelope["source_agency"],
                key,
            )
            assert d.disclosure_id == disclosure_id(d.event_id, d.recipient, d.agreement.id, d.agreement.version)
            assert d.recipient in d.agreement.recipients and d.agreement in AGREEMENTS
            assert d.consent_version == version(consents)
            assert isinstance(d.outcome, Outcome)
            if d.outcome is Outcome.DISCLOSED:
                assert d.fields == tuple(d.agreement.fields[e.event_type]) and isinstance(d.projected, dict)
            else:
                assert d.fields == () and d.projected is None and d.reason
            rebuilt = Decision(**{n: getattr(d, n) for n in DECISION_FIELDS})
            assert_same(d, rebuilt, DECISION_FIELDS)
    assert seen > 100
