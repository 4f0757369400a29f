"""Factories for confluent-kafka clients, so every client is configured the same way.

Producers are idempotent with ``acks=all`` (the flow, step 1: docs/architecture.md). Consumers never
auto-commit: callers commit after they have done their work, so nothing is lost.

Every client also gets the operator's librdkafka settings (``Settings.kafka``, from the
``ACCORD_KAFKA_*`` variables: TLS, SASL, timeouts, ...; docs/security.md) and the
``librdkafka`` logger, so librdkafka's own lines go through Python logging and come out
in ``ACCORD_LOG_FORMAT`` like every other line (bus/logs.py). A client's configuration is
built in three layers, later ones winning:

1. Accord's defaults for that kind of client;
2. the call site's overrides (a one-shot command's quieter log level, a reader's
   ``enable.partition.eof``);
3. the operator's ``ACCORD_KAFKA_*`` settings, minus :data:`OWNED`, which are refused.

Secrets (:func:`is_secret`) never reach a log line or an error message: :func:`redacted`
is the view to log, and :data:`LOGGER` drops any secret value librdkafka might print.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient

from bus.settings import KAFKA_ENV_PREFIX, Settings

__all__ = [
    "LOGGER",
    "OWNED",
    "KafkaSettingError",
    "Producing",
    "RenewingProducer",
    "admin",
    "check_settings",
    "consumer",
    "env_name",
    "is_secret",
    "operator_config",
    "producer",
    "redacted",
    "renewing_producer",
]

REDACTED = "[redacted]"

# The keys Accord sets itself, with the reason a person sees when an ACCORD_KAFKA_* variable
# tries to set one. Each is either an invariant of the flow (overriding it would silently lose
# or duplicate events, or break replay), or already has its own ACCORD_* setting (one place
# per setting), or is how Accord itself talks to the client (the logger, callbacks).
_OWN_SETTING = "it has its own setting: use {}"
OWNED: dict[str, str] = {
    "bootstrap.servers": _OWN_SETTING.format("ACCORD_BOOTSTRAP_SERVERS"),
    "metadata.broker.list": _OWN_SETTING.format("ACCORD_BOOTSTRAP_SERVERS"),
    "session.timeout.ms": _OWN_SETTING.format("ACCORD_SESSION_TIMEOUT_MS"),
    "heartbeat.interval.ms": _OWN_SETTING.format("ACCORD_HEARTBEAT_INTERVAL_MS"),
    "fetch.wait.max.ms": _OWN_SETTING.format("ACCORD_FETCH_WAIT_MAX_MS"),
    "group.id": "Accord names every consumer group itself (the processor's is ACCORD_PROCESSOR_GROUP)",
    "group.instance.id": "it would give every consumer of a process the same static member id, so they fence each other",
    "enable.idempotence": "producers are always idempotent, so a retry never duplicates a record",
    "acks": "producers always wait for every in-sync replica (acks=all), so an acknowledged record is not lost",
    "request.required.acks": "producers always wait for every in-sync replica (acks=all), so an acknowledged "
    "record is not lost",
    "transactional.id": "Accord does not use Kafka transactions (the ledger makes delivery exactly-once)",
    "enable.auto.commit": "consumers commit only after their work is done, so a crash loses nothing",
    "enable.auto.offset.store": "consumers commit only after their work is done, so a crash loses nothing",
    "auto.offset.reset": "a new consumer group reads from the earliest record, so a new partner misses nothing",
    "enable.partition.eof": "readers ask for the end of a partition only where they need it",
    "logger": "librdkafka's lines go through Accord's logging (ACCORD_LOG_FORMAT, ACCORD_LOG_LEVEL)",
    "log.queue": "librdkafka's lines go through Accord's logging (ACCORD_LOG_FORMAT, ACCORD_LOG_LEVEL)",
    **{
        cb: "a callback cannot be given as a setting"
        for cb in ("error_cb", "throttle_cb", "stats_cb", "oauth_cb", "on_delivery", "on_commit", "dr_cb", "dr_msg_cb")
    },
}

# librdkafka's own lines, as Python log records (confluent-kafka's ``logger`` setting). The
# logger has a filter that removes every secret value given to a client from each line.
LOGGER = logging.getLogger("librdkafka")

_SECRET_WORDS = ("password", "secret", "passphrase", "private.key", "key.pem", "token")
_SECRET_NAMES = frozenset({"ssl.key.pem", "ssl_key", "sasl.oauthbearer.config", "ssl.keystore.password"})


def is_secret(name: str) -> bool:
    """Whether a librdkafka property holds a secret: a password, a client secret, private key material.

    By name, so a property added by a later librdkafka is caught as long as its name says what it is
    (``sasl.password``, ``ssl.key.password``, ``sasl.oauthbearer.client.secret``, ``ssl.key.pem``, ...).
    ``sasl.oauthbearer.config`` is one too: it often carries a client secret.
    """
    lowered = name.lower()
    return lowered in _SECRET_NAMES or any(word in lowered for word in _SECRET_WORDS)


def redacted(config: Mapping[str, Any]) -> dict[str, str]:
    """A client configuration as it may be logged: secrets replaced, callables and the logger by their kind."""
    view: dict[str, str] = {}
    for key, value in config.items():
        if is_secret(key):
            view[key] = REDACTED
        elif isinstance(value, logging.Logger):
            view[key] = f"<logger {value.name}>"
        elif callable(value):
            view[key] = "<callback>"
        else:
            view[key] = str(value)
    return view


def env_name(prop: str) -> str:
    """The variable a person set for ``prop``: ``ssl.ca.location`` -> ``ACCORD_KAFKA_SSL_CA_LOCATION``.

    When the setting came from the ``ACCORD_KAFKA`` JSON object instead, it is named as a key of it.
    """
    var = KAFKA_ENV_PREFIX + prop.upper().replace(".", "_")
    if var not in os.environ and "ACCORD_KAFKA" in os.environ:
        return f'ACCORD_KAFKA["{prop}"]'
    return var


class KafkaSettingError(ValueError):
    """An ``ACCORD_KAFKA_*`` setting Accord or librdkafka refuses; the message names the variable, never a secret."""


_IGNORED_BY_KIND = re.compile(r"Configuration property (\S+) is a (consumer|producer) property and will be ignored")


class _SecretScrubber(logging.Filter):
    """Removes from every librdkafka line any secret value a client was given.

    librdkafka prints ``[redacted]`` for its sensitive properties already; this holds even if a
    later version, a debug context or an error message quotes one. It also turns librdkafka's
    warning that a consumer's property is ignored by a producer (and the other way round) into a
    debug line: every ``ACCORD_KAFKA_*`` setting goes to every kind of client, by design.
    """

    def __init__(self) -> None:
        super().__init__()
        self.secrets: frozenset[str] = frozenset()  # replaced, never changed in place: other threads read it

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            # Each part on its own, so the record keeps its shape (facility, client, text: bus/logs.py).
            if isinstance(record.args, tuple):
                record.args = tuple(scrub(a, self.secrets) if isinstance(a, str) else a for a in record.args)
            elif record.args:
                record.msg, record.args = scrub(record.getMessage(), self.secrets), None
            if isinstance(record.msg, str):
                record.msg = scrub(record.msg, self.secrets)
        if record.levelno == logging.WARNING and _IGNORED_BY_KIND.search(record.getMessage()):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return LOGGER.isEnabledFor(logging.DEBUG)
        return True


_SCRUBBER = _SecretScrubber()
LOGGER.addFilter(_SCRUBBER)


def scrub(text: str, secrets: set[str] | frozenset[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def operator_config(settings: Settings) -> dict[str, str]:
    """The operator's librdkafka settings, checked: an owned key or a missing file is refused, one line each.

    1. refuse any key of :data:`OWNED` (naming the variable and why), all at once;
    2. refuse a ``*.location`` file that does not exist (librdkafka's own message does not name it);
    3. remember the secret values, so no librdkafka line can print them.
    """
    given = {key.strip().lower(): str(value) for key, value in settings.kafka.items()}
    # 1.
    owned = [f"{env_name(key)}: {key} is not settable here ({OWNED[key]})" for key in sorted(given) if key in OWNED]
    if owned:
        raise KafkaSettingError("; ".join(owned))
    # 2.
    for key, value in sorted(given.items()):
        if key.endswith(".location") and value and value != "probe" and not Path(value).exists():
            raise KafkaSettingError(f"{env_name(key)}: {key} {value} does not exist; give the path of an existing file")
    # 3.
    new = {v for k, v in given.items() if is_secret(k) and v}
    if not new <= _SCRUBBER.secrets:
        _SCRUBBER.secrets = _SCRUBBER.secrets | new
    return given


_QUOTED_VALUE = re.compile(r'Invalid value "[^"]*"')
_NO_SUCH = re.compile(r'No such configuration property: "([^"]+)"')
_PROPERTY = re.compile(r'configuration property "([^"]+)"')
# librdkafka reports some properties under another name (its alias).
_ALIASES = {
    "queue.buffering.max.ms": "linger.ms",
    "sasl.mechanisms": "sasl.mechanism",
    "request.required.acks": "acks",
    "metadata.broker.list": "bootstrap.servers",
    "batch.num.messages": "batch.size",
}


def describe_refusal(exc: KafkaException, given: Mapping[str, str]) -> str:
    """One line for a configuration librdkafka refused: the ACCORD_KAFKA_* variable and the problem, no value."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    text = " ".join((err.str() if err is not None else str(exc)).split())
    text = scrub(_QUOTED_VALUE.sub("Invalid value", text), {v for k, v in given.items() if is_secret(k)})
    text = text.removeprefix("Failed to create producer: ").removeprefix("Failed to create consumer: ")
    hint = "see librdkafka's CONFIGURATION.md for its settings and their values"
    unknown = _NO_SUCH.search(text)
    if unknown:
        name = unknown.group(1)
        return f"{env_name(name)}: {name} is not a librdkafka setting; remove the variable or fix its name ({hint})"
    named = _PROPERTY.search(text)
    candidates = [named.group(1)] if named else [k for k in given if k in text]
    for name in candidates:
        for key in (name, _ALIASES.get(name, name)):
            if key in given:
                return f"{env_name(key)}: librdkafka refused {key}: {text}; {hint}"
    if given:
        names = ", ".join(env_name(k) for k in sorted(given))
        return f"the Kafka client settings were refused ({text}); check {names}"
    return f"the Kafka client configuration was refused: {text}"


Client = TypeVar("Client", Producer, Consumer, AdminClient)


def _make(make: Callable[[dict[str, Any]], Client], base: dict[str, Any], settings: Settings, overrides: Any) -> Client:
    given = operator_config(settings)
    config: dict[str, Any] = {**base, **overrides, **given, "logger": LOGGER}
    try:
        return make(config)
    except KafkaException as exc:
        err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
        if err is not None and err.code() == KafkaError._INVALID_ARG:
            raise KafkaSettingError(describe_refusal(exc, given)) from None
        raise


def producer(settings: Settings, **overrides: Any) -> Producer:
    base: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
    }
    return _make(Producer, base, settings, overrides)


DeliveryReport = Callable[[KafkaError | None, Message], None]
Headers = list[tuple[str, str | bytes | None]]


class Producing(Protocol):
    """What a sender needs of a producer: a plain one, or a :class:`RenewingProducer`."""

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryReport | None = None,
        headers: Headers | None = None,
    ) -> None: ...

    def poll(self, timeout: float = -1) -> int: ...

    def flush(self, timeout: float = -1) -> int: ...


# Answers after which this producer's records are refused for good, while a new producer's are taken:
# its producer id or epoch is no longer the broker's (PRODUCER_FENCED is what the embedded broker
# says to a producer that wrote to a topic deleted and created again), or librdkafka itself gave up.
_PRODUCER_LOST = frozenset(
    {KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.INVALID_PRODUCER_ID_MAPPING}
)


class RenewingProducer:
    """A producer for a process that runs for months: replaced by a new one when the broker fences it.

    An idempotent producer is one producer id to the broker. Once the broker stops
    accepting that id, every record it sends is refused, however long the sender waits;
    a new producer gets a new id and is taken at once. So:

    1. each refusal the broker sends back is looked at: a lost producer id, or a fatal
       error, marks this producer lost. With ``watch_reports`` each delivery report is
       looked at on its way to the caller's callback; without it (the event path, where
       that costs a closure per record) the sender hands over the refusals it collected,
       after its flush, with :func:`note_refusals`;
    2. the caller's flush still reports those records as not delivered, so it sends them
       again (the processor's ledger makes that a replay);
    3. the next ``produce()`` purges the lost producer and makes a new one, with the same
       configuration, before it sends.
    """

    def __init__(self, make: Callable[[], Producer], *, watch_reports: bool = True) -> None:
        self._make = make
        self._producer = make()
        self._lost = False
        self._watch = watch_reports
        self.renewals = 0

    def produce(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        on_delivery: DeliveryReport | None = None,
        headers: Headers | None = None,
    ) -> None:
        if self._lost:
            self._renew()
        if self._watch:
            on_delivery = self._watching(on_delivery)
        try:
            self._producer.produce(topic, value, key, on_delivery=on_delivery, headers=headers)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError):
                self.refused(err)
            raise

    @property
    def watches_reports(self) -> bool:
        return self._watch

    def refused(self, err: KafkaError) -> None:
        """The broker (or librdkafka) refused a record of this producer: is the producer lost?"""
        if err.fatal() or err.code() in _PRODUCER_LOST:
            self._lost = True

    def _watching(self, on_delivery: DeliveryReport | None) -> DeliveryReport:
        def report(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.refused(err)
            if on_delivery is not None:
                on_delivery(err, msg)

        return report

    def poll(self, timeout: float = -1) -> int:
        return self._producer.poll(timeout)

    def flush(self, timeout: float = -1) -> int:
        return self._producer.flush(timeout)

    def _renew(self) -> None:
        lost = self._producer
        lost.purge(blocking=False)  # whatever it still holds was refused; its senders send it again
        lost.poll(0)
        self._producer, self._lost = self._make(), False
        self.renewals += 1
        structlog.get_logger("accord.kafka").warning("producer_renewed", reason="the broker fenced the old one")


def note_refusals(producer: Producing, refusals: Iterable[KafkaError]) -> None:
    """Hand the refusals a sender collected to its producer, if it is a RenewingProducer that
    does not watch its reports; a plain producer has nothing to learn from them."""
    if isinstance(producer, RenewingProducer) and not producer.watches_reports:
        for err in refusals:
            producer.refused(err)


def renewing_producer(settings: Settings, *, watch_reports: bool = True, **overrides: Any) -> RenewingProducer:
    """:func:`producer`, made again whenever the broker fences it (for the processor's long-lived senders)."""
    return RenewingProducer(lambda: producer(settings, **overrides), watch_reports=watch_reports)


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    base: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group_id,
        # "latest" is unreliable on the embedded broker (docs/architecture.md) and wrong for a
        # new partner anyway: a new subscriber reads what was disclosed to it.
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
    }
    return _make(Consumer, base, settings, overrides)


def admin(settings: Settings, **overrides: Any) -> AdminClient:
    return _make(AdminClient, {"bootstrap.servers": settings.bootstrap_servers}, settings, overrides)


def check_settings(settings: Settings) -> None:
    """Refuse bad ``ACCORD_KAFKA_*`` settings at start, before anything waits for a service.

    Builds (and drops) a producer and a consumer with the operator's settings and no broker
    to contact, so an unknown property, a bad value or an unreadable certificate is one
    :class:`KafkaSettingError` line now rather than when the first client is made.
    """
    quiet = {"bootstrap.servers": "", "log_level": 0, "logger": LOGGER}
    given = operator_config(settings)
    for make in (Producer, Consumer):
        try:
            make({"group.id": "accord-settings-check", **given, **quiet})
        except KafkaException as exc:
            raise KafkaSettingError(describe_refusal(exc, given)) from None
