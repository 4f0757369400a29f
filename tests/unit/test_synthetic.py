"""The synthetic scenario generator and the NHS number check it relies on."""

from __future__ import annotations

import io
import json
import random
import re
import uuid
from collections import Counter, defaultdict
from datetime import UTC, date, datetime
from pathlib import Path

import fastavro
import pytest
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import validate

from producers import nhs_number
from producers.synthetic import OFFENCES, SCENARIO_YEAR, Scenario, SyntheticEvent, age_on, build_scenario, to_json_line

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
EVENT_TYPES = ("custody", "referral", "natal_care")


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for event_type in EVENT_TYPES:
        with (SCHEMA_DIR / "events" / event_type / "v1.avsc").open() as f:
            schema = fastavro.parse_schema(json.load(f))
            assert isinstance(schema, dict)
            out[event_type] = schema
    return out


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build_scenario()


def nhs_numbers_in(event: SyntheticEvent) -> list[str]:
    r = event.record
    if event.event_type == "natal_care":
        numbers = [r["mother"]["nhs_number"]]
        if r["baby"] and r["baby"]["nhs_number"]:
            numbers.append(r["baby"]["nhs_number"])
        return numbers
    return [r["subject"]["nhs_number"]] if r["subject"]["nhs_number"] else []


# -- single-object encoding, used to show malformed payloads cannot be read ---


def _fingerprints(schemas: dict[str, dict]) -> dict[bytes, dict]:
    return {bytes.fromhex(fingerprint(to_parsing_canonical_form(s), "CRC-64-AVRO")): s for s in schemas.values()}


def encode_single_object(schema: dict, record: dict) -> bytes:
    buf = io.BytesIO()
    buf.write(b"\xc3\x01" + bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")))
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def decode_single_object(data: bytes, schemas: dict[str, dict]) -> dict:
    """Strict single-object decode: magic, known fingerprint, a body that is read exactly to its end."""
    if len(data) < 10 or data[:2] != b"\xc3\x01":
        raise ValueError("not a single-object Avro message")
    schema = _fingerprints(schemas).get(data[2:10])
    if schema is None:
        raise ValueError("unknown schema fingerprint")
    buf = io.BytesIO(data[10:])
    record = fastavro.schemaless_reader(buf, schema, schema)
    if buf.tell() != len(data) - 10:
        raise ValueError("trailing bytes after the record")
    assert isinstance(record, dict)
    return record


# -- NHS numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "9434765919",  # the NHS's documented example
        "4010232137",  # 92 % 11 = 4 -> 7
        "9999999999",  # 486 % 11 = 2 -> 9
        "0000000000",  # sum 0 -> 11 -> check digit 0
        "9990000018",  # 243 + 1*2 = 245, 245 % 11 = 3 -> 8
        "9990000026",  # 243 + 2*2 = 247, 247 % 11 = 5 -> 6
    ],
)
def test_known_valid_nhs_numbers(number: str) -> None:
    assert nhs_number.is_valid(number)


@pytest.mark.parametrize(
    "number",
    [
        "9434765918",  # wrong check digit
        "9434765910",
        "4010232138",
        "9999999998",
        "0000000060",  # 6 * 2 = 12, 12 % 11 = 1 -> check 10: no tenth digit works
        "9990000000",  # 243 % 11 = 1 -> check 10
        "9991234560",  # check 10
        "9990000019",
        "943476591",  # nine digits
        "94347659190",  # eleven digits
        "943 476 5919",  # spaced
        "94347659l9",  # a letter
        "٩٤٣٤٧٦٥٩١٩",  # Arabic-Indic digits: isdigit() but not ASCII
        "",
    ],
)
def test_known_invalid_nhs_numbers(number: str) -> None:
    assert not nhs_number.is_valid(number)


def test_non_string_is_not_a_valid_nhs_number() -> None:
    assert not nhs_number.is_valid(9434765919)  # type: ignore[arg-type]
    assert not nhs_number.is_valid(None)  # type: ignore[arg-type]


def test_prefix_whose_check_would_be_10_has_no_valid_completion() -> None:
    assert [d for d in range(10) if nhs_number.is_valid(f"000000006{d}")] == []
    # ...whereas an ordinary prefix has exactly one.
    assert [d for d in range(10) if nhs_number.is_valid(f"943476591{d}")] == [9]


def _reference_check(first_nine: str) -> int:
    check = 11 - sum(int(d) * w for d, w in zip(first_nine, range(10, 1, -1), strict=True)) % 11
    return 0 if check == 11 else check


def test_is_valid_agrees_with_a_reference_implementation() -> None:
    rng = random.Random(1)
    for _ in range(2000):
        number = f"{rng.randrange(10**10):010d}"
        expected = _reference_check(number[:9]) == int(number[9])
        assert nhs_number.is_valid(number) is expected, number


def test_generate_stays_in_test_range_and_is_valid() -> None:
    rng = random.Random(3)
    numbers = [nhs_number.generate(rng) for _ in range(5000)]
    assert all(9_990_000_000 <= int(n) <= 9_999_999_999 for n in numbers)
    assert all(len(n) == 10 and nhs_number.is_valid(n) for n in numbers)
    assert len(set(numbers)) > 4900  # not stuck on a few values


def test_generate_rejects_candidates_whose_check_digit_would_be_10() -> None:
    bad = next(n for n in range(10**6) if _reference_check(f"999{n:06d}") == 10)
    good = next(n for n in range(10**6) if _reference_check(f"999{n:06d}") != 10)

    class Scripted(random.Random):
        def __init__(self) -> None:
            super().__init__(0)
            self.draws = [bad, bad, good]

        def randrange(self, *args, **kwargs):  # type: ignore[override]
            return self.draws.pop(0)

    rng = Scripted()
    number = nhs_number.generate(rng)
    assert number == f"999{good:06d}{_reference_check(f'999{good:06d}')}"
    assert rng.draws == []


# -- the scenario ---------------------------------------------------------------


def test_every_record_validates_and_round_trips(scenario: Scenario, schemas: dict[str, dict]) -> None:
    assert len(scenario.events) == 1200
    for event in scenario.events:
        schema = schemas[event.event_type]
        assert validate(event.record, schema, raise_errors=True)
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, schema, event.record)
        buf.seek(0)
        assert fastavro.schemaless_reader(buf, schema, schema) == event.record


def test_small_and_other_seeds_also_validate(schemas: dict[str, dict]) -> None:
    for n, seed in [(10, 1), (40, 2), (300, 99)]:
        s = build_scenario(n, seed=seed)
        assert len(s.events) == n
        for event in s.events:
            assert validate(event.record, schemas[event.event_type], raise_errors=True)


def test_deterministic_for_a_seed_and_different_for_another() -> None:
    a, b = build_scenario(seed=7), build_scenario(seed=7)
    assert a == b
    assert [to_json_line(e) for e in a.events] == [to_json_line(e) for e in b.events]
    c = build_scenario(seed=8)
    assert a.events != c.events
    assert {e.record["envelope"]["event_id"] for e in a.events}.isdisjoint(
        e.record["envelope"]["event_id"] for e in c.events
    )
    assert a.people != c.people
    assert a.malformed != c.malformed


def test_every_nhs_number_passes_modulus_11_and_is_in_test_range(scenario: Scenario) -> None:
    numbers = [n for e in scenario.events for n in nhs_numbers_in(e)]
    numbers += [p.nhs_number for p in scenario.people]
    assert len(numbers) > 1000
    for n in numbers:
        assert nhs_number.is_valid(n), n
        assert n.startswith("999"), n
    assert len({p.nhs_number for p in scenario.people}) == len(scenario.people)  # one number per person


def test_mix_of_types_and_agencies(scenario: Scenario) -> None:
    types = Counter(e.event_type for e in scenario.events)
    assert set(types) == set(EVENT_TYPES)
    assert abs(types["custody"] / 1200 - 0.45) < 0.03
    assert abs(types["natal_care"] / 1200 - 0.30) < 0.03
    assert abs(types["referral"] / 1200 - 0.25) < 0.03
    agencies = {e.agency for e in scenario.events}
    assert len(agencies) >= 4
    assert {"met-police", "gmp-police", "mft-nhs-trust", "salford-council", "oakfield-school"} <= agencies
    expected = {
        "met-police": ("custody", "niche-rms"),
        "mft-nhs-trust": ("natal_care", "cerner-maternity"),
        "salford-council": ("referral", "liquidlogic-lcs"),
    }
    for e in scenario.events:
        env = e.record["envelope"]
        assert env["source_agency"] == e.agency
        if e.agency in expected:
            assert (e.event_type, env["source_system"]) == expected[e.agency]
        if e.agency == "gmp-police":
            assert e.event_type == "custody"
        if e.agency == "oakfield-school":
            assert e.event_type == "referral"
            assert e.record["referrer"]["role"] == "designated safeguarding lead"


def test_envelopes(scenario: Scenario) -> None:
    start, end = datetime(SCENARIO_YEAR, 1, 1, tzinfo=UTC), datetime(SCENARIO_YEAR + 1, 1, 1, tzinfo=UTC)
    ids = set()
    for e in scenario.events:
        env = e.record["envelope"]
        occurred, recorded = env["occurred_at"], env["recorded_at"]
        assert occurred.tzinfo is not None and recorded.tzinfo is not None
        assert start <= occurred <= recorded < end
        assert occurred.microsecond % 1000 == 0 and recorded.microsecond % 1000 == 0
        parsed = uuid.UUID(env["event_id"])
        assert parsed.version == 4 and str(parsed) == env["event_id"]
        ids.add(env["event_id"])
    assert len(ids) == len(scenario.events)


def test_custody_records(scenario: Scenario) -> None:
    custody = [e.record for e in scenario.events if e.event_type == "custody"]
    kinds = Counter(r["event_kind"] for r in custody)
    assert set(kinds) == {"ARREST", "DETENTION", "CHARGE", "RELEASE"}
    outcomes = Counter(r["outcome"] for r in custody)
    assert set(outcomes) <= {"CHARGED", "NFA", "BAILED", "REMANDED", None}
    assert {"CHARGED", "NFA", "BAILED", "REMANDED"} <= set(outcomes)
    for r in custody:
        assert re.fullmatch(r"CUS/\d{2}/\d{6}", r["custody_record_id"])
        assert re.fullmatch(r"\d{2}/\d{6}[A-Z]", r["subject"]["pnc_id"])
        assert r["offence_codes"] and set(r["offence_codes"]) <= set(OFFENCES)
        assert age_on(r["subject"]["date_of_birth"], r["envelope"]["occurred_at"].date()) >= 10
    with_nhs = sum(r["subject"]["nhs_number"] is not None for r in custody) / len(custody)
    assert 0.6 <= with_nhs <= 0.8


def test_referral_records(scenario: Scenario) -> None:
    referrals = [e.record for e in scenario.events if e.event_type == "referral"]
    allowed = {"NEGLECT", "PHYSICAL_ABUSE", "EMOTIONAL_ABUSE", "DOMESTIC_ABUSE", "EXPLOITATION"}
    assert {r["subject"]["subject_kind"] for r in referrals} == {"CHILD", "ADULT"}
    for r in referrals:
        s = r["subject"]
        age = age_on(s["date_of_birth"], r["envelope"]["occurred_at"].date())
        assert s["subject_kind"] == ("CHILD" if age < 18 else "ADULT"), (s, age)
        assert r["concern_categories"] and set(r["concern_categories"]) <= allowed
        assert r["urgency"] in {"ROUTINE", "URGENT", "IMMEDIATE"}
        assert s["given_names"].split()[0] in r["narrative"] and len(r["narrative"]) > 40
        assert r["referrer"]["agency"] == r["envelope"]["source_agency"]
    assert len({r["narrative"] for r in referrals}) > len(referrals) // 2


def test_natal_care_records(scenario: Scenario) -> None:
    people = {p.nhs_number: p for p in scenario.people}
    natal = [e.record for e in scenario.events if e.event_type == "natal_care"]
    assert {r["event_kind"] for r in natal} == {"ANTENATAL_BOOKING", "BIRTH", "POSTNATAL_DISCHARGE"}
    for r in natal:
        mother = people[r["mother"]["nhs_number"]]  # always present, and one of the population
        assert mother.sex == "F"
        assert 16 <= age_on(mother.date_of_birth, r["envelope"]["occurred_at"].date()) <= 45
        has_baby = r["event_kind"] in ("BIRTH", "POSTNATAL_DISCHARGE")
        assert (r["baby"] is not None) is has_baby
        if has_baby:
            assert 24 <= r["gestation_weeks"] <= 42
            assert r["baby"]["date_of_birth"] <= r["envelope"]["occurred_at"].date()
        handover = r["health_visitor_handover"]
        assert (handover is not None) is (r["event_kind"] == "POSTNATAL_DISCHARGE")
        if handover:
            assert handover["handover_date"] >= r["envelope"]["occurred_at"].date()
    gestations = {r["gestation_weeks"] for r in natal if r["gestation_weeks"] is not None}
    assert all(24 <= g <= 42 for g in gestations) and len(gestations) > 5


def test_people_recur_across_event_types(scenario: Scenario) -> None:
    by_nhs = {p.nhs_number: i for i, p in enumerate(scenario.people)}
    by_pnc = {p.pnc_id: i for i, p in enumerate(scenario.people) if p.pnc_id}
    seen: dict[int, set[str]] = defaultdict(set)
    for e in scenario.events:
        r = e.record
        if e.event_type == "natal_care":
            seen[by_nhs[r["mother"]["nhs_number"]]].add("natal_care")
        elif e.event_type == "custody":
            seen[by_pnc[r["subject"]["pnc_id"]]].add("custody")
        elif r["subject"]["nhs_number"]:
            seen[by_nhs[r["subject"]["nhs_number"]]].add("referral")
    assert 200 <= len(scenario.people) <= 400  # about n_events / 4
    multi = [i for i, types in seen.items() if len(types) >= 2]
    assert len(multi) >= 10
    assert any(types == set(EVENT_TYPES) for types in seen.values())
    # Someone appears more than once, and names/dates of birth match across agencies.
    person = scenario.people[multi[0]]
    for e in scenario.events:
        subject = e.record["mother"] if e.event_type == "natal_care" else e.record["subject"]
        if subject.get("nhs_number") == person.nhs_number:
            assert (subject["given_names"], subject["family_name"], subject["date_of_birth"]) == (
                person.given_names,
                person.family_name,
                person.date_of_birth,
            )


def test_malformed_payloads_are_not_decodable(scenario: Scenario, schemas: dict[str, dict]) -> None:
    # Positive control: the strict decoder reads a properly encoded event of every type.
    for event_type in EVENT_TYPES:
        event = next(e for e in scenario.events if e.event_type == event_type)
        raw = encode_single_object(schemas[event_type], event.record)
        assert decode_single_object(raw, schemas) == event.record

    assert len(scenario.malformed) == 12
    assert {t for t, _ in scenario.malformed} == set(EVENT_TYPES)
    known = set(_fingerprints(schemas))
    shapes = set()
    for _event_type, raw in scenario.malformed:
        assert isinstance(raw, bytes)
        with pytest.raises(ValueError):
            decode_single_object(raw, schemas)
        if raw.startswith(b"\xc3\x01"):
            if len(raw) < 10:
                shapes.add("short header")
            else:
                assert raw[2:10] not in known
                shapes.add("unknown fingerprint")
        elif raw.startswith(b"{"):
            json.loads(raw)
            shapes.add("json")
        else:
            raw.decode("ascii")
            shapes.add("text")
    assert shapes == {"short header", "unknown fingerprint", "json", "text"}
    assert (scenario.malformed[0][1]) == b"not avro at all"
    assert len(build_scenario(100, n_malformed=5).malformed) == 5


def test_json_lines(scenario: Scenario) -> None:
    ts = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
    for e in scenario.events[:200]:
        line = to_json_line(e)
        assert "\n" not in line
        data = json.loads(line)
        env = data["envelope"]
        assert ts.fullmatch(env["occurred_at"]) and ts.fullmatch(env["recorded_at"])
        parsed = datetime.fromisoformat(env["occurred_at"].replace("Z", "+00:00"))
        assert parsed == e.record["envelope"]["occurred_at"]
        dob = (data["mother"] if e.event_type == "natal_care" else data["subject"])["date_of_birth"]
        assert (
            date.fromisoformat(dob)
            == (e.record["mother"] if e.event_type == "natal_care" else e.record["subject"])["date_of_birth"]
        )
    discharge = next(e for e in scenario.events if e.record.get("event_kind") == "POSTNATAL_DISCHARGE")
    data = json.loads(to_json_line(discharge))
    assert date.fromisoformat(data["health_visitor_handover"]["handover_date"])
    assert date.fromisoformat(data["baby"]["date_of_birth"]) == discharge.record["baby"]["date_of_birth"]
