"""Single-object Avro serde: wire format, refusals and JSON coercion (no Kafka)."""

from __future__ import annotations

import copy
import struct
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.serde import (
    BodyMismatch,
    Catalogue,
    InvalidRecord,
    NotSingleObject,
    SerdeError,
    UnknownFingerprint,
    crc64_avro,
    fingerprint,
    from_json,
    load_schema,
    to_json,
    validate,
)

# Synthetic NHS numbers that pass the Modulus 11 check (asserted below).
NHS_A = "9434765919"
NHS_B = "9434765870"


def nhs_valid(number: str) -> bool:
    """Modulus 11: weights 10..2 over the first nine digits; check digit 11 - (sum mod 11), 11 -> 0, 10 invalid."""
    if len(number) != 10 or not number.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(number[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(number[9])


def envelope(agency: str = "met-police") -> dict[str, Any]:
    return {
        "event_id": "6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f",
        "occurred_at": datetime(2026, 5, 1, 10, 0, 0, 123000, tzinfo=UTC),
        "recorded_at": datetime(2026, 5, 1, 10, 4, 30, tzinfo=UTC),
        "source_agency": agency,
        "source_system": "custody-suite",
    }


def custody_record(with_address: bool = True) -> dict[str, Any]:
    return {
        "envelope": envelope(),
        "event_kind": "CHARGE",
        "custody_record_id": "MP-2026-000123",
        "subject": {
            "pnc_id": "26/123456A",
            "given_names": "Alex Jordan",
            "family_name": "Testperson",
            "date_of_birth": date(1990, 2, 14),
            "nhs_number": NHS_A,
            "address": (
                {"line1": "1 Synthetic Street", "town": "Exampleton", "postcode": "ZZ99 9ZZ"} if with_address else None
            ),
        },
        "offence_codes": ["TH68001", "CJ03507"],
        "outcome": "CHARGED",
    }


def referral_record() -> dict[str, Any]:
    return {
        "envelope": envelope("camden-council"),
        "referral_id": "REF-000042",
        "referrer": {"agency": "camden-school-7", "role": "DESIGNATED_SAFEGUARDING_LEAD"},
        "subject": {
            "subject_kind": "CHILD",
            "local_id": "SCH-7-0099",
            "nhs_number": NHS_B,
            "given_names": "Sam",
            "family_name": "Exampleson",
            "date_of_birth": date(2015, 9, 3),
            "address": None,
            "interpreter_language": None,  # referral v2's optional field: decoding fills its default
        },
        "concern_categories": ["NEGLECT", "DOMESTIC_ABUSE"],
        "urgency": "URGENT",
        "narrative": "Synthetic narrative: attendance dropped sharply after the half-term break.",
    }


def natal_care_record() -> dict[str, Any]:
    return {
        "envelope": envelope("salford-royal"),
        "event_kind": "BIRTH",
        "trust_ods_code": "RM3",
        "mother": {
            "nhs_number": NHS_A,
            "given_names": "Jo",
            "family_name": "Placeholder",
            "date_of_birth": date(1994, 6, 30),
            "address": {"line1": "2 Fictional Road", "town": "Salford", "postcode": "ZZ1 1ZZ"},
        },
        "baby": {"nhs_number": NHS_B, "date_of_birth": date(2026, 4, 30), "sex": "F"},
        "gestation_weeks": 39,
        "health_visitor_handover": {
            "team": "Salford HV East",
            "handover_date": date(2026, 5, 10),
            "notes": "Synthetic handover note.",
        },
    }


RECORDS = {"custody": custody_record, "referral": referral_record, "natal_care": natal_care_record}


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue.default()


def test_synthetic_nhs_numbers_pass_modulus_11() -> None:
    assert nhs_valid(NHS_A) and nhs_valid(NHS_B)
    assert not nhs_valid("9434765918")  # one digit off must fail, or the check proves nothing


# --------------------------------------------------------------------------- fingerprint and header


def test_crc64_avro_of_int_matches_the_java_reference() -> None:
    # SchemaNormalization.parsingFingerprint64("int") == 8247732601305521295 (signed long).
    value = crc64_avro(b'"int"')
    assert value == 8247732601305521295
    assert struct.unpack("<q", fingerprint("int"))[0] == 8247732601305521295


def test_crc64_avro_empty_input_is_the_seed() -> None:
    assert crc64_avro(b"") == 0xC15D213AA4D7A795


def test_fingerprint_is_little_endian_and_agrees_with_fastavro_hex() -> None:
    fp = fingerprint("int")
    assert fp == struct.pack("<Q", 0x7275D51A3F395C8F)
    assert fp.hex() == "8f5c393f1ad57572"
    # fastavro's hex string is already the little-endian byte sequence: int(hex, 16) would be wrong.
    assert fp == bytes.fromhex(fastavro_fingerprint(to_parsing_canonical_form("int"), "CRC-64-AVRO"))
    assert fp != struct.pack(">Q", 0x7275D51A3F395C8F)


@pytest.mark.parametrize("name", ["custody", "referral", "natal_care", "disclosure"])
def test_schema_fingerprints_agree_with_fastavro(name: str) -> None:
    schema = load_schema(name)
    expected = bytes.fromhex(fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
    assert fingerprint(schema) == expected


def test_encoded_header_is_magic_then_fingerprint(catalogue: Catalogue) -> None:
    data = catalogue.encode("custody", custody_record())
    assert data[:2] == b"\xc3\x01"
    assert data[2:10] == fingerprint(catalogue.schema("custody"))
    # The body is plain Avro binary: fastavro reads it back without our header.
    from io import BytesIO

    body = fastavro.schemaless_reader(BytesIO(data[10:]), catalogue.schema("custody"))
    assert isinstance(body, dict)
    assert body["custody_record_id"] == "MP-2026-000123"


def test_default_catalogue_has_every_schema_with_distinct_fingerprints(catalogue: Catalogue) -> None:
    assert set(catalogue.names()) == {"custody", "referral", "natal_care", "disclosure", "retraction", "consent_change"}
    fps = {fingerprint(catalogue.schema(n)) for n in catalogue.names()}
    assert len(fps) == 6


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip(catalogue: Catalogue, name: str) -> None:
    record = RECORDS[name]()
    decoded_name, decoded = catalogue.decode(catalogue.encode(name, record))
    assert decoded_name == name
    assert decoded == record
    assert decoded["envelope"]["occurred_at"].tzinfo is not None


def test_round_trip_with_null_sub_record(catalogue: Catalogue) -> None:
    record = custody_record(with_address=False)
    assert catalogue.decode(catalogue.encode("custody", record))[1]["subject"]["address"] is None


def test_missing_optional_field_is_filled_with_its_default(catalogue: Catalogue) -> None:
    record = custody_record()
    del record["outcome"]
    assert catalogue.decode(catalogue.encode("custody", record))[1]["outcome"] is None


def test_timestamp_in_another_offset_is_the_same_instant(catalogue: Catalogue) -> None:
    record = custody_record()
    local = record["envelope"]["occurred_at"].astimezone(timezone(timedelta(hours=1)))
    record["envelope"]["occurred_at"] = local
    decoded = catalogue.decode(catalogue.encode("custody", record))[1]
    assert decoded["envelope"]["occurred_at"] == local
    assert decoded["envelope"]["occurred_at"].utcoffset() == timedelta(0)


def test_encode_does_not_mutate_the_record(catalogue: Catalogue) -> None:
    record = custody_record()
    before = copy.deepcopy(record)
    catalogue.encode("custody", record)
    assert record == before


# --------------------------------------------------------------------------- refusals on decode


def test_unknown_fingerprint(catalogue: Catalogue) -> None:
    data = b"\xc3\x01" + bytes.fromhex("0102030405060708") + b"\x00"
    with pytest.raises(UnknownFingerprint, match="0102030405060708"):
        catalogue.decode(data)


def test_source_event_is_unknown_to_a_catalogue_without_its_schema() -> None:
    data = Catalogue.default().encode("custody", custody_record())
    other = Catalogue()
    other.register("referral", load_schema("referral"))
    with pytest.raises(UnknownFingerprint):
        other.decode(data)


def test_wrong_magic(catalogue: Catalogue) -> None:
    data = bytearray(catalogue.encode("custody", custody_record()))
    data[0] = 0x7B  # '{': JSON where Avro was expected
    with pytest.raises(NotSingleObject, match="magic"):
        catalogue.decode(bytes(data))


@pytest.mark.parametrize("size", [1, 2, 9])
def test_too_short(catalogue: Catalogue, size: int) -> None:
    with pytest.raises(NotSingleObject, match="too short"):
        catalogue.decode(b"\xc3\x01\x00\x00\x00\x00\x00\x00\x00"[:size])


def test_truncated_body(catalogue: Catalogue) -> None:
    data = catalogue.encode("custody", custody_record())
    with pytest.raises(BodyMismatch, match="custody"):
        catalogue.decode(data[:-5])


def test_header_only(catalogue: Catalogue) -> None:
    data = catalogue.encode("custody", custody_record())
    with pytest.raises(BodyMismatch):
        catalogue.decode(data[:10])


def test_trailing_bytes(catalogue: Catalogue) -> None:
    data = catalogue.encode("custody", custody_record())
    with pytest.raises(BodyMismatch, match="trailing"):
        catalogue.decode(data + b"\x00")


def test_body_of_another_schema_is_refused(catalogue: Catalogue) -> None:
    custody = catalogue.encode("custody", custody_record())
    referral = catalogue.encode("referral", referral_record())
    forged = referral[:10] + custody[10:]
    with pytest.raises(BodyMismatch, match="referral"):
        catalogue.decode(forged)


def test_all_refusals_are_serde_errors_and_value_errors() -> None:
    for cls in (NotSingleObject, UnknownFingerprint, BodyMismatch, InvalidRecord):
        assert issubclass(cls, SerdeError) and issubclass(cls, ValueError)


# --------------------------------------------------------------------------- malformed bodies, built byte by byte


def zz(n: int) -> bytes:
    """Avro's zig-zag varint, written here independently of fastavro."""
    n = (n << 1) ^ (n >> 63) if n >= 0 or n >= -(2**63) else n
    n &= (1 << 64) - 1 if n < 0 else (1 << 70) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            return bytes(out + bytes([low]))
        out.append(low | 0x80)


def st(text: bytes | str) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return zz(len(raw)) + raw


UTC_MS_2026 = 1_777_629_600_123  # 2026-05-01T10:00:00.123Z


def custody_body(
    *,
    event_id: bytes = st("6f1c2b9e-3d4a-4c5b-8e7f-0a1b2c3d4e5f"),
    occurred: bytes = zz(UTC_MS_2026),
    kind: bytes = zz(2),
    family: bytes = st("Testperson"),
    dob: bytes = zz(7349),
    nhs: bytes = zz(1) + st(NHS_A),
    offences: bytes = zz(2) + st("TH68001") + st("CJ03507") + zz(0),
) -> bytes:
    """custody.avsc's fields in order; each argument replaces one field's bytes."""
    envelope = event_id + occurred + zz(UTC_MS_2026 + 269_877) + st("met-police") + st("custody-suite")
    subject = st("26/123456A") + st("Alex Jordan") + family + dob + nhs
    subject += zz(1) + st("1 Synthetic Street") + st("Exampleton") + st("ZZ99 9ZZ")
    return envelope + kind + st("MP-2026-000123") + subject + offences + zz(1) + st("CHARGED")


def framed(catalogue: Catalogue, body: bytes) -> bytes:
    return b"\xc3\x01" + catalogue.fingerprint_of("custody") + body


def body_problem(catalogue: Catalogue, body: bytes) -> BodyMismatch:
    with pytest.raises(BodyMismatch) as info:
        catalogue.decode(framed(catalogue, body))
    return info.value


def test_the_hand_built_body_is_what_the_serde_writes(catalogue: Catalogue) -> None:
    assert framed(catalogue, custody_body()) == catalogue.encode("custody", custody_record())
    assert catalogue.decode(framed(catalogue, custody_body()))[1] == custody_record()


@pytest.mark.parametrize("value", [None, "c301", 7, [0xC3, 0x01]])
def test_a_value_that_is_not_bytes_is_refused(catalogue: Catalogue, value: Any) -> None:
    with pytest.raises(NotSingleObject, match=r"^empty message value \(null\)|^expected bytes"):
        catalogue.decode(value)


def test_empty_value(catalogue: Catalogue) -> None:
    with pytest.raises(NotSingleObject, match=r"^empty message"):
        catalogue.decode(b"")


def test_bytearray_and_memoryview_decode(catalogue: Catalogue) -> None:
    data = catalogue.encode("custody", custody_record())
    # decode() is typed for bytes; the point here is that it takes the other buffers too.
    assert (
        catalogue.decode(bytearray(data))  # type: ignore[arg-type]
        == catalogue.decode(memoryview(data))  # type: ignore[arg-type]
        == ("custody", custody_record())
    )


@pytest.mark.parametrize("seed", range(20))
def test_random_bytes_are_refused_with_a_serde_error(catalogue: Catalogue, seed: int) -> None:
    import random

    data = random.Random(seed).randbytes(1 + seed * 13)
    with pytest.raises(SerdeError):
        catalogue.decode(data)


def test_confluent_schema_registry_framing_is_named(catalogue: Catalogue) -> None:
    data = b"\x00" + struct.pack(">I", 42) + custody_body()
    with pytest.raises(NotSingleObject) as info:
        catalogue.decode(data)
    assert str(info.value).startswith(
        "Confluent Schema Registry framing, not Avro single-object encoding (magic byte 00 and schema id 42 "
    )


def test_every_truncation_is_refused(catalogue: Catalogue) -> None:
    data = framed(catalogue, custody_body())
    for cut in range(10, len(data)):
        with pytest.raises(BodyMismatch):
            catalogue.decode(data[:cut])


def test_truncated_inside_a_string_names_the_field(catalogue: Catalogue) -> None:
    body = custody_body()
    start = body.index(b"MP-2026")
    problem = body_problem(catalogue, body[: start + 3])
    assert problem.field == "custody_record_id"
    assert problem.problem == "string declares 14 bytes but only 3 remain (truncated or corrupt)"
    assert str(problem) == f"body does not decode as custody: custody_record_id: {problem.problem}"


def test_truncated_inside_a_number(catalogue: Catalogue) -> None:
    body = custody_body()
    cut = body.index(zz(UTC_MS_2026)) + 2
    assert body_problem(catalogue, body[:cut]).problem == "the body ends inside a number (truncated)"


def test_trailing_bytes_are_counted(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body() + b"\x00\x00\x00")
    assert (problem.field, problem.problem) == ("(record)", "3 trailing bytes")


@pytest.mark.parametrize("index", [4, 63, -1, -4, 2**40])
def test_enum_index_out_of_range(catalogue: Catalogue, index: int) -> None:
    """-1 matters most: fastavro alone reads it as the last symbol (RELEASE)."""
    problem = body_problem(catalogue, custody_body(kind=zz(index)))
    assert problem.field == "event_kind"
    assert problem.problem == f"enum index {index} out of range: CustodyEventKind has 4 symbols"


@pytest.mark.parametrize("index", [2, -1, -2])
def test_union_index_out_of_range(catalogue: Catalogue, index: int) -> None:
    problem = body_problem(catalogue, custody_body(nhs=zz(index) + st(NHS_A)))
    assert (problem.field, problem.problem) == ("subject.nhs_number", f"union branch index {index} out of range (0-1)")


def test_invalid_utf8_names_the_field_and_not_the_text(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body(family=st(b"Smi\xff\xfeth")))
    assert (problem.field, problem.problem) == ("subject.family_name", "string is not valid UTF-8 (byte 4 of 7)")
    assert "Smi" not in str(problem)


def test_an_encoded_surrogate_is_not_utf8(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body(family=st(b"\xed\xa0\x80")))
    assert problem.field == "subject.family_name" and "UTF-8" in problem.problem


@pytest.mark.parametrize("ms", [2**62, -(2**62), 253_402_300_800_000, -62_135_596_800_001])
def test_timestamp_overflowing_datetime(catalogue: Catalogue, ms: int) -> None:
    problem = body_problem(catalogue, custody_body(occurred=zz(ms)))
    assert (problem.field, problem.problem) == (
        "envelope.occurred_at",
        f"timestamp-millis {ms} is outside the years 1-9999",
    )


def test_timestamps_at_the_ends_of_datetime_decode(catalogue: Catalogue) -> None:
    for ms, expected in (
        (253_402_300_799_999, datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)),
        (-62_135_596_800_000, datetime(1, 1, 1, tzinfo=UTC)),
    ):
        record = catalogue.decode(framed(catalogue, custody_body(occurred=zz(ms))))[1]
        assert record["envelope"]["occurred_at"] == expected


@pytest.mark.parametrize("days", [2_932_897, -719_163, 2**31 - 1])
def test_date_overflowing_date(catalogue: Catalogue, days: int) -> None:
    problem = body_problem(catalogue, custody_body(dob=zz(days)))
    assert (problem.field, problem.problem) == (
        "subject.date_of_birth",
        f"date {days} days from 1970 is outside the years 1-9999",
    )


def test_int_beyond_32_bits(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body(dob=zz(2**40)))
    assert (problem.field, problem.problem) == ("subject.date_of_birth", f"{2**40} does not fit a 32-bit int")


@pytest.mark.parametrize("length", [-1, -5, -(2**40)])
def test_negative_length(catalogue: Catalogue, length: int) -> None:
    problem = body_problem(catalogue, custody_body(event_id=zz(length) + b"6f1c2b9e"))
    assert (problem.field, problem.problem) == ("envelope.event_id", f"negative string length {length}")


def test_huge_declared_length_allocates_nothing_big(catalogue: Catalogue) -> None:
    import tracemalloc

    body = custody_body(event_id=zz(2**40) + b"6f1c2b9e")
    tracemalloc.start()
    try:
        problem = body_problem(catalogue, body)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert problem.field == "envelope.event_id"
    assert problem.problem.startswith(f"string declares {2**40} bytes but only ")
    assert peak < 1_000_000


@pytest.mark.parametrize("count", [2**40, -(2**40), 300])
def test_huge_declared_item_count(catalogue: Catalogue, count: int) -> None:
    offences = zz(count) + (zz(8) if count < 0 else b"") + st("TH68001")
    problem = body_problem(catalogue, custody_body(offences=offences))
    assert problem.field == "offence_codes"
    assert "items but only" in problem.problem or "block declares" in problem.problem


def test_number_over_ten_bytes(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body(kind=b"\xff" * 11))
    assert (problem.field, problem.problem) == ("event_kind", "a variable-length number runs over 10 bytes")


def test_number_over_64_bits(catalogue: Catalogue) -> None:
    problem = body_problem(catalogue, custody_body(occurred=b"\xff" * 9 + b"\x7f"))
    assert (problem.field, problem.problem) == ("envelope.occurred_at", "a number does not fit 64 bits")


@pytest.mark.parametrize(
    ("change", "field", "needle"),
    [
        ({"kind": b"\x84\x00"}, "event_kind", "more bytes than it needs"),
        ({"offences": zz(1) + st("TH68001") + zz(1) + st("CJ03507") + zz(0)}, "offence_codes", "more than one block"),
        ({"offences": zz(-2) + zz(16) + st("TH68001") + st("CJ03507") + zz(0)}, "offence_codes", "negative count"),
    ],
)
def test_readable_but_not_canonical_encodings_are_refused(
    catalogue: Catalogue, change: dict[str, bytes], field: str, needle: str
) -> None:
    """One record, one byte string: the ledger's digest of an event's bytes then identifies its content."""
    problem = body_problem(catalogue, custody_body(**change))
    assert problem.field == field and needle in problem.problem and "not the canonical encoding" in problem.problem


def test_boolean_byte_other_than_0_or_1() -> None:
    catalogue = Catalogue()
    catalogue.register("flag", {"type": "record", "name": "Flag", "fields": [{"name": "on", "type": "boolean"}]})
    header = b"\xc3\x01" + catalogue.fingerprint_of("flag")
    assert catalogue.decode(header + b"\x01") == ("flag", {"on": True})
    with pytest.raises(BodyMismatch) as info:
        catalogue.decode(header + b"\x07")
    assert (info.value.field, info.value.problem) == ("on", "boolean byte 7 is neither 0 nor 1")


def test_encode_refuses_what_could_not_be_read_back(catalogue: Catalogue) -> None:
    late = custody_record()
    late["envelope"]["occurred_at"] = datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-1)))
    with pytest.raises(InvalidRecord) as info:
        catalogue.encode("custody", late)
    assert info.value.field == "envelope.occurred_at" and "years 1-9999" in info.value.problem


@pytest.mark.parametrize("validated", [False, True])
def test_encode_of_a_record_that_breaks_the_schema_raises_a_serde_error(catalogue: Catalogue, validated: bool) -> None:
    changes: list[dict[str, Any]] = [{"outcome": 1.5}, {"subject": None}]
    if not validated:  # fastavro alone writes a string as an array of its characters: only validation catches it
        changes.append({"offence_codes": "TH68001"})
    for change in changes:
        with pytest.raises(SerdeError):
            catalogue.encode("custody", {**custody_record(), **change}, validated=validated)
    surrogate = custody_record()
    surrogate["subject"]["family_name"] = "\ud800"
    with pytest.raises(SerdeError, match="cannot encode"):
        catalogue.encode("custody", surrogate, validated=validated)


# --------------------------------------------------------------------------- validation


def _invalid(catalogue: Catalogue, name: str, record: dict[str, Any]) -> InvalidRecord:
    with pytest.raises(InvalidRecord) as info:
        catalogue.encode(name, record)
    return info.value


def test_wrong_type_deep_inside(catalogue: Catalogue) -> None:
    record = custody_record()
    record["subject"]["date_of_birth"] = "abc"
    exc = _invalid(catalogue, "custody", record)
    assert exc.field == "subject.date_of_birth"
    assert str(exc) == "subject.date_of_birth: expected date, got a string of 3 characters"


def test_wrong_type_inside_nullable_record(catalogue: Catalogue) -> None:
    record = custody_record()
    record["subject"]["address"]["postcode"] = 12
    assert _invalid(catalogue, "custody", record).field == "subject.address.postcode"


def test_wrong_type_in_array(catalogue: Catalogue) -> None:
    record = custody_record()
    record["offence_codes"] = ["TH68001", 7]
    assert _invalid(catalogue, "custody", record).field == "offence_codes[1]"


def test_missing_required_field(catalogue: Catalogue) -> None:
    record = custody_record()
    del record["envelope"]["source_system"]
    exc = _invalid(catalogue, "custody", record)
    assert exc.field == "envelope.source_system"
    assert "missing" in exc.problem


def test_null_in_a_required_field(catalogue: Catalogue) -> None:
    record = referral_record()
    record["subject"]["given_names"] = None
    assert _invalid(catalogue, "referral", record).field == "subject.given_names"


def test_unknown_key_is_refused(catalogue: Catalogue) -> None:
    record = custody_record()
    record["subject"]["shoe_size"] = 9
    exc = _invalid(catalogue, "custody", record)
    assert exc.field == "subject.shoe_size"
    assert "unknown" in exc.problem


def test_bad_enum_symbol(catalogue: Catalogue) -> None:
    record = referral_record()
    record["urgency"] = "WHENEVER"
    exc = _invalid(catalogue, "referral", record)
    assert exc.field == "urgency"
    assert "ROUTINE" in exc.problem and "WHENEVER" not in exc.problem  # values are never echoed


def test_naive_timestamp_is_refused(catalogue: Catalogue) -> None:
    record = custody_record()
    record["envelope"]["occurred_at"] = datetime(2026, 5, 1, 10, 0)
    assert _invalid(catalogue, "custody", record).field == "envelope.occurred_at"


def test_datetime_is_not_a_date(catalogue: Catalogue) -> None:
    record = natal_care_record()
    record["baby"]["date_of_birth"] = datetime(2026, 4, 30, tzinfo=UTC)
    assert _invalid(catalogue, "natal_care", record).field == "baby.date_of_birth"


def test_bool_is_not_an_int(catalogue: Catalogue) -> None:
    record = natal_care_record()
    record["gestation_weeks"] = True
    assert _invalid(catalogue, "natal_care", record).field == "gestation_weeks"


def test_int_out_of_range(catalogue: Catalogue) -> None:
    record = natal_care_record()
    record["gestation_weeks"] = 2**31
    assert _invalid(catalogue, "natal_care", record).field == "gestation_weeks"


def test_not_a_dict() -> None:
    with pytest.raises(InvalidRecord) as info:
        validate(load_schema("custody"), ["not", "a", "record"])
    assert info.value.field == "(record)"


def test_validate_accepts_a_good_record() -> None:
    validate(load_schema("natal_care"), natal_care_record())  # must not raise
    with pytest.raises(InvalidRecord):
        validate(load_schema("natal_care"), {**natal_care_record(), "extra": 1})


def test_disclosure_fixed_size() -> None:
    schema = load_schema("disclosure")
    record = {
        "seq": 1,
        "disclosure_id": "d",
        "event_id": "e",
        "event_type": "custody",
        "provider": "met-police",
        "recipient": "cps",
        "agreement_id": "custody-to-prosecution",
        "agreement_version": 1,
        "purpose": "p",
        "legal_basis": "b",
        "outcome": "DISCLOSED",
        "reason": None,
        "fields": ["event_kind"],
        "consent_mode": "not_required",
        "consent_version": 0,
        "subject_key": "k",
        "decided_at": datetime(2026, 5, 1, tzinfo=UTC),
        "prev_hash": b"\x00" * 32,
    }
    # Fields added to the ledger entry since this test was written get an empty value of their type.
    empty = {"string": "", "long": 0, "int": 0, "array": []}
    for f in schema["fields"]:
        kind = (
            f["type"] if isinstance(f["type"], str) else f["type"].get("type") if isinstance(f["type"], dict) else None
        )
        if f["name"] not in record and "default" not in f and kind in empty:
            record[f["name"]] = copy.copy(empty[kind])
    validate(schema, record)
    with pytest.raises(InvalidRecord) as info:
        validate(schema, {**record, "prev_hash": b"\x00" * 31})
    assert info.value.field == "prev_hash"


# --------------------------------------------------------------------------- register


def test_register_is_idempotent_and_refuses_conflicts() -> None:
    cat = Catalogue()
    fp = cat.register("custody", load_schema("custody"))
    assert cat.register("custody", load_schema("custody")) == fp
    with pytest.raises(SerdeError):
        cat.register("custody", load_schema("referral"))
    with pytest.raises(SerdeError):
        cat.register("custody-again", load_schema("custody"))


def test_load_unknown_schema() -> None:
    with pytest.raises(FileNotFoundError):
        load_schema("no_such_event")


# --------------------------------------------------------------------------- JSON


def test_from_json_then_encode(catalogue: Catalogue) -> None:
    schema = catalogue.schema("natal_care")
    data = to_json(natal_care_record())
    assert data["envelope"]["occurred_at"] == "2026-05-01T10:00:00.123Z"
    assert data["mother"]["date_of_birth"] == "1994-06-30"
    record = from_json(schema, data)
    assert record == natal_care_record()
    assert catalogue.decode(catalogue.encode("natal_care", record))[1] == natal_care_record()


def test_from_json_parses_z_and_offsets() -> None:
    schema = load_schema("custody")
    data = to_json(custody_record())
    data["envelope"]["occurred_at"] = "2026-05-01T10:00:00Z"
    data["envelope"]["recorded_at"] = "2026-05-01T11:00:00+01:00"
    record = from_json(schema, data)
    assert record["envelope"]["occurred_at"] == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert record["envelope"]["recorded_at"] == datetime(2026, 5, 1, 10, 0, tzinfo=UTC)
    assert record["subject"]["date_of_birth"] == date(1990, 2, 14)


def test_from_json_handles_null_unions() -> None:
    schema = load_schema("natal_care")
    data = to_json(natal_care_record())
    data["baby"] = None
    assert from_json(schema, data)["baby"] is None
    data["baby"] = {"nhs_number": None, "date_of_birth": "2026-04-30", "sex": None}
    assert from_json(schema, data)["baby"]["date_of_birth"] == date(2026, 4, 30)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("subject", "date_of_birth"), "14/02/1990"),
        (("envelope", "occurred_at"), "yesterday"),
        (("envelope", "occurred_at"), "2026-05-01T10:00:00"),  # no timezone
    ],
)
def test_from_json_bad_values_name_the_field(path: tuple[str, str], value: str) -> None:
    data = to_json(custody_record())
    data[path[0]][path[1]] = value
    with pytest.raises(InvalidRecord) as info:
        from_json(load_schema("custody"), data)
    assert info.value.field == ".".join(path)


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("subject", "date_of_birth"), "1990-02-30", "not a real date: its month or day is out of range"),
        (("subject", "date_of_birth"), "1990-13-01", "not a real date: its month or day is out of range"),
        (("subject", "date_of_birth"), "14/02/1990", "expected ISO date (YYYY-MM-DD), got a string of 10 characters"),
        (
            ("envelope", "occurred_at"),
            "2026-02-30T10:00:00Z",
            "not a real time: its month, day, hour, minute or second is out of range",
        ),
        (
            ("envelope", "occurred_at"),
            "2026-02-10T25:00:00Z",
            "not a real time: its month, day, hour, minute or second is out of range",
        ),
        (("envelope", "occurred_at"), "yesterday", "expected ISO-8601 timestamp, got a string of 9 characters"),
    ],
)
def test_an_impossible_date_is_told_from_a_badly_written_one(path: tuple[str, str], value: str, problem: str) -> None:
    data = to_json(custody_record())
    data[path[0]][path[1]] = value
    with pytest.raises(InvalidRecord) as info:
        from_json(load_schema("custody"), data)
    assert (info.value.field, info.value.problem) == (".".join(path), problem)
    assert value not in str(info.value)  # a date of birth is personal data: never repeated


def test_from_json_leaves_other_values_for_validate() -> None:
    schema = load_schema("custody")
    data = to_json(custody_record())
    data["subject"]["date_of_birth"] = 19900214
    data["extra"] = "kept"
    record = from_json(schema, data)
    assert record["subject"]["date_of_birth"] == 19900214 and record["extra"] == "kept"
    with pytest.raises(InvalidRecord) as info:
        validate(schema, record)
    assert info.value.field == "subject.date_of_birth"


def test_to_json_bytes_and_naive_datetime() -> None:
    out = to_json({"h": b"\x01\xff", "t": datetime(2026, 1, 1), "xs": (date(2026, 1, 2),)})
    assert out == {"h": "01ff", "t": "2026-01-01T00:00:00.000Z", "xs": ["2026-01-02"]}
