"""Properties of the pure sharing decision, checked over generated agreements and consent."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from accord.sharing.decide import Context, Outcome, decide
from accord.sharing.pseudonymise import IDENTIFIERS
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
            assert d.projected is not None
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
            assert d.projected is not None
            values = {v for p in _leaf_paths(d.projected) for v in [_get(d.projected, p)] if isinstance(v, str)}
            assert raw.isdisjoint(values)


def _get(record: dict, path: str):
    node = record
    for part in path.split("."):
        node = node[part]
    return node


# --------------------------------------------------------------------------- the compiled decision against the old one
#
# decide() now runs on agreements compiled once (accord.sharing.Sharing), hashlib ids,
# cached allow lists and copy-on-path pseudonyms. The oracle below is the decision as it
# was before (uuid.uuid5, allow-list trees built per event, copy.deepcopy), kept here:
# on the synthetic scenario, for generated agreements (several event types, statuses,
# conditions, duplicates) and consent, every decision must be the same, projections
# with their key order and value types, and their encodings fastavro's bytes.

import copy  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import io  # noqa: E402
import uuid  # noqa: E402

import fastavro  # noqa: E402

from accord.sharing.decide import Sharing, disclosure_id, projection_for, subject_key  # noqa: E402
from agreements.conditions import Condition, Op  # noqa: E402
from agreements.model import Status  # noqa: E402
from agreements.recipient_schemas import projection_name, recipient_catalogue  # noqa: E402
from consent.model import applicable, version  # noqa: E402
from schemas.serde import Catalogue  # noqa: E402

ORACLE_NAMESPACE = uuid.UUID("7d1f3c9e-2b4a-5e6f-8a9b-0c1d2e3f4a5b")


def oracle_disclosure_id(event_id: str, recipient: str, agreement_id: str, agreement_version: int) -> str:
    return str(uuid.uuid5(ORACLE_NAMESPACE, f"{event_id}|{recipient}|{agreement_id}|{agreement_version}"))


def oracle_tree(paths: list[str]) -> dict:
    root: dict = {}
    for path in paths:
        parts = path.split(".")
        node = root
        for i, part in enumerate(parts):
            if part in node and node[part] is None:
                break
            if i == len(parts) - 1:
                node[part] = None
            else:
                node = node.setdefault(part, {})
    return root


def oracle_copy(value):
    if isinstance(value, dict):
        return {k: oracle_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [oracle_copy(v) for v in value]
    return value


def oracle_project(record, tree, path=""):
    out = {}
    for key, value in record.items():
        if key not in tree:
            continue
        sub = tree[key]
        if sub is None:
            out[key] = oracle_copy(value)
        elif value is None:
            out[key] = None
        elif isinstance(value, dict):
            out[key] = oracle_project(value, sub, f"{path}{key}.")
        else:
            raise ValueError(f"{path}{key}: expected a record or null to project, got {type(value).__name__}")
    return out


def oracle_token(secret: bytes, recipient: str, value: str) -> str:
    key = hmac.new(secret, b"accord-pseudonym|" + recipient.encode(), hashlib.sha256).digest()
    return "psn:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def oracle_pseudonymise(event_type, projected, secret, recipient):
    if not secret:
        raise ValueError("pseudonymisation needs a secret (ACCORD_PSEUDONYM_KEY)")
    out = copy.deepcopy(projected)
    for path in IDENTIFIERS[event_type]:
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str):
            node[leaf] = oracle_token(secret, recipient, node[leaf])
    return out


def oracle_consent_outcome(agreement, recipient, records, context):
    mode = agreement.consent_mode
    if mode is ConsentMode.NOT_REQUIRED:
        return Outcome.DISCLOSED, f"consent overridden: {agreement.gateway}"
    governing = applicable(
        records, agreement.purpose.value, recipient, context.partner_classes.get(recipient), context.now
    )
    if governing is not None and governing.decision is ConsentDecision.DENY:
        return Outcome.WITHHELD, f"consent denied (consent record {governing.id})"
    if mode is ConsentMode.EXPLICIT and governing is None:
        return Outcome.WITHHELD, "explicit consent required and none recorded"
    return Outcome.DISCLOSED, None


def oracle_decide(event_type, record, agreements, consents, context) -> list[tuple]:
    """The old decide, each decision as a tuple of every field (the agreement by identity)."""
    provider = record["envelope"]["source_agency"]
    event_id = record["envelope"]["event_id"]
    key = subject_key(event_type, record)
    consent_version = version(consents)
    out = []
    for agreement in [a for a in agreements if a.exclusion(provider, event_type, context.today, record) is None]:
        fields = agreement.fields[event_type]
        projection = None
        for recipient in agreement.recipients:
            outcome, reason = oracle_consent_outcome(agreement, recipient, consents, context)
            projected = None
            if outcome is Outcome.DISCLOSED:
                if projection is None:
                    projection = oracle_project(record, oracle_tree(list(fields)))
                projected = (
                    oracle_pseudonymise(event_type, projection, context.pseudonym_key, recipient)
                    if agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED
                    else projection
                )
            out.append(
                (
                    oracle_disclosure_id(event_id, recipient, agreement.id, agreement.version),
                    event_id,
                    event_type,
                    provider,
                    recipient,
                    id(agreement),
                    outcome,
                    reason,
                    tuple(fields) if outcome is Outcome.DISCLOSED else (),
                    consent_version,
                    key,
                    exact(projected),
                )
            )
    return out


def exact(value):
    """A value with its types and key order made part of equality."""
    if isinstance(value, dict):
        return ("dict", [(k, exact(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [exact(v) for v in value])
    return (type(value).__name__, value)


def as_tuples(decisions) -> list[tuple]:
    return [
        (
            d.disclosure_id,
            d.event_id,
            d.event_type,
            d.provider,
            d.recipient,
            id(d.agreement),
            d.outcome,
            d.reason,
            d.fields,
            d.consent_version,
            d.subject_key,
            exact(d.projected),
        )
        for d in decisions
    ]


EVENT_TYPES = ("custody", "referral", "natal_care")
WHOLES = {t: sorted({p.rsplit(".", 1)[0] for p in LEAVES[t] if "." in p}) for t in EVENT_TYPES}
SYMBOLS = {t: sorted({r["event_kind"] for et, r in EVENTS if et == t and "event_kind" in r}) for t in EVENT_TYPES}


@st.composite
def conditions(draw: st.DrawFn, event_types: tuple[str, ...]) -> tuple[Condition, ...]:
    if len(event_types) != 1 or draw(st.booleans()):
        return ()
    [event_type] = event_types
    options = [
        Condition(field=draw(st.sampled_from(LEAVES[event_type])), op=draw(st.sampled_from([Op.PRESENT, Op.ABSENT]))),
    ]
    if SYMBOLS[event_type]:
        options += [
            Condition(
                field="event_kind",
                op=Op.IN,
                value=tuple(draw(st.lists(st.sampled_from(SYMBOLS[event_type]), min_size=1, unique=True))),
            ),
            Condition(field="event_kind", op=Op.NE, value=draw(st.sampled_from(SYMBOLS[event_type]))),
        ]
    return tuple(draw(st.lists(st.sampled_from(options), max_size=2)))


@st.composite
def rich_agreements(draw: st.DrawFn) -> Agreement:
    event_types = tuple(draw(st.lists(st.sampled_from(EVENT_TYPES), min_size=1, max_size=3, unique=True)))
    start = draw(st.none() | st.dates(date(2025, 1, 1), date(2026, 12, 31)))
    mode = draw(st.sampled_from(list(ConsentMode)))
    return Agreement(
        id=draw(st.sampled_from(["a-one", "a-two", "a-three"])),
        version=draw(st.integers(1, 3)),
        title="generated",
        status=draw(st.sampled_from([Status.ACTIVE, Status.ACTIVE, Status.SUSPENDED, Status.DRAFT])),
        providers=tuple(draw(st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=4, unique=True))),
        recipients=tuple(draw(st.lists(st.sampled_from(RECIPIENTS), min_size=1, max_size=3, unique=True))),
        event_types=event_types,
        purpose=draw(st.sampled_from(list(Purpose))),
        legal_basis="generated",
        consent_mode=mode,
        consent_justification="statutory gateway" if mode is ConsentMode.NOT_REQUIRED else None,
        # leaves, and whole sub-records (kept whole, and a path below them then adds nothing)
        fields={
            t: tuple(draw(st.lists(st.sampled_from(LEAVES[t] + WHOLES[t]), min_size=1, unique=True)))
            for t in event_types
        },
        identifier_treatment=draw(st.sampled_from(list(IdentifierTreatment))),
        valid_from=start,
        valid_until=draw(st.none() | st.dates(start or date(2025, 1, 1), date(2027, 12, 31))),
        conditions=draw(conditions(event_types)),
    )


@st.composite
def rich_cases(draw: st.DrawFn):
    event_type, record = draw(st.sampled_from(EVENTS))
    found = draw(st.lists(rich_agreements(), min_size=1, max_size=4))
    if draw(st.booleans()):
        found.append(draw(st.sampled_from(found)))  # the same agreement twice is decided twice, as before
    return event_type, record, found, draw(consents())


CONTEXTS = [
    CONTEXT,
    Context(NOW, {}, b"another-secret"),
    Context(datetime(2025, 3, 1, tzinfo=UTC), CLASSES, b"k"),
    Context(datetime(2026, 12, 31, 23, 59, tzinfo=UTC), CLASSES, b"k"),
]


@settings(max_examples=300, deadline=None)
@given(rich_cases(), st.lists(st.sampled_from(CONTEXTS), min_size=1, max_size=3))
def test_decide_is_the_old_decision(case, contexts: list[Context]) -> None:
    """Contexts in turn, so one compiled set meets several days (its per-day answer is replaced)."""
    event_type, record, found, records = case
    for context in contexts:
        expected = oracle_decide(event_type, record, found, records, context)
        assert as_tuples(decide(event_type, record, found, records, context)) == expected
        sharing = Sharing.of(found)
        key = subject_key(event_type, record)
        assert as_tuples(sharing.decide(event_type, record, records, context, key=key)) == expected
        assert as_tuples(decide(event_type, record, sharing, records, context)) == expected
        assert sharing.candidates(record["envelope"]["source_agency"], event_type, context.today, record) == [
            a
            for a in found
            if a.exclusion(record["envelope"]["source_agency"], event_type, context.today, record) is None
        ]


def test_decide_over_the_scenario_with_the_example_agreements_is_the_old_decision() -> None:
    from agreements import load_dir
    from bus.settings import PACKAGE_ROOT

    examples = load_dir(PACKAGE_ROOT / "agreements" / "examples")
    scenario = build_scenario(n_events=600, seed=9)
    history = [
        ConsentRecord(1, "s", None, "salford-health-visiting", ConsentDecision.DENY, NOW),
        ConsentRecord(2, "s", None, "liaison-diversion", ConsentDecision.PERMIT, NOW),
    ]
    for i, e in enumerate(scenario.events):
        records = history[: i % 3]
        assert as_tuples(decide(e.event_type, e.record, examples, records, CONTEXT)) == oracle_decide(
            e.event_type, e.record, examples, records, CONTEXT
        )


@settings(max_examples=150, deadline=None)
@given(rich_cases())
def test_projections_encode_to_fastavros_bytes_and_replay_as_before(case) -> None:
    event_type, record, found, records = case
    unique = list({a.key: a for a in found}.values())  # one catalogue cannot hold two contents of one key
    catalogue = recipient_catalogue(unique, base=Catalogue())
    for d in decide(event_type, record, unique, records, CONTEXT):
        if d.projected is None:
            continue
        name = projection_name(d.agreement, event_type)
        payload = catalogue.encode(name, d.projected, validated=True)
        body = io.BytesIO()
        fastavro.schemaless_writer(body, catalogue.schema(name), d.projected)
        assert payload[10:] == body.getvalue()
        assert exact(catalogue.decode(payload)[1]) == exact(
            fastavro.schemaless_reader(io.BytesIO(payload[10:]), catalogue.schema(name))
        )
        assert not _containers(d.projected) & _containers(record)  # never an alias of the source event
        replayed = projection_for(event_type, record, d.agreement, d.fields, d.recipient, CONTEXT)
        assert exact(replayed) == exact(d.projected)
        old = oracle_project(record, oracle_tree(list(d.fields)))
        if d.agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED:
            old = oracle_pseudonymise(event_type, old, CONTEXT.pseudonym_key, d.recipient)
        assert exact(replayed) == exact(old)


def _containers(value) -> set[int]:
    if isinstance(value, dict):
        return {id(value)}.union(*(_containers(v) for v in value.values()))
    if isinstance(value, list):
        return {id(value)}.union(*(_containers(v) for v in value))
    return set()


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(), st.text(), st.integers(0, 10**6))
def test_disclosure_ids_are_uuid5_strings(event_id: str, recipient: str, agreement_id: str, version: int) -> None:
    assert disclosure_id(event_id, recipient, agreement_id, version) == oracle_disclosure_id(
        event_id, recipient, agreement_id, version
    )


IDENTIFIER_VALUES = st.one_of(st.text(max_size=12), st.none(), st.integers(), st.just({"x": "y"}), st.lists(st.text()))
SUBRECORD = st.dictionaries(
    st.sampled_from(["pnc_id", "nhs_number", "local_id", "given_names", "address"]), IDENTIFIER_VALUES, max_size=5
)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(EVENT_TYPES),
    st.dictionaries(
        st.sampled_from(["subject", "mother", "baby", "custody_record_id", "referral_id", "x"]),
        st.one_of(SUBRECORD, IDENTIFIER_VALUES),
        max_size=6,
    ),
    st.sampled_from(RECIPIENTS),
    st.binary(min_size=1, max_size=40),
)
def test_pseudonymise_is_the_old_pseudonymise_and_leaves_its_input_alone(
    event_type, projected, recipient, secret
) -> None:
    from accord.sharing.pseudonymise import pseudonymise

    before = exact(projected)
    got = pseudonymise(event_type, projected, secret, recipient)
    assert exact(got) == exact(oracle_pseudonymise(event_type, projected, secret, recipient))
    assert exact(projected) == before and got is not projected


def test_a_new_version_is_decided_by_its_own_content_and_the_cache_stays_bounded() -> None:
    """Sharing.of is keyed by the agreements' identities: a new version (or another object with the
    same id and version but other content) is compiled afresh, and old sets are let go."""
    from agreements import load_dir
    from bus.settings import PACKAGE_ROOT

    examples = load_dir(PACKAGE_ROOT / "agreements" / "examples")
    event_type, record = next(
        (t, r) for t, r in EVENTS if t == "custody" and r["envelope"]["source_agency"] == "met-police"
    )
    first = decide(event_type, record, examples, [], CONTEXT)
    assert Sharing.of(examples) is Sharing.of(list(examples))
    narrowed = [
        a.model_copy(update={"version": a.version + 1, "fields": {t: f[:1] for t, f in a.fields.items()}})
        for a in examples
    ]
    second = decide(event_type, record, narrowed, [], CONTEXT)
    assert as_tuples(second) == oracle_decide(event_type, record, narrowed, [], CONTEXT) != as_tuples(first)
    same_key = [a.model_copy(update={"recipients": a.recipients[:1]}) for a in examples]  # id@vN unchanged
    assert as_tuples(decide(event_type, record, same_key, [], CONTEXT)) == oracle_decide(
        event_type, record, same_key, [], CONTEXT
    )
    for i in range(3 * Sharing._cache_size):
        decide(
            event_type, record, [a.model_copy(update={"version": a.version + 10 + i}) for a in examples], [], CONTEXT
        )
    assert len(Sharing._cache) <= Sharing._cache_size


def _raised(fn):
    try:
        return ("value", fn())
    except Exception as exc:
        return ("raised", type(exc).__name__)


@settings(max_examples=150, deadline=None)
@given(rich_cases(), st.sampled_from(["\ud800-not-utf8", 12345, None, "plain"]), st.booleans())
def test_odd_event_ids_and_recipients_fail_or_pass_as_before(case, event_id, odd_recipient: bool) -> None:
    """decide is public: an id that cannot be UTF-8 or is not a string fails (or not) exactly as it did."""
    event_type, record, found, records = case
    record = {**record, "envelope": {**record["envelope"], "event_id": event_id}}
    if odd_recipient:
        found = [a.model_copy(update={"recipients": ("\udfff", *a.recipients)}) for a in found]
    new = _raised(lambda: as_tuples(decide(event_type, record, found, records, CONTEXT)))
    assert new == _raised(lambda: oracle_decide(event_type, record, found, records, CONTEXT))
