"""The processor's parts built in-process, as app.py builds them, on the real broker and PostgreSQL.

The integration tests drive one part at a time (the batch handler, the retraction sweep,
the receipt recorder) and judge it from the outside only: what is on the partner and
dead-letter topics (tests.bus.read_topic) and what rows the ledger holds. Records go in
as ``Inbound`` made with the real publisher's encoding, as the loop would consume them.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, text

from accord.processor.agreement_feed import AgreementSet
from accord.processor.handler import BatchHandler, Inbound
from accord.sharing.decide import subject_key
from agreements import Agreement, load_dir
from agreements.partners import load_partners
from agreements.recipient_schemas import recipient_catalogue
from bus import headers as header
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicNames
from ledger import LedgerEntry
from producers import Publisher
from producers.synthetic import build_scenario
from schemas.validation import Limits
from tests.bus import Bus, make_settings, read_topic
from tests.conftest import RoleDatabase, fresh_role_database


@dataclass
class Parts:
    """One bus's settings, database (owner and app roles), topics, agreements and batch handler."""

    db: RoleDatabase
    settings: Settings
    bus: Bus  # topics created; bus.engine is the owner's
    agreement_set: AgreementSet
    handler: BatchHandler

    @property
    def names(self) -> TopicNames:
        return self.bus.names

    @functools.cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.settings)

    def handler_again(self) -> BatchHandler:
        """A second handler on the same bus, as a restarted processor would build it."""
        return build_handler(self.settings, self.db, self.agreement_set)

    def inbound(self, event_type: str, record: dict[str, Any], offset: int, partition: int = 0) -> Inbound:
        """The record as the processor consumes it: encoded by the real Publisher, keyed by subject."""
        problems, value = self.publisher.problems(event_type, record)  # checks and encodes; sends nothing
        assert not problems and value is not None, problems
        return Inbound(self.names.event(event_type), partition, offset, subject_key(event_type, record).encode(), value)

    def inbound_raw(self, topic: str, value: bytes, offset: int, partition: int = 0) -> Inbound:
        """Bytes as consumed from ``topic`` (a receipt, or anything else)."""
        return Inbound(topic, partition, offset, None, value)

    def ledger(self, **where: Any) -> list[Any]:
        return self.bus.ledger(**where)

    def partner_topic(self, partner: str, event_type: str = "custody") -> list[tuple[dict[str, bytes], bytes | None]]:
        return read_topic(self.settings, self.names.partner(partner, event_type))

    def dead_letters(self) -> list[dict[str, bytes]]:
        return [h for h, _ in read_topic(self.settings, self.names.dead_letter)]


def build_handler(settings: Settings, db: RoleDatabase, agreement_set: AgreementSet) -> BatchHandler:
    """A BatchHandler wired as app.run_processor wires it, on the app role's engine."""
    return BatchHandler(
        agreement_set,
        db.app,
        kafka.producer(settings),
        TopicNames(settings.topic_prefix),
        load_partners(settings.partners_file),
        settings.pseudonym_key.get_secret_value().encode(),
        Limits(settings.max_event_bytes, settings.max_string_bytes),
    )


@contextmanager
def processor_parts(broker: str, state_dir: Path) -> Iterator[Parts]:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, state_dir)
        agreements = load_dir(settings.agreements_dir)
        bus = Bus(settings, db.owner, agreements)
        bus.create_topics()
        agreement_set = AgreementSet(agreements, recipient_catalogue(agreements))
        yield Parts(db, settings, bus, agreement_set, build_handler(settings, db, agreement_set))


def shared_custody_events(agreement: Agreement, n: int) -> list[dict[str, Any]]:
    """``n`` synthetic custody events from a provider of ``agreement`` (so it discloses each)."""
    found: list[dict[str, Any]] = []
    while len(found) < n:
        scenario = build_scenario(200, seed=random.randrange(1 << 30), n_malformed=0)
        found += [e.record for e in scenario.events if e.event_type == "custody" and e.agency in agreement.providers]
    return found[:n]


def agreement(parts: Parts, agreement_id: str) -> Agreement:
    return next(a for a in parts.agreement_set.current(datetime.now(UTC).date()) if a.id == agreement_id)


def disclosed(parts: Parts, recipient: str) -> dict[str, int]:
    """disclosure id -> ledger seq of every DISCLOSED entry for ``recipient``."""
    with parts.db.owner.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.disclosure_id, LedgerEntry.seq).where(
                LedgerEntry.outcome == "DISCLOSED", LedgerEntry.recipient == recipient
            )
        ).all()
    return {d: s for d, s in rows}


def delivered(records: list[tuple[dict[str, bytes], bytes | None]]) -> list[tuple[str, int]]:
    """(disclosure id, ledger seq) of each disclosure on a partner topic, in topic order."""
    return [(h[header.DISCLOSURE_ID].decode(), int(h[header.LEDGER_SEQ])) for h, _ in records if header.KIND not in h]


def ledger_size(parts: Parts) -> int:
    with parts.db.owner.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM ledger_entries")).scalar_one())


def waiting_on_advisory_locks(parts: Parts) -> int:
    """How many sessions of the app role wait for an advisory lock (the ledger's writer lock, say)."""
    with parts.db.admin.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE l.locktype = 'advisory' AND NOT l.granted AND a.usename = :role"
                ),
                {"role": parts.db.app_role},
            ).scalar_one()
        )
