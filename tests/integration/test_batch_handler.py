"""The batch handler in-process, on the real broker and PostgreSQL, judged from the outside.

- a batch is decided, recorded, then delivered with each disclosure's ledger seq; what
  cannot be read is dead-lettered; the same batch again appends nothing and delivers the
  recorded disclosures again under the same ids and seqs (I7, I8);
- I1: nothing reaches a partner topic while the ledger transaction is open, nor after it
  failed. The append is made to fail (INSERT revoked from the app role: an outage, so the
  handler raises and the loop would retry the batch), and held open (another session holds
  the ledger's writer lock) while the partner topics are read.
"""

from __future__ import annotations

import copy
import random
import string
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from accord.processor.agreement_feed import AgreementSet
from accord.processor.handler import BatchReport, Inbound
from accord.processor.outage import outage_of
from accord.sharing.decide import Sharing
from agreements.recipient_schemas import recipient_catalogue
from bus import headers as header
from ledger.append import ADVISORY_LOCK_KEY
from tests.integration.parts import (
    Parts,
    agreement,
    build_handler,
    delivered,
    disclosed,
    ledger_size,
    processor_parts,
    shared_custody_events,
    waiting_on_advisory_locks,
)

AGREEMENT = "custody-to-prosecution"  # custody events to cps and hmcts, no consent needed
EVENTS = 6


@pytest.fixture
def parts(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    with processor_parts(broker, tmp_path_factory.mktemp("handler")) as parts:
        yield parts


def _batch(parts: Parts, n: int = EVENTS) -> list[Inbound]:
    events = shared_custody_events(agreement(parts, AGREEMENT), n)
    return [parts.inbound("custody", e, offset=i) for i, e in enumerate(events)]


def test_a_batch_is_recorded_then_delivered_and_a_replay_appends_nothing(parts: Parts) -> None:
    batch = _batch(parts)
    garbage = Inbound(parts.names.event("custody"), 0, len(batch), b"k", b"\x00 not an Avro record")
    report = parts.handler.handle([*batch, garbage])
    assert (report.events, report.dead_letters, report.redelivered) == (EVENTS + 1, 1, 0)
    assert report.appended == ledger_size(parts) > 0

    # Every disclosure to cps and hmcts is on its topic, once, with its ledger seq; nothing else is.
    for partner in ("cps", "hmcts"):
        recorded = disclosed(parts, partner)
        assert len(recorded) == EVENTS
        on_topic = delivered(parts.partner_topic(partner))
        assert sorted(on_topic) == sorted(recorded.items())

    [dead] = parts.dead_letters()
    assert dead[header.SOURCE_TOPIC].decode() == parts.names.event("custody")
    assert int(dead[header.SOURCE_OFFSET]) == garbage.offset
    assert dead[header.ERROR] and dead[header.REASON]

    # The source system sends the batch again (or the processor restarted before committing):
    # the ledger decides, nothing is appended, the same disclosures go out again.
    size = ledger_size(parts)
    again = parts.handler_again().handle(batch)
    everything_disclosed = sum(1 for e in parts.ledger(outcome="DISCLOSED"))
    assert (again.appended, again.dead_letters, again.redelivered) == (0, 0, everything_disclosed)
    assert ledger_size(parts) == size
    for partner in ("cps", "hmcts"):
        counts = Counter(delivered(parts.partner_topic(partner)))
        assert set(counts) == set(disclosed(parts, partner).items())
        assert set(counts.values()) == {2}


def test_nothing_is_delivered_after_the_ledger_refused_the_batch(parts: Parts) -> None:
    batch = _batch(parts)
    with parts.db.owner.begin() as conn:
        conn.execute(text(f'REVOKE INSERT ON ledger_entries FROM "{parts.db.app_role}"'))
    with pytest.raises(Exception) as failed:
        parts.handler.handle(batch)
    # An outage: the loop waits and retries the same batch, never commits past it.
    assert outage_of(failed.value) == "database"
    assert ledger_size(parts) == 0
    assert parts.partner_topic("cps") == [] and parts.partner_topic("hmcts") == []
    assert parts.dead_letters() == []

    with parts.db.owner.begin() as conn:
        conn.execute(text(f'GRANT INSERT ON ledger_entries TO "{parts.db.app_role}"'))
    report = parts.handler.handle(batch)  # the retry
    assert report.appended == ledger_size(parts) > 0
    assert sorted(delivered(parts.partner_topic("cps"))) == sorted(disclosed(parts, "cps").items())


def test_nothing_is_on_a_partner_topic_while_the_ledger_transaction_is_open(parts: Parts) -> None:
    batch = _batch(parts)
    done: dict[str, BatchReport | BaseException] = {}

    def handle() -> None:
        try:
            done["report"] = parts.handler.handle(batch)
        except BaseException as exc:  # handed to the test's thread
            done["report"] = exc

    # The ledger's writer lock is per database: hold it briefly, other buses' appends wait too.
    with parts.db.admin.connect() as holder, holder.begin():
        holder.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": ADVISORY_LOCK_KEY})
        worker = threading.Thread(target=handle, daemon=True)
        worker.start()
        deadline = time.monotonic() + 30
        while not waiting_on_advisory_locks(parts):  # the append waits for the writer lock
            assert worker.is_alive() and time.monotonic() < deadline, done
            time.sleep(0.05)
        # The handler is inside its ledger transaction, blocked before its append commits.
        assert parts.partner_topic("cps") == [] and parts.partner_topic("hmcts") == []
        assert ledger_size(parts) == 0
        assert worker.is_alive()
    # The lock is released (the holder's transaction ended): the append commits, then the deliveries go.
    worker.join(60)
    report = done.get("report")
    assert isinstance(report, BatchReport), report
    assert report.appended == ledger_size(parts) > 0
    for partner in ("cps", "hmcts"):
        assert sorted(delivered(parts.partner_topic(partner))) == sorted(disclosed(parts, partner).items())


@pytest.mark.parametrize(
    ("copy_", "between"),
    [
        ("the same content", "nothing"),
        ("other content", "nothing"),
        ("the same content", "a new version of the agreement"),
        ("other content", "a new version of the agreement"),
    ],
)
def test_an_event_in_the_batch_before_is_a_replay_though_it_was_looked_up_before_that_batch_was_recorded(
    parts: Parts, copy_: str, between: str
) -> None:
    """The sender thread's order: batch 2 is read, looked up and decided while batch 1 is
    still on its way to the ledger, so batch 2's look-up cannot see batch 1's entries. An
    event of batch 1 sent again in batch 2 must still be what the ledger recorded: the same
    decisions and disclosure ids (redelivered, or dead-lettered if its content differs),
    never a second decision, even under a new version of its agreement applied in between (I8)."""
    current = agreement(parts, AGREEMENT)
    [record] = shared_custody_events(current, 1)
    again = copy.deepcopy(record)
    if copy_ == "other content":
        again["custody_record_id"] = f"{again['custody_record_id']}B"
    event_id = record["envelope"]["event_id"]
    first = parts.handler.prepare([parts.inbound("custody", record, offset=0)])
    if between != "nothing":
        newer = current.model_copy(update={"version": current.version + 1})
        parts.agreement_set.apply(newer.model_dump_json().encode())
    second = parts.handler.prepare([parts.inbound("custody", again, offset=1)])
    parts.handler.settle(parts.handler.send(first))
    recorded = {r.disclosure_id for r in parts.ledger(event_id=event_id)}
    report = parts.handler.settle(parts.handler.send(second))

    assert {r.disclosure_id for r in parts.ledger(event_id=event_id)} == recorded, "decided again"
    in_ledger = {r.disclosure_id for r in parts.ledger()}
    for partner in ("cps", "hmcts"):
        ids = [d for d, _seq in delivered(parts.partner_topic(partner))]
        assert set(ids) <= in_ledger, "a disclosure the ledger does not hold"
        mine = [d for d in ids if d in recorded]
        assert len(mine) == (2 if copy_ == "the same content" else 1), mine
    conflicts = [h for h in parts.dead_letters() if h[header.ERROR] == b"ConflictingDuplicate"]
    assert len(conflicts) == (0 if copy_ == "the same content" else 1)
    assert report.appended == 0


def test_a_worker_resuming_after_its_partitions_moved_does_not_decide_their_events_again(parts: Parts) -> None:
    """Found by hand (SIGSTOP of one of two workers past the session timeout, an agreement's
    version raised meanwhile): the paused worker had read and decided a batch under version 1;
    the group gave its partitions to the other worker, which decided the same records under
    version 2. Resumed, the first appended its version-1 decisions beside them: one event
    decided twice, under two disclosure ids, both delivered. Staged with two handlers, each
    with its own view of the agreements: the ledger's writer lock must find the event recorded
    and the late batch deliver what the ledger holds (I7, I8)."""
    current = agreement(parts, AGREEMENT)
    records = shared_custody_events(current, 3)
    paused = parts.handler.prepare([parts.inbound("custody", r, offset=i) for i, r in enumerate(records)])

    agreements = parts.agreement_set.current(datetime.now(UTC).date())
    moved_to = AgreementSet(agreements, recipient_catalogue(agreements))
    moved_to.apply(current.model_copy(update={"version": current.version + 1}).model_dump_json().encode())
    other = build_handler(parts.settings, parts.db, moved_to)
    other.handle([parts.inbound("custody", r, offset=i) for i, r in enumerate(records)])
    recorded = {e.disclosure_id for e in parts.ledger()}
    assert {e.agreement_version for e in parts.ledger(agreement_id=AGREEMENT)} == {current.version + 1}

    report = parts.handler.settle(parts.handler.send(paused))  # the paused worker resumes

    assert {e.disclosure_id for e in parts.ledger()} == recorded, "an event decided again"
    assert report.appended == 0
    for partner in ("cps", "hmcts"):
        # What the new owner disclosed, and only that: the late batch knows nothing of version 2
        # (its worker was paused before it was applied), so it sends nothing of it again.
        assert sorted(d for d, _seq in delivered(parts.partner_topic(partner))) == sorted(disclosed(parts, partner))


def test_every_copy_of_a_recorded_event_in_one_batch_is_judged_against_the_ledger(parts: Parts) -> None:
    """A batch holding a reused id first (other content) and then the recorded event sent again.
    Which events are recorded is known only under the ledger's lock, after deciding: the
    impostor, though first in its batch, must be the conflicting one, and the genuine copy's
    recorded disclosures must go out again, under their ids; nothing is appended (I8)."""
    [record] = shared_custody_events(agreement(parts, AGREEMENT), 1)
    parts.handler.handle([parts.inbound("custody", record, offset=0)])
    recorded = disclosed(parts, "cps")
    size = ledger_size(parts)
    impostor = copy.deepcopy(record)
    impostor["custody_record_id"] = f"{impostor['custody_record_id']}B"

    report = parts.handler.handle(
        [parts.inbound("custody", impostor, offset=1), parts.inbound("custody", record, offset=2)]
    )

    assert (report.appended, ledger_size(parts)) == (0, size)
    assert Counter(delivered(parts.partner_topic("cps"))) == {item: 2 for item in recorded.items()}
    [conflict] = [h for h in parts.dead_letters() if h[header.ERROR] == b"ConflictingDuplicate"]
    assert int(conflict[header.SOURCE_OFFSET]) == 1
    assert b"recorded at ledger seq" in conflict[header.REASON]


def test_an_event_that_cannot_be_decided_is_still_replayed_if_the_ledger_holds_it(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """decide() failing (a fault injected here) dead-letters a new event as Undecidable; a
    recorded one is a replay, whose recorded disclosures are delivered again, not lost."""
    recorded_record, new_record = shared_custody_events(agreement(parts, AGREEMENT), 2)
    parts.handler.handle([parts.inbound("custody", recorded_record, offset=0)])
    recorded = disclosed(parts, "cps")
    size = ledger_size(parts)

    def fail(*_args: object, **_kw: object) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(Sharing, "decide", fail)
    report = parts.handler.handle(
        [parts.inbound("custody", recorded_record, offset=1), parts.inbound("custody", new_record, offset=2)]
    )

    assert (report.appended, ledger_size(parts)) == (0, size)
    assert Counter(delivered(parts.partner_topic("cps"))) == {item: 2 for item in recorded.items()}
    [dead] = parts.dead_letters()
    assert (dead[header.ERROR], int(dead[header.SOURCE_OFFSET])) == (b"Undecidable", 2)
    assert dead[header.REASON] == b"could not be decided: ZeroDivisionError"


def test_a_value_too_large_for_the_ledgers_index_is_one_records_fault_not_an_outage(
    parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subject key too long for a btree row: PostgreSQL's SQLSTATE 54000, which psycopg makes an
    OperationalError. Taken for an outage, the loop would retry that batch for ever with the whole bus
    behind it; as one record's fault it splits the batch and dead-letters that record (I10).

    The validation refuses such a key before the ledger sees it (test_bad_input); it is turned off
    here to reach the ledger, the last line of defence."""
    import accord.processor.handler as handler_module

    monkeypatch.setattr(handler_module, "event_problems", lambda *a, **k: [])
    events = shared_custody_events(agreement(parts, AGREEMENT), 3)
    events[1]["subject"]["nhs_number"] = None
    rng = random.Random(54000)  # random, so PostgreSQL cannot compress the index row below its limit
    events[1]["subject"]["pnc_id"] = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(6000))
    from schemas.serde import Catalogue

    batch = [
        parts.inbound_raw(parts.names.event("custody"), Catalogue.default().encode("custody", e), offset=i)
        for i, e in enumerate(events)
    ]
    with pytest.raises(Exception) as failed:
        parts.handler.handle(batch)
    raised = getattr(failed.value, "orig", None) or failed.value  # psycopg's own on the COPY path
    assert getattr(raised, "sqlstate", None) == "54000", raised
    assert outage_of(failed.value) is None
    assert ledger_size(parts) == 0 and parts.partner_topic("cps") == []
    report = parts.handler.handle([batch[0], batch[2]])  # what the loop's split comes down to
    assert report.appended == ledger_size(parts) > 0
