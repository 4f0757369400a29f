"""The retraction sweep works in bounded chunks: a suspended agreement with many disclosures
is retracted a chunk per pass, each disclosure exactly once, with one notice each.

In-process, on a real PostgreSQL (as the app role) and the embedded broker: the sweeper
is driven pass by pass, and what it did is read from the ledger and the partner topic.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from accord.processor.agreement_feed import AgreementSet
from accord.processor.sweeper import RetractionSweeper
from agreements import Agreement, Status, load_dir
from agreements.recipient_schemas import recipient_catalogue
from bus import kafka
from bus.errors import NotDelivered
from bus.settings import Settings
from ledger import EntryDraft, LedgerEntry, append, verify
from tests.bus import Bus, make_settings, read_topic
from tests.conftest import RoleDatabase, fresh_role_database
from tests.ports import free_port

AGREEMENT = "custody-to-prosecution"
DISCLOSURES = 1_300
CHUNK = 200
WINDOW = 700  # ledger seqs read per pass: several windows, some with no match at all


def _disclosures(agreement, n: int) -> list[EntryDraft]:
    now = datetime.now(UTC)
    drafts = []
    for i in range(n):
        recipient = ("cps", "hmcts")[i % 2]
        drafts.append(
            EntryDraft(
                disclosure_id=str(uuid.uuid4()),
                event_id=str(uuid.uuid4()),
                event_type="custody",
                provider="gmp",
                recipient=recipient,
                agreement_id=agreement.id,
                agreement_version=agreement.version,
                purpose=agreement.purpose.value,
                legal_basis=agreement.legal_basis,
                outcome="DISCLOSED",
                reason=None,
                fields=("subject.pnc_id",),
                consent_mode=agreement.consent_mode.value,
                consent_version=0,
                subject_key=f"pnc:2025/{i:07d}A",
                decided_at=now,
                event_digest="ab" * 32,
            )
        )
    return drafts


@contextmanager
def _bus_on_a_fresh_ledger(broker: str, folder: Path) -> Iterator[tuple[RoleDatabase, Settings, list[Agreement], Bus]]:
    """A ledger of its own (owner and app roles), the settings, the agreements and the bus's topics."""
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, folder)
        agreements = load_dir(settings.agreements_dir)
        bus = Bus(settings, db.owner, agreements)
        bus.create_topics()
        yield db, settings, agreements, bus


def _retracted(db: RoleDatabase) -> Counter[str]:
    """How often each disclosure was retracted in the ledger."""
    with db.owner.connect() as conn:
        rows = conn.execute(select(LedgerEntry.refers_to).where(LedgerEntry.outcome == "RETRACTED"))
        return Counter(r for (r,) in rows if r is not None)


def test_a_suspended_agreement_is_retracted_in_bounded_chunks_once_each(broker, tmp_path_factory) -> None:
    with _bus_on_a_fresh_ledger(broker, tmp_path_factory.mktemp("chunks")) as (db, settings, agreements, bus):
        current = next(a for a in agreements if a.id == AGREEMENT)
        # Other decisions in between, so the chunks must skip what is not theirs.
        append(db.app, _disclosures(next(a for a in agreements if a.id != AGREEMENT), 150))
        append(db.app, _disclosures(current, DISCLOSURES))
        suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
        agreement_set = AgreementSet([*agreements, suspended], recipient_catalogue([*agreements, suspended]))
        sweeper = RetractionSweeper(
            db.app, agreement_set, kafka.producer(settings), bus.names, batch=CHUNK, window=WINDOW
        )

        def retracted() -> int:
            return _retracted(db).total()

        passes, seen = 0, []
        while sweeper.sweep():
            passes += 1
            seen.append(retracted())
            assert passes < 50, "the sweep never finished"
        seen.append(retracted())
        # Each pass retracted at most one chunk; all were retracted in the end.
        steps = [b - a for a, b in zip([0, *seen], seen, strict=False)]
        assert max(steps) <= CHUNK, steps
        assert seen[-1] == DISCLOSURES
        assert passes >= DISCLOSURES // CHUNK

        # Once each in the ledger, and one notice each on the partners' topics.
        with db.owner.connect() as conn:
            refers = Counter(
                r for (r,) in conn.execute(select(LedgerEntry.refers_to).where(LedgerEntry.outcome == "RETRACTED"))
            )
        assert len(refers) == DISCLOSURES and set(refers.values()) == {1}
        notices: Counter[str] = Counter()
        for recipient in ("cps", "hmcts"):
            for headers, _value in read_topic(settings, bus.names.partner(recipient, "custody")):
                if headers.get("accord.kind") == b"retraction":
                    notices[headers["accord.retracts"].decode()] += 1
        assert set(notices) == set(refers) and set(notices.values()) == {1}

        # Another pass, and a new sweeper (a restart), find nothing more to do.
        assert sweeper.sweep() is False
        again = RetractionSweeper(db.app, agreement_set, kafka.producer(settings), bus.names, batch=CHUNK)
        assert again.sweep() is False
        assert retracted() == DISCLOSURES
        assert verify(db.owner).ok


def test_versions_ended_at_different_times_share_one_scan_and_each_disclosure_is_retracted_once(
    broker, tmp_path_factory
) -> None:
    """One agreement suspended (v2), reinstated (v3) and suspended again (v4), and another
    revoked, swept in small chunks and windows: the one scan from the furthest behind must
    give each version what it ended, no more, and never retract a disclosure twice."""
    with _bus_on_a_fresh_ledger(broker, tmp_path_factory.mktemp("versions")) as (db, settings, agreements, bus):
        v1 = next(a for a in agreements if a.id == AGREEMENT)
        other = next(a for a in agreements if a.id != AGREEMENT)
        versions = {n: v1.model_copy(update={"version": n}) for n in (2, 3, 4)}
        versions[2] = versions[2].model_copy(update={"status": Status.SUSPENDED})
        versions[4] = versions[4].model_copy(update={"status": Status.SUSPENDED})
        revoked = other.model_copy(update={"version": other.version + 1, "status": Status.REVOKED})

        def sweeper_over(extra: list) -> RetractionSweeper:
            held = AgreementSet([*agreements, *extra], recipient_catalogue([*agreements, *extra]))
            return RetractionSweeper(
                db.app, held, kafka.producer(settings), bus.names, batch=CHUNK, window=WINDOW, persist_every_s=3600
            )

        def sweep(s: RetractionSweeper) -> None:
            passes = 0
            while s.sweep():
                passes += 1
                assert passes < 100, "the sweep never finished"

        def retracted() -> Counter[str]:
            return _retracted(db)

        under_v1 = _disclosures(v1, 600)
        under_other = _disclosures(other, 400)
        append(db.app, under_v1[:300] + under_other[:200] + under_v1[300:])
        first = sweeper_over([versions[2]])
        sweep(first)
        assert set(retracted()) == {d.disclosure_id for d in under_v1}
        # Reinstated: what v3 discloses is not v2's to retract, however often the sweep runs.
        under_v3 = _disclosures(versions[3], 500)
        append(db.app, under_v3[:250] + under_other[200:] + under_v3[250:])
        second = sweeper_over([versions[2], versions[3]])
        sweep(second)
        assert set(retracted()) == {d.disclosure_id for d in under_v1}
        # v4 suspends again and the other agreement is revoked: their cursors start at 0, v2's at the head.
        third = sweeper_over([versions[2], versions[3], versions[4], revoked])
        sweep(third)
        owed = {d.disclosure_id for d in [*under_v1, *under_v3, *under_other]}
        counts = retracted()
        assert set(counts) == owed and set(counts.values()) == {1}, (len(counts), len(owed))
        # A restart, the cursors behind what was scanned (persist_every_s), appends nothing.
        sweep(sweeper_over([versions[2], versions[3], versions[4], revoked]))
        assert retracted() == counts
        assert verify(db.owner).ok


def test_notices_read_but_not_sent_when_the_broker_fails_are_sent_after_a_restart(broker, tmp_path_factory) -> None:
    """The processor's split: ``scan`` reads chunks of notices ahead of ``send_notices``. The broker
    fails under the sender, the scan goes on and writes the notice cursor, then the process dies:
    a new sweeper must still send every notice (the cursor stands where the broker took them)."""
    with _bus_on_a_fresh_ledger(broker, tmp_path_factory.mktemp("unsent")) as (db, settings, agreements, bus):
        current = next(a for a in agreements if a.id == AGREEMENT)
        append(db.app, _disclosures(current, 3 * CHUNK))
        suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
        agreement_set = AgreementSet([*agreements, suspended], recipient_catalogue([*agreements, suspended]))
        # A broker that is not there: the producer's flush fails, as in an outage.
        gone = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
        sweeper = RetractionSweeper(
            db.app,
            agreement_set,
            kafka.producer(gone, **{"message.timeout.ms": 500}),
            bus.names,
            batch=CHUNK,
            window=WINDOW,
            persist_every_s=0.0,
        )
        sweeper.scan()  # chunk 1 handed over
        sweeper.scan()  # chunk 2 waits behind it
        with pytest.raises(NotDelivered):
            sweeper.send_notices()  # chunk 1 is not delivered
        for _ in range(3):  # the scan goes on (retracting; chunk 3 held back), writing the cursor each time
            sweeper.scan()
        assert _retracted(db).total() == 3 * CHUNK

        again = RetractionSweeper(db.app, agreement_set, kafka.producer(settings), bus.names, batch=CHUNK)
        while again.sweep():
            pass
        notices: Counter[str] = Counter()
        for recipient in ("cps", "hmcts"):
            for headers, _value in read_topic(settings, bus.names.partner(recipient, "custody")):
                if headers.get("accord.kind") == b"retraction":
                    notices[headers["accord.retracts"].decode()] += 1
        assert set(notices) == set(_retracted(db)), f"{len(set(_retracted(db)) - set(notices))} notices never sent"
