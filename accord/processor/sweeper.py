"""The retraction sweep: relays consent changes and sends the retractions owed.

Each pass, in three steps, each behind its own cursor in the database:

1. consent: new consent records are published to ``consent.preferences``
   (keyed by subject key; the consent table is the outbox), and for each
   subject who withdrew consent the retractions owed are appended to the ledger
   (judged as things stood at each withdrawal: accord/sharing/retraction.py);
2. agreements: for each version that suspended or revoked its agreement (also
   one a later version reinstated), every disclosure made under an earlier version
   is retracted in the ledger, reading the entries after its cursor: one scan for
   all of them, from the one furthest behind (``_agreement_step``);
3. notices: every RETRACTED ledger entry not yet sent goes to its recipient's
   partner topic. The same scan of the new entries finds any disclosure whose
   subject withdrew consent after the consent version it was decided with, and
   appends the retraction it is owed (sent by the next pass): with several
   workers, one may append a disclosure it decided before a withdrawal after the
   sweep, in the worker that leads, had handled that withdrawal in step 1.

Notices are sent only from the ledger and only after it (I1, as for
disclosures). A cursor moves after its step's writes are committed or flushed,
so a crash replays the step; retraction ids are stable, so the ledger never
records one twice and a replay re-sends a notice with the same id (I7).

Steps 2 and 3 read ledger entries up to a head read first: seqs are assigned
under the ledger's writer lock and committed in order, so every entry up to
that head is already committed and none can appear behind the cursor later.
Step 1 reads the consent records after its cursor for the same reason: they are
written under the consent store's writer lock (consent/store.py), so their ids
commit in order too.

Every step handles at most ``batch`` rows (read from at most ``window`` ledger
seqs) per pass and says whether more are waiting, so suspending an agreement with
100k disclosures goes in bounded chunks, never one pass holding all of them in
memory. Only the worker holding the control-plane lease sweeps
(accord/processor/control_lease.py).

``sweep`` runs a whole pass in the caller's thread (tools and tests). The processor
splits it by what each part touches (accord/processor/app.py), so that a large
retraction does not hold up the event stream (on the loop's thread, every batch
waited behind a chunk of it):

- ``relay`` (step 1) and ``send_notices`` (step 3's produce) run on the loop's
  timers, after the loop has settled its batch in flight, so a notice reaches the
  partner after the disclosure it retracts; sending needs no database;
- ``scan`` (step 2, and step 3's read of the ledger into encoded notices) writes only
  the ledger, so it runs on a thread of its own (accord/processor/background.py). It
  hands each chunk of notices over, in order, through a queue of one: it reads no
  further ahead than one chunk, and it writes the notice cursor up to what the loop
  reports the broker took.

A pass begins with one query for where everything stands (both cursors, the newest
consent record, the ledger head), so a step with nothing to do costs nothing more; under
a steady stream a pass is that query and the notice step's scan of the entries appended
since the last one, and, once any version has ended, one read of the ended versions'
cursors and one scan for them all, however many ended. The notice and agreement cursors
are written when the step sent or appended something, and otherwise at most every
``persist_every_s``: a range scanned and found empty stays empty (the ledger only grows
past its head), so the sweeper remembers it, and a restart scans it again.

After each pass the sweeper tells the processor's metrics (docs/metrics.md) how far
behind it is: the consent records still to handle and the age of the oldest, and the
ledger entries steps 2 and 3 have still to read. Counting the consent backlog costs a
query only when a pass left some.
"""

from __future__ import annotations

import queue
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import ColumnElement, Engine, Row, and_, exists, func, or_, select

import consent
from accord.processor.agreement_feed import AgreementSet
from accord.processor.metrics import ProcessorMetrics
from accord.sharing.decide import Context, Outcome
from accord.sharing.retraction import ENDED, Retraction, retractions_for, retractions_for_agreement
from agreements.model import has_begun
from bus import cursors
from bus import headers as header
from bus.errors import flush_or_raise
from bus.kafka import Producing
from bus.topics import TopicNames
from consent.store import ConsentRow, utc
from ledger import EntryDraft, LedgerEntry, append, entries, lookup
from ledger.append import StoredEntry, stored_entry

log = structlog.get_logger("accord.sweeper")

CURSOR = "retraction-sweep"  # the last consent record id handled
NOTICE_CURSOR = "retraction-notices"  # the ledger seq up to which notices were sent


# A retraction notice ready to produce: topic, key, value, headers.
_Notice = tuple[str, bytes, bytes, list[tuple[str, str | bytes | None]]]


@dataclass(frozen=True)
class _Notices:
    """A chunk of notices read from the ledger; once the broker took them all, the notice cursor moves to ``reached``."""

    notices: list[_Notice]
    reached: int


def agreement_cursor(agreement_key: str) -> str:
    """The ledger seq up to which disclosures under an ended agreement were retracted."""
    return f"agreement-ended:{agreement_key}"


class RetractionSweeper:
    """The control plane's sweep (see the module docstring); ``sweep`` is the loop's timer work."""

    def __init__(
        self,
        engine: Engine,
        agreements: AgreementSet,
        producer: Producing,
        names: TopicNames,
        partner_classes: Mapping[str, str] | None = None,
        batch: int = 500,
        window: int = 20_000,
        *,
        metrics: ProcessorMetrics | None = None,
        persist_every_s: float = 30.0,
    ) -> None:
        self.engine = engine
        self.agreements = agreements
        self.catalogue = agreements.catalogue
        self.producer = producer
        self.names = names
        self.partner_classes = dict(partner_classes or {})
        self.batch = batch
        self.window = window
        self.metrics = metrics if metrics is not None else ProcessorMetrics()
        # Each step's backlog; the agreement step may write its own from another thread.
        self._pending: dict[str, int] = {"consent": 0, "agreements": 0, "notices": 0}
        self._lag_s = 0.0
        self.persist_every_s = persist_every_s
        # The notice step in two halves (the scan may run on the background thread, see sweep):
        self._notices_done = 0  # scan: the ledger seq up to which notices were read and handed over (or held)
        self._held: _Notices | None = None  # scan: a chunk read while the one before was still waiting
        self._ready: queue.Queue[_Notices] = queue.Queue(maxsize=1)  # scan -> send, in order
        self._unsent: _Notices | None = None  # send: a chunk whose sending failed, sent again first
        self._delivered = 0  # send: the seq up to which the broker took every notice
        self._delivered_notices = 0  # send: the end of the last chunk that held any notice
        self._stored = 0  # the notice cursor as this sweeper last wrote it
        self._notices_stored = 0.0  # monotonic time the notice cursor was last written
        self._agreements_done: dict[str, int] = {}  # ended version's key -> the ledger seq scanned up to
        self._agreements_stored = 0.0  # monotonic time their cursors were last written
        self._appended_head = 0  # the last seq of the retractions step 1 appended in this pass (0: none)
        cursors.init_cursors(engine)

    def sweep(self) -> bool:
        """One bounded pass of the three steps, all in this thread; True when any step left work for the next."""
        with self.engine.connect() as conn:
            consent_at, newest_consent, notices_at, head = (v or 0 for v in conn.execute(self._positions).one())
        context = self._context()
        self._appended_head = 0
        more = self._consent_step(context, consent_at, newest_consent)
        more_ended, appended = self._agreement_step(context, head)
        # Retractions appended by steps 1 and 2 are committed up to their last seq: notices now.
        more = self._scan_notices(context, notices_at, max(head, appended, self._appended_head)) or more_ended or more
        self._send_notices()
        self._store_notice_cursor()
        self._report()
        return more

    # The processor splits the pass in three (accord/processor/app.py): ``relay`` and
    # ``send_notices`` on the loop's timers, where its batch in flight is settled first;
    # ``scan``, which writes only the ledger, on a thread of its own (accord/processor/background.py).

    def relay(self) -> bool:
        """Step 1 alone: relay consent changes and append what withdrawals owe; True when more is waiting."""
        with self.engine.connect() as conn:
            consent_at, newest_consent = (v or 0 for v in conn.execute(self._consent_positions).one())
        more = self._consent_step(self._context(), consent_at, newest_consent)
        self._report()
        return more

    def send_notices(self) -> None:
        """Send the chunks of notices ``scan`` has read; no database, so the loop may call it often."""
        self._send_notices()

    def notices_ready(self) -> bool:
        """Whether ``send_notices`` has anything to send (so the loop settles its batch for it)."""
        return self._unsent is not None or not self._ready.empty()

    def scan(self) -> bool:
        """Step 2 and the notice step's scan, one bounded chunk each; True when more is waiting.

        It first stores how far the notices were sent, and waits up to a second for
        ``send_notices`` to take the chunk before, so a long retraction is read no faster
        than its notices go out.
        """
        self._store_notice_cursor()
        with self.engine.connect() as conn:
            notices_at, head = (v or 0 for v in conn.execute(self._scan_positions).one())
        context = self._context()
        more, appended = self._agreement_step(context, head)
        return self._scan_notices(context, notices_at, max(head, appended), wait_s=1.0) or more

    def _report(self) -> None:
        control = self.metrics.control
        control.sweep_pending, control.sweep_lag_s = dict(self._pending), self._lag_s
        control.sweep_at = time.time()

    # Where each step stands, read in one round trip at the start of a pass.
    _positions = select(
        cursors.position(CURSOR),
        select(func.max(ConsentRow.id)).scalar_subquery(),
        cursors.position(NOTICE_CURSOR),
        select(func.max(LedgerEntry.seq)).scalar_subquery(),
    )
    _consent_positions = select(cursors.position(CURSOR), select(func.max(ConsentRow.id)).scalar_subquery())
    _scan_positions = select(cursors.position(NOTICE_CURSOR), select(func.max(LedgerEntry.seq)).scalar_subquery())

    def _append(self, owed: Sequence[Retraction]) -> int:
        """Append the retractions; the last seq they hold (all committed up to it)."""
        appended = append(self.engine, [r.entry for r in owed])
        self.metrics.retracted(
            Counter(
                (r.entry.recipient, r.entry.agreement_id, r.entry.agreement_version)
                for r, a in zip(owed, appended, strict=True)
                if a.new
            )
        )
        return max(a.seq for a in appended)

    def _append_unrecorded(self, owed: Sequence[Retraction]) -> tuple[int, int]:
        """Append the retractions the ledger does not hold yet; how many, and the last seq (0: none).

        A disclosure already retracted (consent withdrawn earlier, say) keeps that
        retraction. Asked first, so a pass with nothing new never takes the writer lock.
        """
        if not owed:
            return 0, 0
        done = lookup(self.engine, [r.entry.disclosure_id for r in owed])
        new = [r for r in owed if r.entry.disclosure_id not in done]
        return len(new), self._append(new) if new else 0

    def _context(self) -> Context:
        now = datetime.now(UTC)
        return Context(now.replace(microsecond=now.microsecond // 1000 * 1000), self.partner_classes)

    def _consent_step(self, context: Context, start: int, newest: int) -> bool:
        if newest <= start:
            self._pending["consent"], self._lag_s = 0, 0.0
            return False
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ConsentRow.__table__).where(ConsentRow.id > start).order_by(ConsentRow.id).limit(self.batch)
            ).all()
        if not rows:
            self._pending["consent"], self._lag_s = 0, 0.0
            return False
        subjects = sorted({r.subject_key for r in rows if r.decision == consent.ConsentDecision.DENY.value})
        histories = consent.history(self.engine, subjects)
        owed: list[Retraction] = []
        for subject in subjects:
            ledger = [e.draft for e in entries(self.engine, subject_key=subject)]
            owed.extend(retractions_for(ledger, self.agreements.by_key(), histories.get(subject, []), context))
        if owed:
            self._appended_head = self._append(owed)  # the notice step reads up to it this pass
        errors: list[str] = []
        for row in rows:
            self._publish_change(row, errors)
        self._flush(errors, "consent changes")
        cursors.advance(self.engine, CURSOR, rows[-1].id)
        self._consent_backlog(rows[-1].id, full=len(rows) == self.batch)
        return len(rows) == self.batch

    def _consent_backlog(self, after: int, full: bool) -> None:
        """How many consent records are left after ``after``, and how old the first is (a query only when ``full``)."""
        if not full:
            self._pending["consent"], self._lag_s = 0, 0.0
            return
        with self.engine.connect() as conn:
            left, oldest = conn.execute(
                select(func.count(), func.min(ConsentRow.recorded_at)).where(ConsentRow.id > after)
            ).one()
        self._pending["consent"] = int(left)
        self._lag_s = max((datetime.now(UTC) - utc(oldest)).total_seconds(), 0.0) if oldest is not None else 0.0

    def _agreement_step(self, context: Context, head: int) -> tuple[bool, int]:
        """Retract what every ended version owes, in one scan of the ledger for all of them.

        Returns whether more is waiting, and the last seq appended (0: none).

        1. the versions that ended their agreement and have begun (also one a later version
           reinstated: what it ended stays ended, retractions_for_agreement; one published
           ahead of its valid_from ends nothing before that day);
        2. where each stands: its stored cursor, read for all in one query, or further, what
           this sweeper already scanned (a range scanned stays as it was: the ledger only grows
           past its head);
        3. one bounded scan from the one furthest behind, of the DISCLOSED entries that any of
           them ended: past its position, under an earlier version of its agreement; each
           version then takes its own;
        4. append what is owed, then move each position to where the scan reached; the stored
           cursors are written when something was appended or ``persist_every_s`` has passed,
           so a steady stream with nothing owed costs two reads a pass however many versions
           ever ended (a restart scans again from the stored cursors, which appends nothing twice).
        """
        # 1.
        ended = sorted(
            (a for a in self.agreements.by_key().values() if a.status in ENDED and has_begun(a, context.today)),
            key=lambda a: a.key,
        )
        if not ended:
            self._pending["agreements"] = 0
            return False, 0
        # 2.
        names = {a.key: agreement_cursor(a.key) for a in ended}
        with self.engine.connect() as conn:
            query = select(cursors.Cursor.name, cursors.Cursor.position).where(cursors.Cursor.name.in_(names.values()))
            stored: dict[str, int] = {name: position for name, position in conn.execute(query)}
        at = {a.key: max(stored.get(names[a.key], 0), self._agreements_done.get(a.key, 0)) for a in ended}
        behind = [a for a in ended if at[a.key] < head]
        if not behind:
            self._pending["agreements"] = 0
            return False, 0
        # 3.
        disclosed, reached = self._entries(
            min(at[a.key] for a in behind),
            head,
            LedgerEntry.outcome == Outcome.DISCLOSED.value,
            or_(
                *(
                    and_(
                        LedgerEntry.agreement_id == a.id,
                        LedgerEntry.agreement_version < a.version,
                        LedgerEntry.seq > at[a.key],
                    )
                    for a in behind
                )
            ),
        )
        # 4.
        appended, last = 0, 0
        for agreement in behind:
            mine = [
                e.draft
                for e in disclosed
                if e.seq > at[agreement.key]
                and e.draft.agreement_id == agreement.id
                and e.draft.agreement_version < agreement.version
            ]
            owed = retractions_for_agreement(mine, agreement, context)
            n, seq = self._append_unrecorded(owed)
            if n:
                log.info("agreement_retractions", agreement=agreement.key, retractions=n)
            appended, last = appended + n, max(last, seq)
        now = time.monotonic()
        persist = appended > 0 or now - self._agreements_stored >= self.persist_every_s
        left = 0
        for agreement in behind:
            position = max(at[agreement.key], reached)
            self._agreements_done[agreement.key] = position
            if persist:
                cursors.advance(self.engine, names[agreement.key], position)
            left += head - position
        if persist:
            self._agreements_stored = now
        self._pending["agreements"] = left
        return reached < head, last

    # A disclosure whose subject withdrew consent after the version it was decided with.
    _withdrawn_since = and_(
        LedgerEntry.outcome == Outcome.DISCLOSED.value,
        exists().where(
            ConsentRow.subject_key == LedgerEntry.subject_key,
            ConsentRow.id > LedgerEntry.consent_version,
            ConsentRow.decision == consent.ConsentDecision.DENY.value,
        ),
    )

    def _scan_notices(self, context: Context, stored: int, head: int, wait_s: float = 0.0) -> bool:
        """Read the next chunk of notices to send, up to ``head`` (all committed), and hand it to ``_send_notices``.

        The scan writes only the ledger, so it may run on the background thread; sending
        stays with the caller of ``sweep``, where the loop has settled its batch in flight.

        1. a chunk read before and not yet handed over (the sender had not taken the one
           before it within ``wait_s``) is handed over first, and nothing more is read;
        2. read from the stored cursor or, if further, from what this sweeper already
           scanned: another worker may have moved the stored one meanwhile, and what either
           scanned needs no second look;
        3. the RETRACTED entries become notices, encoded here; disclosures found withdrawn
           since their decision are retracted (the module's step 3), for a later scan to send;
        4. hand the chunk over (waiting up to ``wait_s`` for the sender to take the one
           before), and remember how far it reached.
        """
        # 1.
        if self._held is not None:
            if not self._hand_over(self._held, wait_s):
                return True
            self._held = None
        # 2.
        start = max(stored, self._notices_done)
        if head <= start:
            self._pending["notices"] = 0
            return False
        found, reached = self._entries(start, head, or_(LedgerEntry.outcome == "RETRACTED", self._withdrawn_since))
        # 3.
        notices = [self._notice(e.seq, e.draft) for e in found if e.draft.outcome == "RETRACTED"]
        late = self._retract_withdrawn([e.draft for e in found if e.draft.outcome == Outcome.DISCLOSED.value], context)
        # 4.
        self._notices_done = reached
        self._pending["notices"] = head - reached
        chunk = _Notices(notices, reached)
        if not self._hand_over(chunk, wait_s):
            self._held = chunk
        return reached < head or late

    def _hand_over(self, chunk: _Notices, wait_s: float) -> bool:
        try:
            self._ready.put(chunk, timeout=wait_s) if wait_s > 0 else self._ready.put_nowait(chunk)
            return True
        except queue.Full:
            return False

    def _send_notices(self) -> None:
        """Send the notices the scan has read, chunk by chunk in order.

        1. a chunk whose sending failed is sent again first (its notices keep their ids, I7);
        2. then every chunk handed over, each produced and flushed before the next;
        3. note how far the broker took them; ``_store_notice_cursor`` writes it (on the
           scan's thread, so the loop waits on no database here).
        """
        while True:
            # 1., 2.
            chunk, self._unsent = self._unsent, None
            if chunk is None:
                try:
                    chunk = self._ready.get_nowait()
                except queue.Empty:
                    return
            try:
                self._produce(chunk.notices)
            except Exception:
                self._unsent = chunk
                raise
            # 3.
            self._delivered = chunk.reached
            if chunk.notices:
                self._delivered_notices = chunk.reached
                log.info("retractions", notices=len(chunk.notices))

    def _store_notice_cursor(self) -> None:
        """Write the notice cursor where the broker took the notices: after any were sent, else every ``persist_every_s``.

        A crash before it is written re-sends what was sent since (the same ids, I7).
        """
        delivered, now = self._delivered, time.monotonic()
        if delivered > self._stored and (
            self._delivered_notices > self._stored or now - self._notices_stored >= self.persist_every_s
        ):
            cursors.advance(self.engine, NOTICE_CURSOR, delivered)
            self._stored, self._notices_stored = delivered, now

    def _retract_withdrawn(self, disclosed: list[EntryDraft], context: Context) -> bool:
        """Append the retractions owed to disclosures made on consent withdrawn since; True if any."""
        if not disclosed:
            return False
        histories = consent.history(self.engine, {d.subject_key for d in disclosed})
        owed = [
            r
            for d in disclosed
            for r in retractions_for([d], self.agreements.by_key(), histories.get(d.subject_key, []), context)
        ]
        appended, _ = self._append_unrecorded(owed)  # step 1 may have got there first
        if appended:
            log.info("late_consent_retractions", retractions=appended)
        return appended > 0

    def _entries(self, after: int, upto: int, *where: ColumnElement[bool]) -> tuple[list[StoredEntry], int]:
        """At most ``batch`` matching entries in (after, upto], and the seq the cursor may move to.

        One pass reads at most ``window`` seqs: (after, after + window]. With no index on
        outcome or agreement, a query over the whole range sorted every match first (about
        0.3 s per pass at 1M entries); a window bounds each pass whatever the ledger's size.
        A full chunk moves the cursor to its last entry, a short one to the window's end.
        """
        end = min(upto, after + self.window)
        stmt = (
            select(LedgerEntry.__table__)
            .where(LedgerEntry.seq > after, LedgerEntry.seq <= end, *where)
            .order_by(LedgerEntry.seq)
            .limit(self.batch)
        )
        with self.engine.connect() as conn:
            found = [stored_entry(r) for r in conn.execute(stmt)]
        return found, (found[-1].seq if len(found) == self.batch else end)

    def _flush(self, errors: list[str], what: str) -> None:
        flush_or_raise(self.producer, what, errors)

    def _publish_change(self, row: Row[Any], errors: list[str]) -> None:
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

    def _produce(self, notices: Sequence[_Notice]) -> None:
        """Produce the notices and wait until the broker took every one (else raise)."""
        errors: list[str] = []
        for topic, key, value, headers in notices:
            self.producer.produce(
                topic,
                key=key,
                value=value,
                headers=headers,
                on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
            )
        self._flush(errors, "retraction notices")

    def _notice(self, seq: int, entry: EntryDraft) -> _Notice:
        """A retraction notice as it is produced to its recipient's partner topic."""
        notice = {
            "retraction_id": entry.disclosure_id,
            "retracts_disclosure_id": entry.refers_to,
            "event_id": entry.event_id,
            "agreement": f"{entry.agreement_id}@v{entry.agreement_version}",
            "reason": entry.reason,
            "since": entry.decided_at,
            "fields": list(entry.fields),
        }
        return (
            self.names.partner(entry.recipient, entry.event_type),
            entry.disclosure_id.encode(),
            self.catalogue.encode("retraction", notice),
            [
                (header.KIND, b"retraction"),
                (header.DISCLOSURE_ID, entry.disclosure_id.encode()),
                (header.RETRACTS, (entry.refers_to or "").encode()),
                (header.AGREEMENT, f"{entry.agreement_id}@v{entry.agreement_version}".encode()),
                (header.EVENT_TYPE, entry.event_type.encode()),
                (header.LEDGER_SEQ, str(seq).encode()),
            ],
        )
