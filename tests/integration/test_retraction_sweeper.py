"""The retraction sweep in-process, on the real broker and PostgreSQL, judged from the outside.

Disclosures are made by the real batch handler; the agreement is then suspended the way
the agreements feed applies a new version; the sweep (built as app.py builds it) must
retract each disclosure once in the ledger and send one notice per retraction to the
recipient's partner topic, read back with the partner SDK. A second sweep sends nothing.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import event, text

import consent
from accord.processor.sweeper import RetractionSweeper
from accord.sharing.decide import subject_key
from agreements import Status
from agreements.partners import load_partners
from bus import kafka
from producers.synthetic import build_scenario
from tests.bus import read_topic
from tests.integration.parts import (
    Parts,
    agreement,
    disclosed,
    ledger_size,
    processor_parts,
    shared_custody_events,
    waiting_on_advisory_locks,
)

AGREEMENT = "custody-to-prosecution"
EVENTS = 5


@pytest.fixture
def parts(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    with processor_parts(broker, tmp_path_factory.mktemp("sweeper")) as parts:
        yield parts


def _sweep_to_the_end(sweeper: RetractionSweeper) -> int:
    passes = 1
    while sweeper.sweep():
        passes += 1
        assert passes < 20, "the sweep never finished"
    return passes


def test_suspending_an_agreement_retracts_each_disclosure_once_in_the_ledger_then_on_the_topic(parts: Parts) -> None:
    current = agreement(parts, AGREEMENT)
    events = shared_custody_events(current, EVENTS)
    parts.handler.handle([parts.inbound("custody", e, offset=i) for i, e in enumerate(events)])
    sent = {p: disclosed(parts, p) for p in ("cps", "hmcts")}
    assert all(len(ids) == EVENTS for ids in sent.values())
    sweeper = RetractionSweeper(
        parts.db.app,
        parts.agreement_set,
        kafka.producer(parts.settings),
        parts.names,
        load_partners(parts.settings.partners_file),
    )

    # In force: a sweep retracts nothing.
    _sweep_to_the_end(sweeper)
    assert parts.ledger(outcome="RETRACTED") == []
    assert parts.bus.retractions("cps") == []

    # Suspended, as the feed applies a new version (FeedFollower -> AgreementSet.apply).
    suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
    parts.agreement_set.apply(suspended.model_dump_json().encode())
    _sweep_to_the_end(sweeper)

    retracted = parts.ledger(outcome="RETRACTED")
    assert Counter(r.refers_to for r in retracted) == Counter(d for ids in sent.values() for d in ids)
    by_disclosure = {r.refers_to: r for r in retracted}
    for partner, ids in sent.items():
        assert {r.refers_to for r in retracted if r.recipient == partner} == set(ids)
        notices = parts.bus.retractions(partner)
        # One notice per retraction: naming the disclosure it withdraws, under the retraction's id and seq.
        assert sorted(n.retracts_disclosure_id for n in notices) == sorted(ids)
        for n in notices:
            entry = by_disclosure[n.retracts_disclosure_id]
            assert (n.retraction_id, n.ledger_seq) == (entry.disclosure_id, entry.seq)
            assert n.agreement == f"{current.id}@v{current.version}"

    # Done: sweeping again appends nothing and sends nothing.
    size = ledger_size(parts)
    _sweep_to_the_end(sweeper)
    assert ledger_size(parts) == size
    assert len(parts.bus.retractions("cps")) == EVENTS


def _sweeper(parts: Parts, persist_every_s: float) -> RetractionSweeper:
    return RetractionSweeper(
        parts.db.app,
        parts.agreement_set,
        kafka.producer(parts.settings),
        parts.names,
        load_partners(parts.settings.partners_file),
        persist_every_s=persist_every_s,
    )


def test_each_notice_goes_once_when_leaders_change_and_restart_with_the_notice_cursor_behind(parts: Parts) -> None:
    """A sweeper remembers what it scanned and writes the notice cursor only when it sent
    notices (or every persist_every_s): here never, unless it sent some. So the stored
    cursor lags what sweeper A scanned; B, leading meanwhile, retracts and sends from the
    stored one; then A leads again, then a restarted C. Nobody may send a notice twice."""
    current = agreement(parts, AGREEMENT)
    events = shared_custody_events(current, 2 * EVENTS)
    first, later = events[:EVENTS], events[EVENTS:]
    parts.handler.handle([parts.inbound("custody", e, offset=i) for i, e in enumerate(first)])
    a = _sweeper(parts, persist_every_s=3600)
    _sweep_to_the_end(a)  # writes the cursor once (its first pass), then only remembers
    parts.handler.handle([parts.inbound("custody", e, offset=EVENTS + i) for i, e in enumerate(later)])
    _sweep_to_the_end(a)  # scans the later disclosures: nothing to send, the stored cursor stays behind

    suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
    parts.agreement_set.apply(suspended.model_dump_json().encode())
    b = _sweeper(parts, persist_every_s=3600)  # another worker took the lease
    _sweep_to_the_end(b)
    _sweep_to_the_end(a)  # and gave it back
    _sweep_to_the_end(_sweeper(parts, persist_every_s=3600))  # a restart

    retracted = parts.ledger(outcome="RETRACTED")
    assert len(retracted) == 2 * 2 * EVENTS  # to cps and to hmcts, of each event
    assert Counter(r.refers_to for r in retracted).most_common(1)[0][1] == 1
    for partner in ("cps", "hmcts"):
        notices = Counter(n.retracts_disclosure_id for n in parts.bus.retractions(partner))
        assert set(notices) == {r.refers_to for r in retracted if r.recipient == partner}
        assert set(notices.values()) == {1}, "a notice was sent twice"


def test_a_pass_with_nothing_new_reads_one_row_and_a_stream_without_retractions_writes_nothing(parts: Parts) -> None:
    """What keeps the sweep off the event stream's back: counted on the app role's engine."""
    current = agreement(parts, AGREEMENT)
    events = shared_custody_events(current, 2 * EVENTS)
    parts.handler.handle([parts.inbound("custody", e, offset=i) for i, e in enumerate(events[:EVENTS])])
    sweeper = _sweeper(parts, persist_every_s=3600)
    _sweep_to_the_end(sweeper)
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement.split()[0].upper())

    event.listen(parts.db.app, "before_cursor_execute", note)
    try:
        assert sweeper.sweep() is False
        idle = list(statements)
        parts.handler.handle([parts.inbound("custody", e, offset=EVENTS + i) for i, e in enumerate(events[EVENTS:])])
        statements.clear()
        assert sweeper.sweep() is False
        streaming = list(statements)
    finally:
        event.remove(parts.db.app, "before_cursor_execute", note)
    assert idle == ["SELECT"], idle
    assert streaming == ["SELECT", "SELECT"], streaming  # where things stand; the new entries' RETRACTED ones


def _suspend(parts: Parts, agreement_id: str) -> None:
    """As the feed applies a new version that suspends the agreement."""
    current = agreement(parts, agreement_id)
    suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
    parts.agreement_set.apply(suspended.model_dump_json().encode())


def test_a_pass_costs_the_same_however_many_versions_ever_ended_and_each_is_retracted_once(parts: Parts) -> None:
    """Each ended version cost a cursor read, a ledger scan and a cursor write in every pass, for
    ever: one scan now serves them all, and what each ended is still retracted, once."""
    current = agreement(parts, AGREEMENT)
    events = shared_custody_events(current, 3 * EVENTS)
    chunks = [events[i * EVENTS : (i + 1) * EVENTS] for i in range(3)]
    offsets = iter(range(10_000))

    def stream(chunk: list[dict]) -> None:
        parts.handler.handle([parts.inbound("custody", e, offset=next(offsets)) for e in chunk])

    stream(chunks[0])
    sweeper = _sweeper(parts, persist_every_s=3600)
    statements: list[str] = []

    def note(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement.split()[0].upper())

    def one_pass_under_a_stream(chunk: list[dict]) -> list[str]:
        stream(chunk)
        statements.clear()
        event.listen(parts.db.app, "before_cursor_execute", note)
        try:
            assert sweeper.sweep() is False
        finally:
            event.remove(parts.db.app, "before_cursor_execute", note)
        return list(statements)

    _suspend(parts, "natal-care-to-research")  # ended, and nothing of it in this ledger
    _sweep_to_the_end(sweeper)
    one = one_pass_under_a_stream(chunks[1])
    for other in ("natal-care-to-health-visiting", "referral-to-mash", "custody-to-liaison-diversion"):
        _suspend(parts, other)
    _sweep_to_the_end(sweeper)
    four = one_pass_under_a_stream(chunks[2])
    # Where things stand; the ended versions' cursors; one scan for them all; the notices' scan.
    assert one == four == ["SELECT", "SELECT", "SELECT", "SELECT"], (one, four)

    # The prosecutors' disclosures, still in force, were not retracted.
    owed = {*disclosed(parts, "cps"), *disclosed(parts, "hmcts")}
    assert len(owed) == 2 * 3 * EVENTS and parts.ledger(outcome="RETRACTED") == []
    # Now their agreement too, whose cursor starts where the others' are long past: each once.
    _suspend(parts, AGREEMENT)
    _sweep_to_the_end(sweeper)
    retracted = Counter(r.refers_to for r in parts.ledger(outcome="RETRACTED"))
    assert set(retracted) == owed and set(retracted.values()) == {1}
    # A restart scans again from the stored cursors and appends nothing twice.
    size = ledger_size(parts)
    _sweep_to_the_end(_sweeper(parts, persist_every_s=3600))
    assert ledger_size(parts) == size


def _natal_care_events() -> list[dict]:
    """Synthetic natal care events: shared with health visiting unless the mother opts out."""
    scenario = build_scenario(200, seed=random.randrange(1 << 30), n_malformed=0)
    return [e.record for e in scenario.events if e.event_type == "natal_care"]


def _withdraw(parts: Parts, natal_care: dict) -> None:
    """The subject of a natal care event withdraws consent to health visiting (opt-out sharing)."""
    consent.record(
        parts.db.app,
        subject_key("natal_care", natal_care),
        consent.ConsentDecision.DENY,
        known=consent.KnownScopes.from_partners(load_partners(parts.settings.partners_file)),
        recipient="salford-health-visiting",
    )


def test_a_withdrawal_given_its_id_first_but_committed_last_is_still_swept_and_relayed(parts: Parts) -> None:
    """Consent ids come from a sequence: two citizens withdrawing at once, the first id's
    transaction still open when the second commits, must not leave the first behind the
    sweep's cursor (its disclosures never retracted, its change never relayed). The first
    writer is held between its insert and its commit by a trigger the owner adds, which
    waits on a lock this test holds; the sweep runs while it is held, then to the end."""
    natal = _natal_care_events()
    first, second = (
        natal[0],
        next(e for e in natal if subject_key("natal_care", e) != subject_key("natal_care", natal[0])),
    )
    parts.handler.handle([parts.inbound("natal_care", e, offset=i) for i, e in enumerate([first, second])])
    sent = disclosed(parts, "salford-health-visiting")
    assert len(sent) == 2
    sweeper = _sweeper(parts, persist_every_s=3600)
    _sweep_to_the_end(sweeper)

    hold = int.from_bytes(secrets.token_bytes(7), "big")
    held = subject_key("natal_care", first)
    with parts.db.owner.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION hold_consent() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF NEW.subject_key = '{held}' THEN PERFORM pg_advisory_xact_lock({hold}); END IF; "
                "RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(
                "CREATE TRIGGER hold_consent AFTER INSERT ON consent_records "
                "FOR EACH ROW EXECUTE FUNCTION hold_consent()"
            )
        )
    failed: list[BaseException] = []

    def withdraw(event: dict) -> threading.Thread:
        def run() -> None:
            try:
                _withdraw(parts, event)
            except BaseException as exc:  # handed to the test's thread
                failed.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    with parts.db.admin.connect() as holder, holder.begin():
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": hold})
        writers = [withdraw(first)]
        deadline = time.monotonic() + 30
        while waiting_on_advisory_locks(parts) < 1:  # the first has its id, and waits
            assert not failed and time.monotonic() < deadline, failed
            time.sleep(0.05)
        writers.append(withdraw(second))
        # The second commits, or waits behind the first: either way, sweep now.
        while writers[1].is_alive() and waiting_on_advisory_locks(parts) < 2:
            assert not failed and time.monotonic() < deadline, failed
            time.sleep(0.05)
        _sweep_to_the_end(sweeper)
    for w in writers:
        w.join(30)
    assert not failed, failed
    _sweep_to_the_end(sweeper)

    retracted = parts.ledger(outcome="RETRACTED")
    assert sorted(r.refers_to for r in retracted) == sorted(sent)
    assert sorted(n.retracts_disclosure_id for n in parts.bus.retractions("salford-health-visiting")) == sorted(sent)
    catalogue = parts.agreement_set.catalogue
    relayed = [catalogue.decode(v)[1] for _h, v in read_topic(parts.settings, parts.names.consent_preferences) if v]
    assert sorted(c["subject_key"] for c in relayed) == sorted(subject_key("natal_care", e) for e in (first, second))


def test_a_disclosure_appended_after_its_subjects_withdrawal_was_swept_is_still_retracted(parts: Parts) -> None:
    """Another worker decided the event before the withdrawal was recorded and appends its
    disclosure after the sweep handled the withdrawal (the control plane runs in one
    worker, the batches in all): the disclosure is owed a retraction all the same."""
    [event] = _natal_care_events()[:1]
    sweeper = _sweeper(parts, persist_every_s=3600)
    _sweep_to_the_end(sweeper)
    prepared = parts.handler.prepare([parts.inbound("natal_care", event, offset=0)])  # consent read: none yet
    _withdraw(parts, event)
    _sweep_to_the_end(sweeper)  # the withdrawal handled: nothing in the ledger to retract yet
    parts.handler.settle(parts.handler.send(prepared))
    [disclosure] = disclosed(parts, "salford-health-visiting")
    _sweep_to_the_end(sweeper)

    assert [r.refers_to for r in parts.ledger(outcome="RETRACTED")] == [disclosure]
    assert [n.retracts_disclosure_id for n in parts.bus.retractions("salford-health-visiting")] == [disclosure]


def test_a_suspension_published_ahead_of_its_day_retracts_nothing_and_stops_nothing_before_it(parts: Parts) -> None:
    """A suspending version with valid_from tomorrow: until then the version before it decides,
    its disclosures stand (no retraction) and new events are still shared under it."""
    from datetime import date, timedelta

    current = agreement(parts, AGREEMENT)
    events = shared_custody_events(current, 4)
    parts.handler.handle([parts.inbound("custody", e, offset=i) for i, e in enumerate(events[:2])])
    before = disclosed(parts, "cps")
    ahead = current.model_copy(
        update={"version": current.version + 1, "status": Status.SUSPENDED, "valid_from": date.today() + timedelta(2)}
    )
    parts.agreement_set.apply(ahead.model_dump_json().encode())
    sweeper = _sweeper(parts, persist_every_s=30.0)
    _sweep_to_the_end(sweeper)
    assert parts.ledger(outcome="RETRACTED") == [] and parts.bus.retractions("cps") == []
    parts.handler.handle([parts.inbound("custody", e, offset=10 + i) for i, e in enumerate(events[2:])])
    after = disclosed(parts, "cps")
    assert len(after) == len(before) + 2  # still shared under the version in force
    assert {e.agreement_version for e in parts.ledger(recipient="cps", outcome="DISCLOSED")} == {current.version}
