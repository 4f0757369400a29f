"""A refused setting is named by the variable a person sets, never by pydantic's location."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from accord.cli import _settings_problems
from bus.settings import Settings


def _refusal(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    return _settings_problems(refused.value)


def test_a_plain_setting_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _refusal(monkeypatch, ACCORD_BATCH_SIZE="0").startswith("ACCORD_BATCH_SIZE: ")


def test_a_kafka_property_is_named_as_the_variable_that_set_it(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _refusal(monkeypatch, ACCORD_KAFKA='{"sasl.password": 5}')
    assert line.startswith("ACCORD_KAFKA_SASL_PASSWORD: ") and "5" not in line


def test_a_key_inside_a_json_setting_is_named_with_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    line = _refusal(monkeypatch, ACCORD_TOPIC_PARTITIONS='{"custody": "many"}')
    assert line.startswith('ACCORD_TOPIC_PARTITIONS["custody"]: ') and "many" not in line
