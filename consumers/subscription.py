"""The partner SDK: subscribe to your own topics and get decoded disclosures.

A partner subscribes only to ``partner.<its id>.<type>`` topics: isolation comes
from what the processor writes where, not from broker ACLs (which the embedded
broker ignores). Records are decoded with the recipient schema the agreement
defines, so a partner never needs the source schema.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from agreements.model import Agreement
from agreements.recipient_schemas import recipient_catalogue
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames
from consumers.receipts import ReceiptSender
from schemas.errors import SerdeError, UnknownFingerprint


@dataclass(frozen=True)
class Disclosure:
    disclosure_id: str
    agreement: str
    event_type: str
    ledger_seq: int
    schema: str
    record: dict[str, Any]
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Retraction:
    """Stop using the data of an earlier disclosure: consent was withdrawn."""

    retraction_id: str
    retracts_disclosure_id: str
    event_id: str
    agreement: str
    reason: str
    since: Any
    fields: tuple[str, ...]
    ledger_seq: int
    topic: str
    partition: int
    offset: int


class UnknownAgreementVersion(UnknownFingerprint):
    """A disclosure under an agreement version the Subscription was not given.

    Each version's projection is a schema of its own, so the record cannot be decoded
    without that version's agreement: give the Subscription every version (one file each).
    """

    def __init__(self, fp: bytes, agreement: str, where: str) -> None:
        super().__init__(fp)
        self.agreement = agreement
        self.args = (
            f"{where}: a disclosure under agreement {agreement}, which the agreements given to this "
            "subscription do not include: add that version's file to them",
        )


class ForeignRecord(ValueError):
    """A record on a partner topic that the processor did not write as it stands.

    Someone else produced to the topic, or altered a record on the way: its value is
    not a record of the agreements' schemas, or Accord's headers are missing or not
    UTF-8. It is no disclosure (the ledger records none for it), so the Subscription
    moves past it: the next poll reads the record after it. The message names the
    record by topic, partition and offset, and never quotes its content.
    """

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where}: not a record Accord's processor wrote ({what}); skipped")
        self.where = where


def partner_topics(names: TopicNames, partner: str, agreements: Iterable[Agreement]) -> list[str]:
    return sorted({names.partner(partner, t) for a in agreements if partner in a.recipients for t in a.event_types})


# How long a new Subscription waits for the broker's metadata before it gives up.
BROKER_TIMEOUT_S = 10.0


class Subscription:
    """A partner's consumer of its own topics.

    Made only when the broker answers: a broker that is down, or a wrong
    ``bootstrap_servers``, raises KafkaException within ``BROKER_TIMEOUT_S``
    instead of waiting for an assignment that never comes. ``client_config``
    adds librdkafka settings (the CLI uses it to keep librdkafka's own log lines
    off the terminal).
    """

    def __init__(
        self,
        settings: Settings,
        partner: str,
        agreements: Iterable[Agreement],
        group_id: str | None = None,
        client_config: Mapping[str, Any] | None = None,
    ):
        agreements = list(agreements)
        self.partner = partner
        self.topics = partner_topics(TopicNames(settings.topic_prefix), partner, agreements)
        if not self.topics:
            raise ValueError(f"no agreement names {partner!r} as a recipient")
        self.catalogue = recipient_catalogue(agreements)
        self._versions = {a.key for a in agreements}
        self.consumer = kafka.consumer(settings, group_id or f"accord-partner-{partner}", **(client_config or {}))
        try:
            self.consumer.list_topics(timeout=BROKER_TIMEOUT_S)  # raises when no broker answers
        except KafkaException:
            self.consumer.close()
            raise
        self.consumer.subscribe(self.topics)
        self._pending: Message | None = None
        self._settings = settings
        self._receipts: ReceiptSender | None = None

    def _decode(self, msg: Message) -> Disclosure | Retraction:
        """A consumed record as a Disclosure or Retraction.

        Raises UnknownAgreementVersion for a disclosure under a version this
        Subscription was not given, after seeking back to it: it is read again (and
        never committed past) until the Subscription has that version. Raises
        ForeignRecord for anything else it cannot read, which is passed over.
        """
        topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
        # A consumed record without an error has a topic, partition and offset.
        assert topic is not None and partition is not None and offset is not None
        where = f"{topic}[{partition}]@{offset}"
        headers = _text_headers(msg, where)
        if value is None:
            raise ForeignRecord(where, "it has no value")
        try:
            schema, record = self.catalogue.decode(value)
        except UnknownFingerprint as exc:
            agreement = headers.get(header.AGREEMENT)
            if agreement is None or agreement in self._versions:  # a version we have: the value is not its
                raise ForeignRecord(where, "its value is of no schema of the agreements given") from None
            self.consumer.seek(TopicPartition(topic, partition, offset))
            raise UnknownAgreementVersion(exc.fingerprint, agreement, where) from None
        except SerdeError as exc:
            raise ForeignRecord(where, f"its value is not one Avro record: {type(exc).__name__}") from None
        try:
            ledger_seq = int(headers[header.LEDGER_SEQ])
            if schema == "retraction":
                return Retraction(
                    retraction_id=record["retraction_id"],
                    retracts_disclosure_id=record["retracts_disclosure_id"],
                    event_id=record["event_id"],
                    agreement=record["agreement"],
                    reason=record["reason"],
                    since=record["since"],
                    fields=tuple(record["fields"]),
                    ledger_seq=ledger_seq,
                    topic=topic,
                    partition=partition,
                    offset=offset,
                )
            return Disclosure(
                disclosure_id=headers[header.DISCLOSURE_ID],
                agreement=headers[header.AGREEMENT],
                event_type=headers[header.EVENT_TYPE],
                ledger_seq=ledger_seq,
                schema=schema,
                record=record,
                topic=topic,
                partition=partition,
                offset=offset,
            )
        except KeyError as exc:
            raise ForeignRecord(where, f"it has no {exc.args[0]} header") from None
        except ValueError:
            raise ForeignRecord(where, f"its {header.LEDGER_SEQ} header is not a number") from None

    def poll(self, timeout: float = 1.0) -> Disclosure | Retraction | None:
        msg, self._pending = self._pending, None
        if msg is None:
            msg = self.consumer.poll(timeout)
        if msg is None:
            return None
        if msg.error():
            raise KafkaException(msg.error())
        return self._decode(msg)

    def wait_for_assignment(self, timeout: float = 30.0) -> None:
        """Block until the group has given this consumer its partitions.

        Joining a group takes a while (about half the session timeout on the
        embedded broker); an idle timeout must not count that time as idleness.
        """
        deadline = time.monotonic() + timeout
        while not self.consumer.assignment():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no partitions assigned to {self.partner} within {timeout:.0f}s")
            msg = self.consumer.poll(0.1)
            if msg is not None:
                self._pending = msg
                return

    def iter(
        self,
        max_records: int | None = None,
        idle_timeout: float = 10.0,
        on_foreign: Callable[[ForeignRecord], None] | None = None,
    ) -> Iterator[Disclosure | Retraction]:
        """Yield disclosures until ``max_records`` or ``idle_timeout`` seconds with nothing new.

        A record the processor did not write raises ForeignRecord, or, with
        ``on_foreign``, is handed to it and iteration goes on (it counts toward neither limit).
        """
        self.wait_for_assignment()
        count = 0
        while max_records is None or count < max_records:
            try:
                disclosure = self.poll(idle_timeout)
            except ForeignRecord as exc:
                if on_foreign is None:
                    raise
                on_foreign(exc)
                continue
            if disclosure is None:
                return
            count += 1
            yield disclosure

    def acknowledge(self, item: Disclosure | Retraction) -> None:
        """Send a receipt: your code has handled ``item``. The ledger records it against
        the disclosure (or retraction); sent again after a crash, it is recorded once."""
        if self._receipts is None:
            self._receipts = ReceiptSender(
                kafka.producer(self._settings),
                TopicNames(self._settings.topic_prefix).receipts,
                self.partner,
                self.catalogue,
            )
        self._receipts.send(item.retraction_id if isinstance(item, Retraction) else item.disclosure_id)

    def commit(self) -> None:
        """Commit what was read, after every receipt sent so far is on the broker
        (so a receipt is never lost behind a committed offset).

        Call it only after your code has handled everything read so far: a poll moves the
        position on, and a commit makes the group start there next time.
        """
        if self._receipts is not None:
            self._receipts.flush()
        # The position, not librdkafka's stored offsets: a record seeked back to (a version
        # not given) was handed out by poll() but not to the caller, and must be read again.
        positions = [tp for tp in self.consumer.position(self.consumer.assignment()) if tp.offset >= 0]
        if not positions:
            return  # nothing was read yet
        try:
            self.consumer.commit(offsets=positions, asynchronous=False)
        except KafkaException as exc:
            if exc.args and isinstance(exc.args[0], KafkaError) and exc.args[0].code() == KafkaError._NO_OFFSET:
                return  # nothing was read since the last commit: nothing to commit, not an error
            raise

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _text_headers(msg: Message, where: str) -> dict[str, str]:
    """A consumed record's Accord headers as text: the processor writes each one as UTF-8 bytes.

    Headers outside Accord's ``accord.`` names are left alone, whatever they hold
    (a broker or tracing tool may add its own).
    """
    headers = msg.headers() or []
    assert isinstance(headers, list)  # consumed records carry pairs; the dict form is for producing
    text: dict[str, str] = {}
    for key, value in headers:
        if not key.startswith(header.PREFIX):
            continue
        try:
            text[key] = value.decode() if isinstance(value, bytes) else (value or "")
        except UnicodeDecodeError:
            raise ForeignRecord(where, f"its {key} header is not UTF-8") from None
    return text
