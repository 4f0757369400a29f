"""ACCORD_KAFKA_* settings: merged into every client, owned keys refused, secrets never shown (no broker).

The merge is read from the configuration each factory hands to confluent-kafka (the
constructors replaced by a recorder); the refusals of unknown properties and bad values
come from real librdkafka, which checks a configuration before it contacts any broker.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest

from bus import kafka
from bus.kafka import LOGGER, OWNED, KafkaSettingError, is_secret, redacted
from bus.settings import Settings

SECRET = "Zx9-not-a-real-password-7Qw"
SASL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "PLAIN",
    "sasl.username": "accord",
    "sasl.password": SECRET,
}


class Recorder:
    """Stands in for a confluent-kafka constructor: keeps the configuration it was given."""

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        self.configs.append(dict(config))
        return config


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    for name in ("Producer", "Consumer", "AdminClient"):
        monkeypatch.setattr(kafka, name, recorder)
    return recorder


@pytest.fixture(autouse=True)
def _no_kafka_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for var in [v for v in os.environ if v.startswith("ACCORD_KAFKA")]:
        monkeypatch.delenv(var)


def _clients(settings: Settings) -> list[Any]:
    return [
        kafka.producer(settings),
        kafka.consumer(settings, "g1"),
        kafka.admin(settings),
    ]


def test_the_operator_settings_reach_every_kind_of_client(recorded: Recorder) -> None:
    settings = Settings(kafka={**SASL, "ssl.endpoint.identification.algorithm": "https"})
    _clients(settings)
    assert len(recorded.configs) == 3
    for config in recorded.configs:
        for key, value in SASL.items():
            assert config[key] == value
        assert config["ssl.endpoint.identification.algorithm"] == "https"
        assert config["logger"] is LOGGER
        assert config["bootstrap.servers"] == settings.bootstrap_servers
    producer, consumer, _admin = recorded.configs
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert consumer["group.id"] == "g1" and consumer["enable.auto.commit"] is False


def test_an_operator_setting_wins_over_a_call_sites_default_and_accords(recorded: Recorder) -> None:
    settings = Settings(kafka={"message.timeout.ms": "60000", "linger.ms": "20"})
    kafka.producer(settings, **{"message.timeout.ms": 10_000})
    [config] = recorded.configs
    assert config["message.timeout.ms"] == "60000" and config["linger.ms"] == "20"


def test_the_call_sites_own_overrides_stay_when_the_operator_says_nothing(recorded: Recorder) -> None:
    kafka.consumer(Settings(), "g", **{"enable.partition.eof": True, "fetch.wait.max.ms": 100})
    [config] = recorded.configs
    assert config["enable.partition.eof"] is True and config["fetch.wait.max.ms"] == 100


@pytest.mark.parametrize("key", sorted(OWNED))
def test_every_owned_key_is_refused_naming_its_variable(recorded: Recorder, key: str) -> None:
    with pytest.raises(KafkaSettingError) as refused:
        kafka.producer(Settings(kafka={key: "x"}))
    message = str(refused.value)
    assert message.startswith(f"ACCORD_KAFKA_{key.upper().replace('.', '_')}: {key} is not settable here (")
    assert OWNED[key] in message
    assert "\n" not in message
    assert recorded.configs == [], "a client was made with an owned key"


def test_owned_keys_with_their_own_setting_name_it() -> None:
    with pytest.raises(KafkaSettingError, match="use ACCORD_BOOTSTRAP_SERVERS"):
        kafka.admin(Settings(kafka={"bootstrap.servers": "elsewhere:9092"}))
    with pytest.raises(KafkaSettingError, match="use ACCORD_SESSION_TIMEOUT_MS"):
        kafka.consumer(Settings(kafka={"session.timeout.ms": "30000"}), "g")


def test_several_owned_keys_are_named_in_one_line() -> None:
    with pytest.raises(KafkaSettingError) as refused:
        kafka.consumer(Settings(kafka={"group.id": "x", "enable.auto.commit": "true", "acks": "1"}), "g")
    message = str(refused.value)
    for var in ("ACCORD_KAFKA_GROUP_ID", "ACCORD_KAFKA_ENABLE_AUTO_COMMIT", "ACCORD_KAFKA_ACKS"):
        assert var in message
    assert "\n" not in message


def test_a_setting_from_the_json_mapping_is_named_as_its_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCORD_KAFKA", '{"enable.idempotence": "false"}')
    settings = Settings()
    assert settings.kafka == {"enable.idempotence": "false"}
    with pytest.raises(KafkaSettingError, match=r'^ACCORD_KAFKA\["enable.idempotence"\]: '):
        kafka.producer(settings)


def test_an_env_variable_reaches_the_client_by_its_librdkafka_name(
    monkeypatch: pytest.MonkeyPatch, recorded: Recorder
) -> None:
    monkeypatch.setenv("ACCORD_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("ACCORD_KAFKA_SASL_PASSWORD", SECRET)
    kafka.consumer(Settings(), "g")
    [config] = recorded.configs
    assert config["security.protocol"] == "SASL_SSL" and config["sasl.password"] == SECRET


# Real librdkafka from here on: it refuses a configuration while building the client.


def test_an_unknown_property_is_one_line_naming_the_variable() -> None:
    for make in (lambda s: kafka.producer(s), lambda s: kafka.consumer(s, "g"), lambda s: kafka.admin(s)):
        with pytest.raises(KafkaSettingError) as refused:
            make(Settings(kafka={**SASL, "sasl.pasword": "typo"}))
        message = str(refused.value)
        assert message.startswith("ACCORD_KAFKA_SASL_PASWORD: sasl.pasword is not a librdkafka setting"), message
        assert SECRET not in message and "typo" not in message


def test_a_bad_value_names_the_variable_and_does_not_repeat_the_value() -> None:
    with pytest.raises(KafkaSettingError) as refused:
        kafka.producer(Settings(kafka={"security.protocol": "SASL_BOGUS"}))
    message = str(refused.value)
    assert message.startswith("ACCORD_KAFKA_SECURITY_PROTOCOL: librdkafka refused security.protocol"), message
    assert "SASL_BOGUS" not in message


def test_a_bad_value_under_an_alias_is_named_by_the_variable_given() -> None:
    # librdkafka reports linger.ms under its other name, queue.buffering.max.ms
    with pytest.raises(KafkaSettingError, match=r"^ACCORD_KAFKA_LINGER_MS: librdkafka refused linger.ms"):
        kafka.producer(Settings(kafka={"linger.ms": "soon"}))


def test_a_certificate_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-ca.pem"
    with pytest.raises(KafkaSettingError) as refused:
        kafka.consumer(Settings(kafka={"security.protocol": "SSL", "ssl.ca.location": str(missing)}), "g")
    assert str(refused.value) == (
        f"ACCORD_KAFKA_SSL_CA_LOCATION: ssl.ca.location {missing} does not exist; give the path of an existing file"
    )


def test_a_certificate_file_librdkafka_cannot_read_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(KafkaSettingError) as refused:
        kafka.producer(Settings(kafka={"security.protocol": "SSL", "ssl.ca.location": str(garbage)}))
    assert str(refused.value).startswith("ACCORD_KAFKA_SSL_CA_LOCATION: librdkafka refused ssl.ca.location"), str(
        refused.value
    )


def test_check_settings_refuses_at_start_and_accepts_a_good_configuration() -> None:
    kafka.check_settings(Settings(kafka={**SASL, "security.protocol": "SASL_PLAINTEXT"}))
    with pytest.raises(KafkaSettingError, match="ACCORD_KAFKA_NO_SUCH_THING"):
        kafka.check_settings(Settings(kafka={"no.such.thing": "1"}))
    with pytest.raises(KafkaSettingError, match="ACCORD_KAFKA_GROUP_ID"):
        kafka.check_settings(Settings(kafka={"group.id": "mine"}))


@pytest.mark.parametrize(
    "name",
    [
        "sasl.password",
        "ssl.key.password",
        "ssl.keystore.password",
        "sasl.oauthbearer.client.secret",
        "ssl.key.pem",
        "ssl_key",
        "sasl.oauthbearer.config",
        "sasl.oauthbearer.assertion.private.key.pem",
        "sasl.oauthbearer.assertion.private.key.passphrase",
    ],
)
def test_secrets_are_known_by_name(name: str) -> None:
    assert is_secret(name)


@pytest.mark.parametrize(
    "name", ["security.protocol", "sasl.username", "ssl.ca.location", "ssl.key.location", "sasl.mechanism"]
)
def test_settings_that_are_not_secrets(name: str) -> None:
    assert not is_secret(name)


def test_the_redacted_view_hides_secrets_and_names_objects() -> None:
    view = redacted({**SASL, "ssl.key.pem": "-----BEGIN PRIVATE KEY-----", "logger": LOGGER, "error_cb": print})
    assert SECRET not in str(view) and "BEGIN PRIVATE KEY" not in str(view)
    assert view["sasl.password"] == "[redacted]" and view["ssl.key.pem"] == "[redacted]"
    assert view["sasl.username"] == "accord" and view["security.protocol"] == "SASL_SSL"
    assert view["logger"] == "<logger librdkafka>" and view["error_cb"] == "<callback>"


def _librdkafka_lines(emit: Any) -> str:
    """What the librdkafka logger passes on while ``emit`` runs."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    LOGGER.addHandler(handler)
    old_level, old_propagate = LOGGER.level, LOGGER.propagate
    LOGGER.setLevel(logging.INFO)
    LOGGER.propagate = False
    try:
        emit()
    finally:
        LOGGER.removeHandler(handler)
        LOGGER.setLevel(old_level)
        LOGGER.propagate = old_propagate
    return out.getvalue()


def test_a_secret_a_client_was_given_never_passes_the_librdkafka_logger(recorded: Recorder) -> None:
    kafka.producer(Settings(kafka=SASL))  # the factory learns the secret
    text = _librdkafka_lines(
        lambda: LOGGER.error("%s [%s] %s", "FAIL", "rdkafka#producer-1", f"[thrd:main]: auth with {SECRET} failed")
    )
    assert SECRET not in text and "auth with [redacted] failed" in text
    record = logging.LogRecord("librdkafka", logging.ERROR, "", 0, "%s [%s] %s", ("FAIL", "c", SECRET), None)
    assert LOGGER.filter(record) and record.args == ("FAIL", "c", "[redacted]"), "the record lost its parts"


def test_a_property_ignored_by_the_other_kind_of_client_is_not_a_warning() -> None:
    text = _librdkafka_lines(
        lambda: LOGGER.warning(
            "%s [%s] %s",
            "CONFWARN",
            "rdkafka#producer-1",
            "[thrd:app]: Configuration property max.poll.interval.ms is a consumer property and will be "
            "ignored by this producer instance",
        )
    )
    assert text == ""
    other = _librdkafka_lines(lambda: LOGGER.warning("%s [%s] %s", "CONFWARN", "rdkafka#producer-1", "other"))
    assert "other" in other
