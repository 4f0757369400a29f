"""A deterministic synthetic scenario: custody, referral and natal-care events.

Everything here is made up. Names come from small built-in lists, towns are
invented, postcodes use the unused "Q" postcode areas, and every NHS number is
in the range the NHS reserves for test data (999 000 0000 - 999 999 9999).

A population of people recurs across events, so the same person can be
arrested by one force, referred by a school or council, and booked for
antenatal care - which is what consent decisions and subject reports care
about. The same seed always gives the same scenario (event ids included).

Records are dicts in the form fastavro writes and reads: timestamp-millis as
timezone-aware UTC datetimes (millisecond precision), dates as datetime.date,
enums as symbol strings, nullable unions as None or the value.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from producers import nhs_number
from schemas import catalogue

# The event types this module has generators for (one method each, below), in the order the
# scenario interleaves them. The types themselves are the event catalogue's (schemas/events/):
# a type without a generator here is published all the same, only not made up.
EVENT_TYPES = ("custody", "referral", "natal_care")
_UNKNOWN = [t for t in EVENT_TYPES if t not in catalogue.default()]
if _UNKNOWN:
    raise RuntimeError(f"synthetic generators for event types not in schemas/events/: {', '.join(_UNKNOWN)}")

# Agency id -> (event type, source system)
AGENCIES: dict[str, tuple[str, str]] = {
    "met-police": ("custody", "niche-rms"),
    "gmp-police": ("custody", "policeworks"),
    "mft-nhs-trust": ("natal_care", "cerner-maternity"),
    "salford-council": ("referral", "liquidlogic-lcs"),
    "oakfield-school": ("referral", "cpoms"),
}
TRUST_ODS_CODE = "R0A"

GIVEN_NAMES_F = (
    "Amelia",
    "Olivia",
    "Isla",
    "Ava",
    "Grace",
    "Freya",
    "Sophie",
    "Chloe",
    "Aisha",
    "Zara",
    "Megan",
    "Holly",
    "Niamh",
    "Priya",
    "Leah",
    "Ellie",
    "Hannah",
    "Jasmine",
    "Kayleigh",
    "Rosie",
)
GIVEN_NAMES_M = (
    "Oliver",
    "Jack",
    "Harry",
    "George",
    "Noah",
    "Leo",
    "Mohammed",
    "Callum",
    "Ryan",
    "Liam",
    "Kieran",
    "Daniel",
    "Ethan",
    "Josh",
    "Tyler",
    "Arjun",
    "Connor",
    "Reece",
    "Owen",
    "Jamal",
)
MIDDLE_NAMES = ("Rose", "May", "Louise", "Jane", "James", "John", "Lee", "Ali", "Marie", "Thomas")
FAMILY_NAMES = (
    "Smith",
    "Jones",
    "Taylor",
    "Brown",
    "Williams",
    "Wilson",
    "Johnson",
    "Davies",
    "Patel",
    "Robinson",
    "Wright",
    "Thompson",
    "Evans",
    "Walker",
    "White",
    "Roberts",
    "Green",
    "Hall",
    "Khan",
    "Clarke",
    "Hughes",
    "Edwards",
    "Begum",
    "Murphy",
    "Kowalski",
    "Okafor",
    "Hussain",
    "Lewis",
    "Harris",
    "Ahmed",
)
STREETS = (
    "Larkspur Road",
    "Mill Lane",
    "Canal Street",
    "Hawthorn Close",
    "Victoria Terrace",
    "Church Walk",
    "Foundry Row",
    "Beech Avenue",
    "Weaver Street",
    "Orchard Drive",
    "Station Approach",
    "Kingfisher Way",
    "Cobden Street",
    "Moss Bank",
    "Tannery Court",
    "Elm Grove",
)
# Invented towns, each with an unused "Q" postcode area so no postcode is real.
TOWNS = (
    ("Ashworth Vale", "QA"),
    ("Brindlecombe", "QB"),
    ("Castlemere", "QC"),
    ("Dunhollow", "QD"),
    ("Eastwick Moor", "QE"),
    ("Fernleigh", "QF"),
)
_INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # inward codes never use C I K M O V

OFFENCES = {
    "008/01": "assault occasioning actual bodily harm",
    "105/01": "common assault",
    "028/01": "burglary in a dwelling",
    "046/00": "shoplifting",
    "049/00": "theft",
    "058/01": "criminal damage",
    "092/01": "possession with intent to supply a controlled drug",
    "092/07": "possession of a controlled drug",
    "010/05": "possession of a bladed article",
    "195/94": "breach of a non-molestation order",
}
CONCERNS = ("NEGLECT", "PHYSICAL_ABUSE", "EMOTIONAL_ABUSE", "DOMESTIC_ABUSE", "EXPLOITATION")
CONCERN_TEXT = {
    "NEGLECT": "the home being without food or heating and missed health appointments",
    "PHYSICAL_ABUSE": "unexplained bruising that was noticed and not accounted for",
    "EMOTIONAL_ABUSE": "repeated belittling and threats reported by the person",
    "DOMESTIC_ABUSE": "police call-outs to the address following arguments between adults",
    "EXPLOITATION": "unexplained new possessions, going missing and contact with older associates",
}
NARRATIVE_OPENINGS = (
    "{name} ({age}) was seen by the {role} on {day}.",
    "On {day} the {role} spoke with {name} ({age}).",
    "{name}, aged {age}, came to the attention of the {role} on {day}.",
)
NARRATIVE_FOLLOW_UPS = (
    "No immediate risk was identified but a multi-agency view is requested.",
    "The family were informed of the referral.",
    "The person did not want the family told; advice was given.",
    "A strategy discussion is requested.",
    "Previous concerns were raised earlier this year.",
)
HEALTH_VISITOR_TEAMS = ("Salford North Health Visiting", "Salford Central Health Visiting", "Eccles Health Visiting")
HANDOVER_NOTES = (
    "Routine new-birth visit to be booked within 14 days.",
    "Mother asked for feeding support; please prioritise the first visit.",
    "Safeguarding flag on record; please read the maternity notes before visiting.",
    "Baby was in the neonatal unit for {days} days; follow-up with the paediatric team arranged.",
    "Interpreter may be needed for the first visit.",
)
SCHOOL_ROLE = "designated safeguarding lead"
COUNCIL_ROLES = ("social worker", "early help practitioner", "adult social care practitioner")

# A past year, so every event passes the bus's plausibility rules (nothing in the future)
# on any machine whose clock is right; the same seed gives the same scenario every day.
SCENARIO_YEAR = 2025
YEAR_START = datetime(SCENARIO_YEAR, 1, 1, tzinfo=UTC)
YEAR_END = datetime(SCENARIO_YEAR, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
REFERENCE_DAY = date(SCENARIO_YEAR, 1, 1)


@dataclass
class Person:
    nhs_number: str
    pnc_id: str | None  # set the first time the person is taken into custody
    given_names: str
    family_name: str
    date_of_birth: date
    address: dict[str, str]
    sex: str  # "F" | "M"


@dataclass(frozen=True)
class SyntheticEvent:
    event_type: str  # "custody" | "referral" | "natal_care"
    agency: str
    record: dict


@dataclass
class Scenario:
    events: list[SyntheticEvent]
    malformed: list[tuple[str, bytes]]  # (event_type, raw bytes that are not a valid single-object Avro message)
    people: list[Person] = field(default_factory=list)


def age_on(dob: date, day: date) -> int:
    return day.year - dob.year - ((day.month, day.day) < (dob.month, dob.day))


def _random_day(rng: random.Random, earliest: date, latest: date) -> date:
    return earliest + timedelta(days=rng.randrange((latest - earliest).days + 1))


class _Builder:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.nhs_numbers: set[str] = set()
        self.people: list[Person] = []
        self.local_ids: dict[tuple[str, int], str] = {}
        self.counters: dict[str, int] = {}

    # -- identifiers --------------------------------------------------------

    def nhs(self) -> str:
        while True:
            number = nhs_number.generate(self.rng)
            if number not in self.nhs_numbers:
                self.nhs_numbers.add(number)
                return number

    def next_id(self, kind: str) -> int:
        self.counters[kind] = self.counters.get(kind, 0) + 1
        return self.counters[kind]

    def event_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def pnc_id(self) -> str:
        year = self.rng.randrange(0, 26)
        return f"{year:02d}/{self.rng.randrange(1_000_000):06d}{self.rng.choice('ABCDEFGHJKLMNPQRTUVWXYZ')}"

    def local_id(self, agency: str, person_index: int) -> str:
        key = (agency, person_index)
        if key not in self.local_ids:
            if agency == "oakfield-school":
                self.local_ids[key] = f"OAK-{self.next_id('oak-pupil'):05d}"
            else:
                self.local_ids[key] = f"LCS{self.rng.randrange(100_000, 1_000_000)}"
        return self.local_ids[key]

    # -- population ---------------------------------------------------------

    def address(self) -> dict[str, str]:
        rng = self.rng
        town, area = rng.choice(TOWNS)
        postcode = (
            f"{area}{rng.randrange(1, 20)} {rng.randrange(1, 10)}"
            f"{rng.choice(_INWARD_LETTERS)}{rng.choice(_INWARD_LETTERS)}"
        )
        return {"line1": f"{rng.randrange(1, 180)} {rng.choice(STREETS)}", "town": town, "postcode": postcode}

    def person(self, sex: str, earliest_dob: date, latest_dob: date) -> Person:
        rng = self.rng
        given = rng.choice(GIVEN_NAMES_F if sex == "F" else GIVEN_NAMES_M)
        if rng.random() < 0.35:
            given = f"{given} {rng.choice(MIDDLE_NAMES)}"
        return Person(
            nhs_number=self.nhs(),
            pnc_id=None,
            given_names=given,
            family_name=rng.choice(FAMILY_NAMES),
            date_of_birth=_random_day(rng, earliest_dob, latest_dob),
            address=self.address(),
            sex=sex,
        )

    def populate(self, size: int) -> None:
        rng = self.rng
        # Women who can be mothers: aged 16-45 on every day of the scenario's year.
        n_mothers = max(1, round(size * 0.28))
        # School-age children: under 18 all through the scenario's year, and at least 4.
        n_children = max(1, round(size * 0.24))
        n_adults = max(1, size - n_mothers - n_children)
        for _ in range(n_mothers):
            self.people.append(self.person("F", date(SCENARIO_YEAR - 45, 1, 2), date(SCENARIO_YEAR - 17, 12, 31)))
        for _ in range(n_children):
            self.people.append(
                self.person(rng.choice("FM"), date(SCENARIO_YEAR - 17, 1, 2), date(SCENARIO_YEAR - 5, 12, 31))
            )
        for _ in range(n_adults):
            self.people.append(
                self.person(rng.choice("FMM"), date(SCENARIO_YEAR - 76, 1, 1), date(SCENARIO_YEAR - 19, 12, 31))
            )
        rng.shuffle(self.people)
        ref = REFERENCE_DAY
        self.mothers = [
            i
            for i, p in enumerate(self.people)
            if p.sex == "F"
            and age_on(p.date_of_birth, ref) >= 16
            and age_on(p.date_of_birth, date(SCENARIO_YEAR, 12, 31)) <= 45
        ]
        self.pupils = [i for i, p in enumerate(self.people) if 4 <= age_on(p.date_of_birth, ref) <= 16]
        self.custody_pool = [i for i, p in enumerate(self.people) if age_on(p.date_of_birth, ref) >= 12]
        self.council_pool = list(range(len(self.people)))
        if not self.mothers or not self.pupils or not self.custody_pool:
            raise ValueError(f"population of {size} too small for a scenario")

    # -- envelopes ----------------------------------------------------------

    def moment(self, day: date | None = None) -> datetime:
        rng = self.rng
        if day is None:
            day = _random_day(rng, date(SCENARIO_YEAR, 1, 1), date(SCENARIO_YEAR, 12, 20))
        ms = rng.randrange(24 * 3600 * 1000)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(milliseconds=ms)

    def envelope(self, agency: str, occurred_at: datetime, max_delay_minutes: int) -> dict[str, Any]:
        occurred_at = min(occurred_at, YEAR_END)
        delay = timedelta(milliseconds=self.rng.randrange(1000, max_delay_minutes * 60 * 1000))
        recorded_at = min(occurred_at + delay, YEAR_END)
        return {
            "event_id": self.event_id(),
            "occurred_at": occurred_at,
            "recorded_at": recorded_at,
            "source_agency": agency,
            "source_system": AGENCIES[agency][1],
        }

    # -- custody ------------------------------------------------------------

    def custody_episode(self) -> list[SyntheticEvent]:
        rng = self.rng
        index = rng.choice(self.custody_pool)
        person = self.people[index]
        if person.pnc_id is None:
            person.pnc_id = self.pnc_id()
        agency = rng.choice(("met-police", "met-police", "gmp-police"))
        record_id = f"CUS/26/{self.next_id('custody-' + agency):06d}"
        offences = rng.sample(sorted(OFFENCES), k=rng.choice((1, 1, 1, 2, 3)))
        with_nhs = rng.random() < 0.7
        address = None if rng.random() < 0.08 else dict(person.address)  # no fixed abode
        arrested = self.moment()
        detained = arrested + timedelta(minutes=rng.randrange(20, 120), milliseconds=rng.randrange(60_000))
        ended = detained + timedelta(hours=rng.randrange(2, 36), milliseconds=rng.randrange(3_600_000))
        final = rng.choices(("CHARGE", "RELEASE"), weights=(45, 55))[0]
        final_outcome: str | None
        if final == "CHARGE":
            final_outcome = rng.choices(("CHARGED", "BAILED", "REMANDED"), weights=(60, 25, 15))[0]
        else:
            final_outcome = rng.choices(("NFA", "BAILED", None), weights=(55, 35, 10))[0]
        steps = [("ARREST", arrested, None), ("DETENTION", detained, None), (final, ended, final_outcome)]
        events = []
        for kind, when, outcome in steps:
            record = {
                "envelope": self.envelope(agency, when, 90),
                "event_kind": kind,
                "custody_record_id": record_id,
                "subject": {
                    "pnc_id": person.pnc_id,
                    "given_names": person.given_names,
                    "family_name": person.family_name,
                    "date_of_birth": person.date_of_birth,
                    "nhs_number": person.nhs_number if with_nhs else None,
                    "address": address,
                },
                "offence_codes": list(offences),
                "outcome": outcome,
            }
            events.append(SyntheticEvent("custody", agency, record))
        return events

    # -- referrals ----------------------------------------------------------

    def referral(self) -> SyntheticEvent:
        rng = self.rng
        agency = rng.choices(("salford-council", "oakfield-school"), weights=(60, 40))[0]
        if agency == "oakfield-school":
            index = rng.choice(self.pupils)
            role = SCHOOL_ROLE
            nhs_known = rng.random() < 0.5
        else:
            index = rng.choice(self.council_pool)
            nhs_known = rng.random() < 0.85
            role = None
        person = self.people[index]
        occurred_at = self.moment()
        age = age_on(person.date_of_birth, occurred_at.date())
        kind = "CHILD" if age < 18 else "ADULT"
        if role is None:
            role = rng.choice(COUNCIL_ROLES[:2]) if kind == "CHILD" else COUNCIL_ROLES[2]
        concerns = rng.sample(CONCERNS, k=rng.choice((1, 1, 2, 2, 3)))
        urgency = rng.choices(("ROUTINE", "URGENT", "IMMEDIATE"), weights=(60, 30, 10))[0]
        first_name = person.given_names.split()[0]
        narrative = " ".join(
            [
                rng.choice(NARRATIVE_OPENINGS).format(
                    name=first_name, age=age, role=role, day=occurred_at.date().strftime("%d %B %Y")
                ),
                "Concerns about " + "; and ".join(CONCERN_TEXT[c] for c in concerns) + ".",
                rng.choice(NARRATIVE_FOLLOW_UPS),
            ]
        )
        prefix = "SAL" if agency == "salford-council" else "OAK"
        record = {
            "envelope": self.envelope(agency, occurred_at, 3 * 24 * 60),
            "referral_id": f"REF-{prefix}-26-{self.next_id('referral-' + agency):05d}",
            "referrer": {"agency": agency, "role": role},
            "subject": {
                "subject_kind": kind,
                "local_id": self.local_id(agency, index),
                "nhs_number": person.nhs_number if nhs_known else None,
                "given_names": person.given_names,
                "family_name": person.family_name,
                "date_of_birth": person.date_of_birth,
                "address": dict(person.address),
            },
            "concern_categories": concerns,
            "urgency": urgency,
            "narrative": narrative,
        }
        return SyntheticEvent("referral", agency, record)

    # -- natal care ---------------------------------------------------------

    def pregnancy(self) -> list[SyntheticEvent]:
        rng = self.rng
        agency = "mft-nhs-trust"
        mother = self.people[rng.choice(self.mothers)]
        gestation = rng.choices(range(24, 43), weights=[1, 1, 1, 1, 2, 2, 3, 3, 4, 5, 6, 8, 10, 12, 14, 12, 8, 4, 2])[0]
        birth_day = _random_day(rng, date(SCENARIO_YEAR, 1, 1), date(SCENARIO_YEAR, 12, 10))
        booking_day = birth_day - timedelta(weeks=gestation - rng.randrange(8, 13), days=rng.randrange(7))
        stay_days = rng.randrange(1, 5) if gestation >= 37 else rng.randrange(5, 40)
        discharge_day = min(birth_day + timedelta(days=stay_days), date(SCENARIO_YEAR, 12, 30))
        baby = {
            "nhs_number": self.nhs(),
            "date_of_birth": birth_day,
            "sex": rng.choice(("F", "M")),
        }
        mother_record = {
            "nhs_number": mother.nhs_number,
            "given_names": mother.given_names,
            "family_name": mother.family_name,
            "date_of_birth": mother.date_of_birth,
            "address": dict(mother.address),
        }
        steps: list[tuple[str, date]] = []
        if booking_day >= date(SCENARIO_YEAR, 1, 1):  # otherwise booked before the scenario's year
            steps.append(("ANTENATAL_BOOKING", booking_day))
        steps.append(("BIRTH", birth_day))
        steps.append(("POSTNATAL_DISCHARGE", discharge_day))
        events = []
        for kind, day in steps:
            handover = None
            if kind == "POSTNATAL_DISCHARGE":
                handover = {
                    "team": rng.choice(HEALTH_VISITOR_TEAMS),
                    "handover_date": day + timedelta(days=rng.randrange(0, 3)),
                    "notes": rng.choice(HANDOVER_NOTES).format(days=stay_days),
                }
            record = {
                "envelope": self.envelope(agency, self.moment(day), 12 * 60),
                "event_kind": kind,
                "trust_ods_code": TRUST_ODS_CODE,
                "mother": dict(mother_record),
                "baby": dict(baby) if kind != "ANTENATAL_BOOKING" else None,
                # Gestation at birth; not yet known at booking.
                "gestation_weeks": gestation if kind != "ANTENATAL_BOOKING" else None,
                "health_visitor_handover": handover,
            }
            events.append(SyntheticEvent("natal_care", agency, record))
        return events

    # -- malformed ----------------------------------------------------------

    def malformed(self, n: int, events: list[SyntheticEvent]) -> list[tuple[str, bytes]]:
        rng = self.rng
        out: list[tuple[str, bytes]] = []
        by_type = {t: [e for e in events if e.event_type == t] for t in EVENT_TYPES}
        texts = (b"not avro at all", b"CUSTODY RECORD CUS/26/000001 ARREST\n", b"Hello from the test harness")
        for i in range(n):
            # 4 shapes x 3 event types: twelve payloads cover every combination.
            event_type = EVENT_TYPES[i % len(EVENT_TYPES)]
            shape = i % 4
            if shape == 0:  # plain text
                raw = texts[(i // 4) % len(texts)]
            elif shape == 1:  # JSON where Avro was expected
                sample = by_type[event_type]
                raw = (to_json_line(rng.choice(sample)) if sample else '{"event": "json"}').encode()
            elif shape == 2:  # the magic, an unknown 8-byte fingerprint, and junk
                raw = b"\xc3\x01" + rng.randbytes(8) + rng.randbytes(rng.randrange(4, 40))
            else:  # header too short to hold a fingerprint
                raw = b"\xc3\x01" + rng.randbytes(rng.randrange(0, 8))
            out.append((event_type, raw))
        return out


def _fit(episodes_fn, target: int) -> list[SyntheticEvent]:
    """Call episodes_fn until `target` events exist, dropping the tail of the last episode."""
    events: list[SyntheticEvent] = []
    while len(events) < target:
        episode = episodes_fn()
        events.extend(episode if isinstance(episode, list) else [episode])
    return events[:target]


def build_scenario(n_events: int = 1200, seed: int = 7, n_malformed: int = 12) -> Scenario:
    """A deterministic scenario of `n_events` events (about 45% custody, 30% natal care, 25% referral)."""
    if n_events < 0 or n_malformed < 0:
        raise ValueError("n_events and n_malformed must not be negative")
    builder = _Builder(seed)
    builder.populate(max(8, n_events // 4))
    n_custody = round(n_events * 0.45)
    n_natal = round(n_events * 0.30)
    n_referral = n_events - n_custody - n_natal
    events = (
        _fit(builder.custody_episode, n_custody) + _fit(builder.pregnancy, n_natal) + _fit(builder.referral, n_referral)
    )
    events.sort(key=lambda e: (e.record["envelope"]["occurred_at"], e.record["envelope"]["event_id"]))
    malformed = builder.malformed(n_malformed, events)
    return Scenario(events=events, malformed=malformed, people=builder.people)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def to_json_line(event: SyntheticEvent) -> str:
    """The record as one JSON line: datetimes as ISO-8601 UTC with milliseconds and "Z", dates as ISO dates."""
    return json.dumps(_jsonable(event.record), ensure_ascii=False, separators=(",", ":"))
