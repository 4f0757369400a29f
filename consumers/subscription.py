"""The partner SDK: subscribe to your own topics and get decoded disclosures.

A partner subscribes only to ``partner.<its id>.<type>`` topics: isolation comes
from what the processor writes where, not from broker ACLs (which the embedded
broker ignores). Records are decoded with the recipient schema the agreement
defines, so a partner never needs the source schema.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from agreements.model import Agreement
from agreements.recipient_schemas import projection_name, recipient_catalogue
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames
from consumers.receipts import ReceiptSender
from schemas.errors import SerdeError, UnknownFingerprint
from schemas.validation import CANONICAL_UUID


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


_VERSION_KEY = re.compile(r"[a-z0-9][a-z0-9-]*@v[1-9][0-9]{0,9}")  # an agreement version's key, as the header gives it

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
        names = TopicNames(settings.topic_prefix)
        self.topics = partner_topics(names, partner, agreements)
        if not self.topics:
            raise ValueError(f"no agreement names {partner!r} as a recipient")
        self.catalogue = recipient_catalogue(agreements)
        mine = [a for a in agreements if partner in a.recipients]
        # Each projection made for this partner: (the agreement version, the event type, the topic it comes on).
        self._projections = {
            projection_name(a, t): (a.key, t, names.partner(partner, t)) for a in mine for t in a.fields
        }
        self._versions = {a.key for a in mine}
        self._topic_of = {t: names.partner(partner, t) for a in mine for t in a.event_types}
        self._ids = {a.id for a in mine}
        self._next: dict[tuple[str, int], int] = {}  # per partition, the offset a commit may move the group to
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
        """A consumed record as a Disclosure or Retraction, if the processor wrote it for this partner.

        Raises UnknownAgreementVersion for a disclosure under a version of an agreement
        this Subscription was not given, after seeking back to it: it is read again (and
        never committed past) until the Subscription has that version. Only a record
        with all of a disclosure's headers can hold the Subscription so. Raises
        ForeignRecord for anything else it cannot take as this partner's: a value of
        no schema made for this partner (another partner's projection, a source event),
        headers that disagree with the value, a header missing or not UTF-8. That is
        passed over.
        """
        topic, partition, offset, value = msg.topic(), msg.partition(), msg.offset(), msg.value()
        # A consumed record without an error has a topic, partition and offset.
        assert topic is not None and partition is not None and offset is not None
        where = f"{topic}[{partition}]@{offset}"
        headers = _text_headers(msg, where)
        if value is None:
            raise ForeignRecord(where, "it has no value")
        try:
            seq, disclosure_id, agreement = (
                headers[h] for h in (header.LEDGER_SEQ, header.DISCLOSURE_ID, header.AGREEMENT)
            )
        except KeyError as exc:
            raise ForeignRecord(where, f"it has no {exc.args[0]} header") from None
        if not (seq.isascii() and seq.isdigit() and len(seq) <= 19 and int(seq) >= 1):
            raise ForeignRecord(where, f"its {header.LEDGER_SEQ} header is not a ledger seq (a whole number from 1)")
        if not CANONICAL_UUID.fullmatch(disclosure_id):
            raise ForeignRecord(where, f"its {header.DISCLOSURE_ID} header is not a disclosure id (a UUID)")
        ledger_seq = int(seq)
        try:
            schema, record = self.catalogue.decode(value)
        except UnknownFingerprint as exc:
            event_type = headers.get(header.EVENT_TYPE)
            on_its_topic = event_type is not None and self._topic_of.get(event_type) == topic
            if on_its_topic and _VERSION_KEY.fullmatch(agreement) and agreement not in self._versions:
                self.consumer.seek(TopicPartition(topic, partition, offset))
                raise UnknownAgreementVersion(exc.fingerprint, agreement, where) from None
            raise ForeignRecord(where, "its value is of no schema of the agreements given") from None
        except SerdeError as exc:
            raise ForeignRecord(where, f"its value is not one Avro record: {type(exc).__name__}") from None
        if schema == "retraction":
            if record["agreement"].split("@v")[0] not in self._ids or disclosure_id != record["retraction_id"]:
                raise ForeignRecord(where, "a retraction notice not made for this partner")
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
        made_for = self._projections.get(schema)
        event_type = headers.get(header.EVENT_TYPE)
        if made_for is None or made_for != (agreement, event_type, topic):
            raise ForeignRecord(where, "its value is not a disclosure made for this partner under the agreement named")
        return Disclosure(
            disclosure_id=disclosure_id,
            agreement=agreement,
            event_type=made_for[1],
            ledger_seq=ledger_seq,
            schema=schema,
            record=record,
            topic=topic,
            partition=partition,
            offset=offset,
        )

    def poll(self, timeout: float = 1.0) -> Disclosure | Retraction | None:
        msg, self._pending = self._pending, None
        if msg is None:
            msg = self.consumer.poll(timeout)
        if msg is None:
            return None
        if msg.error():
            raise KafkaException(msg.error())
        tp, offset = (msg.topic() or "", msg.partition() or 0), msg.offset() or 0
        try:
            item = self._decode(msg)
        except UnknownAgreementVersion:
            self._next[tp] = offset  # read again: a commit never passes it
            raise
        except ForeignRecord:
            self._next[tp] = offset + 1  # named to the caller, and passed over
            raise
        self._next[tp] = offset + 1
        return item

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
        # What poll() handed out (or named and passed over), not librdkafka's stored offsets: a
        # record seeked back to (a version not given) was consumed, but must be read again.
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._next.items()]
        if not offsets:
            return  # nothing was read yet
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
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
            # The name is the sender's: shown escaped and cut, never as raw text on a terminal.
            raise ForeignRecord(where, f"its {key[:60]!a} header is not UTF-8") from None
    return text
