"""The consent sweep: relays consent changes and sends the retractions they cause.

The consent table is the outbox: each pass publishes the new records to
``consent.preferences`` (keyed by subject key) for partners and auditors, and
acts on withdrawals (the imperative shell around ``accord.retraction``).

It reads consent records newer than its cursor, and for each subject who
withdrew consent finds the retractions owed, appends them to the ledger, and
only then sends the notices (I1, as for disclosures). The cursor moves after
the notices are flushed, so a crash replays the window; retraction ids are
stable, so the ledger never records one twice, and a replay re-sends the
notices of that window with the same ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

import structlog
from confluent_kafka import Producer
from sqlalchemy import Engine, select

import consent
from accord import cursors
from accord.retraction import Retraction, retractions_for
from accord.sharing import Context
from accord.topics import TopicNames
from accord.agreement_feed import AgreementSet
from consent.store import ConsentRow, utc
from ledger import append, entries

log = structlog.get_logger("accord.sweeper")

CURSOR = "retraction-sweep"


class DeliveryFailed(RuntimeError):
    pass


class RetractionSweeper:
    def __init__(
        self,
        engine: Engine,
        agreements: AgreementSet,
        producer: Producer,
        names: TopicNames,
        partner_classes: Mapping[str, str] | None = None,
        batch: int = 500,
    ) -> None:
        self.engine = engine
        self.agreements = agreements
        self.catalogue = agreements.catalogue
        self.producer = producer
        self.names = names
        self.partner_classes = dict(partner_classes or {})
        self.batch = batch
        cursors.init_cursors(engine)

    def sweep(self) -> int:
        """One pass over new consent records; returns the number of notices sent."""
        start = cursors.get(self.engine, CURSOR)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ConsentRow.__table__)
                .where(ConsentRow.id > start)
                .order_by(ConsentRow.id)
                .limit(self.batch)
            ).all()
        if not rows:
            return 0
        now = datetime.now(UTC)
        context = Context(now.replace(microsecond=now.microsecond // 1000 * 1000), self.partner_classes)
        subjects = sorted({r.subject_key for r in rows if r.decision == consent.ConsentDecision.DENY.value})
        histories = consent.history(self.engine, subjects)
        owed: list[Retraction] = []
        for subject in subjects:
            ledger = [e.draft for e in entries(self.engine, subject_key=subject)]
            owed.extend(retractions_for(ledger, self.agreements.by_key(), histories.get(subject, []), context))
        if owed:
            append(self.engine, [r.entry for r in owed])
        # Every retraction recorded for this window, new or from a crashed pass.
        window = {r.id for r in rows}
        to_send = [
            e for subject in subjects for e in entries(self.engine, subject_key=subject)
            if e.draft.outcome == "RETRACTED" and e.draft.consent_version in window
        ]
        errors: list[str] = []
        for stored in to_send:
            self._send(stored.seq, stored.draft, errors)
        for row in rows:
            self._publish_change(row, errors)
        if self.producer.flush(30) or errors:
            raise DeliveryFailed(f"retraction notices not delivered: {errors[:3]}")
        cursors.advance(self.engine, CURSOR, rows[-1].id)
        if to_send:
            log.info("retractions", notices=len(to_send), consent_records=len(rows))
        return len(to_send)

    def _publish_change(self, row, errors: list[str]) -> None:
        """Relay the consent record to consent.preferences: the table is the outbox."""
        change = {
            "consent_record_id": row.id,
            "subject_key": row.subject_key,
            "decision": row.decision.upper(),
            "purpose": row.purpose,
            "recipient": row.recipient,
            "recipient_class": row.recipient_class,
            "recorded_at": utc(row.recorded_at),
            "expires_at": utc(row.expires_at) if row.expires_at else None,
            "collected_by": row.collected_by,
            "method": row.method,
            "evidence_ref": row.evidence_ref,
        }
        self.producer.produce(
            self.names.consent_preferences,
            key=row.subject_key.encode(),
            value=self.catalogue.encode("consent_change", change),
            on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
        )

    def _send(self, seq: int, entry, errors: list[str]) -> None:
        notice = {
            "retraction_id": entry.disclosure_id,
            "retracts_disclosure_id": entry.refers_to,
            "event_id": entry.event_id,
            "agreement": f"{entry.agreement_id}@v{entry.agreement_version}",
            "reason": entry.reason,
            "since": entry.decided_at,
            "fields": list(entry.fields),
        }
        self.producer.produce(
            self.names.partner(entry.recipient, entry.event_type),
            key=entry.disclosure_id.encode(),
            value=self.catalogue.encode("retraction", notice),
            headers=[
                ("accord.kind", b"retraction"),
                ("accord.disclosure_id", entry.disclosure_id.encode()),
                ("accord.retracts", (entry.refers_to or "").encode()),
                ("accord.agreement", f"{entry.agreement_id}@v{entry.agreement_version}".encode()),
                ("accord.event_type", entry.event_type.encode()),
                ("accord.ledger_seq", str(seq).encode()),
            ],
            on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
        )
