"""Properties of the pure sharing decision, checked over generated agreements and consent."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.pseudonymise import IDENTIFIERS
from accord.sharing import Context, Outcome, decide
from agreements.model import Agreement, ConsentMode, IdentifierTreatment, Purpose
from consent.model import ConsentDecision, ConsentRecord
from producers.synthetic import build_scenario

SCENARIO = build_scenario(n_events=120, seed=5)
EVENTS = [(e.event_type, e.record) for e in SCENARIO.events]
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RECIPIENTS = ("alpha", "beta", "gamma")
CLASSES = {"alpha": "nhs", "beta": "nhs", "gamma": "courts"}
PROVIDERS = sorted({r["envelope"]["source_agency"] for _, r in EVENTS})


def _leaf_paths(record: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in record.items():
        path = f"{prefix}{key}"
        out |= _leaf_paths(value, f"{path}.") if isinstance(value, dict) else {path}
    return out


def _all_leaf_paths(event_type: str) -> list[str]:
    paths: set[str] = set()
    for t, record in EVENTS:
        if t == event_type:
            paths |= _leaf_paths(record)
    return sorted(paths)


LEAVES = {t: _all_leaf_paths(t) for t in ("custody", "referral", "natal_care")}


@st.composite
def agreements(draw: st.DrawFn, event_type: str) -> Agreement:
    start = draw(st.dates(date(2025, 1, 1), date(2026, 12, 31)))
    return Agreement(
        id=draw(st.sampled_from(["a-one", "a-two", "a-three"])),
        version=draw(st.integers(1, 3)),
        title="generated",
        providers=tuple(draw(st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=3, unique=True))),
        recipients=tuple(draw(st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=3, unique=True))),
        event_types=(event_type,),
        purpose=draw(st.sampled_from(list(Purpose))),
        legal_basis="generated",
        consent_mode=(mode := draw(st.sampled_from(list(ConsentMode)))),
        consent_justification="statutory gateway" if mode is ConsentMode.NOT_REQUIRED else None,
        fields={event_type: tuple(draw(st.lists(st.sampled_from(LEAVES[event_type]), min_size=1, unique=True)))},
        identifier_treatment=draw(st.sampled_from(list(IdentifierTreatment))),
        valid_from=start,
        valid_until=draw(st.none() | st.dates(start, date(2027, 12, 31))),
    )


@st.composite
def consents(draw: st.DrawFn) -> list[ConsentRecord]:
    records = []
    for i in range(draw(st.integers(0, 6))):
        scope = draw(st.sampled_from(["recipient", "class", "none"]))
        records.append(
            ConsentRecord(
                id=i + 1,
                subject_key="s",
                purpose=draw(st.none() | st.sampled_from([p.value for p in Purpose])),
                recipient=draw(st.sampled_from(RECIPIENTS)) if scope == "recipient" else None,
                recipient_class=draw(st.sampled_from(["nhs", "courts"])) if scope == "class" else None,
                decision=draw(st.sampled_from(list(ConsentDecision))),
                recorded_at=NOW - timedelta(days=10 - i),
                expires_at=draw(st.none() | st.just(NOW - timedelta(seconds=1)) | st.just(NOW + timedelta(days=1))),
            )
        )
    # A record scoped by purpose only must still name something; give it the class scope otherwise.
    return [r for r in records if r.purpose or r.recipient or r.recipient_class]


@st.composite
def cases(draw: st.DrawFn):
    event_type, record = draw(st.sampled_from(EVENTS))
    found = draw(st.lists(agreements(event_type), min_size=1, max_size=3))
    return event_type, record, found, draw(consents())


CONTEXT = Context(NOW, CLASSES, b"property-test-key-0123456789abcdef")


@settings(max_examples=300, deadline=None)
@given(cases())
def test_no_field_outside_the_allow_list_is_ever_disclosed(case) -> None:
    event_type, record, found, records = case
    for d in decide(event_type, record, found, records, CONTEXT):
        if d.outcome is Outcome.DISCLOSED:
            allowed = d.agreement.fields[event_type]
            for leaf in _leaf_paths(d.projected):
                # An allowed path names a leaf or a whole sub-record; an absent
                # (null) parent of an allowed path carries nothing.
                inside = any(leaf == a or leaf.startswith(a + ".") for a in allowed)
                null_parent = _get(d.projected, leaf) is None and any(a.startswith(leaf + ".") for a in allowed)
                assert inside or null_parent, leaf
        else:
            assert d.projected is None and d.fields == ()


@settings(max_examples=300, deadline=None)
@given(cases())
def test_explicit_never_shares_without_a_permit_in_force(case) -> None:
    event_type, record, found, records = case
    for d in decide(event_type, record, found, records, CONTEXT):
        if d.agreement.consent_mode is ConsentMode.EXPLICIT and d.outcome is Outcome.DISCLOSED:
            assert any(
                r.decision is ConsentDecision.PERMIT
                and r.in_force(NOW)
                and r.matches(d.agreement.purpose.value, d.recipient, CLASSES[d.recipient])
                for r in records
            )


@settings(max_examples=200, deadline=None)
@given(cases(), st.sampled_from(RECIPIENTS))
def test_a_recipient_denial_beats_a_class_permit(case, recipient: str) -> None:
    event_type, record, found, _ = case
    records = [
        ConsentRecord(2, "s", None, None, ConsentDecision.PERMIT, NOW, recipient_class=CLASSES[recipient]),
        ConsentRecord(1, "s", None, recipient, ConsentDecision.DENY, NOW),
    ]
    for d in decide(event_type, record, found, records, CONTEXT):
        if d.recipient == recipient and d.agreement.consent_mode is not ConsentMode.NOT_REQUIRED:
            assert d.outcome is Outcome.WITHHELD


@settings(max_examples=200, deadline=None)
@given(cases())
def test_agreements_outside_their_dates_never_match(case) -> None:
    event_type, record, found, records = case
    for d in decide(event_type, record, found, records, CONTEXT):
        a = d.agreement
        assert a.valid_from is None or a.valid_from <= NOW.date()
        assert a.valid_until is None or NOW.date() <= a.valid_until


@settings(max_examples=200, deadline=None)
@given(cases())
def test_pseudonymised_disclosures_carry_no_raw_identifier(case) -> None:
    event_type, record, found, records = case
    raw = set()
    for path in IDENTIFIERS[event_type]:
        node = record
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str):
            raw.add(node)
    for d in decide(event_type, record, found, records, CONTEXT):
        if d.outcome is Outcome.DISCLOSED and d.agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED:
            values = {v for p in _leaf_paths(d.projected) for v in [_get(d.projected, p)] if isinstance(v, str)}
            assert raw.isdisjoint(values)


def _get(record: dict, path: str):
    node = record
    for part in path.split("."):
        node = node[part]
    return node
