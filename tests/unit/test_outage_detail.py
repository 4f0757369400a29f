"""What a wait's log line says went wrong: enough to act on, never a record's values (I6)."""

from __future__ import annotations

import psycopg
from confluent_kafka import KafkaError, KafkaException
from sqlalchemy.exc import DataError

from accord.processor.outage import Outage, outage_of, safe_detail

SECRET = "Jane Smith 943 476 5919"


def test_an_outage_says_its_own_words() -> None:
    exc = Outage("broker", "disclosures not delivered: PRODUCER_FENCED")
    assert safe_detail(exc) == "broker: disclosures not delivered: PRODUCER_FENCED"


def test_a_kafka_error_is_its_codes_name_not_its_text() -> None:
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT, f"broker said {SECRET}"))
    assert safe_detail(exc) == "KafkaException _TRANSPORT"


def test_a_database_error_is_its_sqlstate_not_the_value_it_quotes() -> None:
    orig = psycopg.errors.InvalidTextRepresentation(f'invalid input syntax for type integer: "{SECRET}"')
    exc = DataError("SELECT CAST(%(v)s AS integer)", {"v": SECRET}, orig)
    assert SECRET in str(exc)  # the driver's own text quotes the value
    assert safe_detail(exc) == "DataError SQLSTATE 22P02"
    assert outage_of(exc) is None  # and it is one record's fault, not an outage


def test_anything_else_is_its_class_name() -> None:
    assert safe_detail(ConnectionRefusedError(f"cannot reach {SECRET}")) == "ConnectionRefusedError"
