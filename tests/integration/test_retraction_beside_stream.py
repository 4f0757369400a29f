"""A suspended agreement's disclosures retracted beside a live stream, with kill -9 half way through.

The processor retracts on a thread of its own and sends the notices from its loop
(accord/processor/background.py). This test tries to break what that split must keep,
reading only the ledger (as the owner) and the partner topics (in offset order):

- every disclosure made under the suspended agreement is retracted once, by however
  many processes it took, and no retraction is recorded twice (I7);
- on each partner's topic, every retraction notice comes after the disclosure it
  retracts (the loop settles its batch in flight before it sends), and every retraction
  in the ledger has its notice, each copy with the same ledger seq (I1, I8);
- the stream's events published during the retraction are all decided, none of them
  under the suspended agreement (I2, I9), and the ledger verifies (I3).
"""

from __future__ import annotations

import random
import signal
import time
from collections import Counter, defaultdict

from sqlalchemy import func, select

from accord.dev.drain import wait_for_group
from accord.processor.agreement_feed import publish_agreements
from agreements import Status, load_dir
from bus import headers as header
from ledger import LedgerEntry, verify
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings, read_topic
from tests.conftest import fresh_role_database
from tests.fault_load import Stream
from tests.faults import ledger_rows

SUSPENDED = "custody-to-prosecution"
BEFORE = 4000  # events decided before the suspension: about 2,000 disclosures under it, 4 chunks
DURING = 1500  # events streamed while it is retracted


def _retracted(bus: Bus) -> int:
    with bus.engine.connect() as conn:
        query = select(func.count()).where(LedgerEntry.agreement_id == SUSPENDED, LedgerEntry.outcome == "RETRACTED")
        return int(conn.execute(query).scalar_one())


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_retraction_beside_a_stream_survives_kill_9_and_each_notice_follows_its_disclosure(
    broker: str, tmp_path_factory
) -> None:
    seed = random.SystemRandom().randrange(1 << 30)
    before = build_scenario(BEFORE, seed=seed)
    during = build_scenario(DURING, seed=seed + 1)
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("beside"))
        # Resting nine times each chunk's length, the retraction takes seconds: the kill lands in it.
        settings = settings.model_copy(update={"retraction_busy": 0.1})
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()
        bus.start_processor()
        try:
            bus.publish([(e.event_type, e.record) for e in before.events], timeout=180)
            owed = {
                r.disclosure_id: r for r in ledger_rows(bus) if r.agreement_id == SUSPENDED and r.outcome == "DISCLOSED"
            }
            assert len(owed) > 1000, "too few disclosures for a retraction of several chunks"

            stream = Stream(settings, during, seed, events_per_s=150, resend_every=1_000_000, resend_gap=0)
            stream.start()
            current = next(a for a in bus.agreements if a.id == SUSPENDED)
            suspended = current.model_copy(update={"version": current.version + 1, "status": Status.SUSPENDED})
            publish_agreements(settings, [suspended])

            # kill -9 once the first chunk is in the ledger and before the last
            _wait(lambda: _retracted(bus) >= 500, 120, "no retraction within 120 s of the suspension")
            assert bus.processor is not None
            bus.processor.send_signal(signal.SIGKILL)
            bus.processor.wait()
            at_kill = _retracted(bus)
            assert at_kill < len(owed), "the retraction finished before the kill: nothing was cut short"

            bus.start_processor()
            stream.join()
            assert not stream.report.failed
            wait_for_group(settings, settings.processor_group, stream.report.end_offsets, timeout=180)
            _wait(lambda: _retracted(bus) >= len(owed), 180, "not every disclosure was retracted")
            time.sleep(3 * settings.retraction_interval_s + 2)  # the last notices
            assert bus.processor.poll() is None, "the processor died on its own"
        finally:
            bus.stop_processor()

        rows = ledger_rows(bus)
        # Each disclosure under the suspended agreement retracted once; nothing else retracted twice.
        retractions = [r for r in rows if r.outcome == "RETRACTED"]
        assert not [d for d, n in Counter(r.refers_to for r in retractions).items() if n > 1]
        under = {r.disclosure_id for r in rows if r.agreement_id == SUSPENDED and r.outcome == "DISCLOSED"}
        assert under >= set(owed)  # any decided before the processor applied the suspension count too
        assert {r.refers_to for r in retractions if r.agreement_id == SUSPENDED} == under
        assert not [r for r in rows if r.agreement_id == SUSPENDED and r.agreement_version >= suspended.version]
        # The stream was decided during the retraction, none of it under the suspended version.
        decided = {r.event_id for r in rows}
        assert {e.record["envelope"]["event_id"] for e in during.events} <= decided

        # The partner topics, in offset order: a notice after its disclosure, every retraction noticed.
        later: dict[str, set[str]] = defaultdict(set)  # disclosures first seen after their notice
        pending_notice: dict[str, set[str]] = defaultdict(set)
        for recipient in sorted({r.recipient for r in retractions}):
            records = read_topic(settings, bus.names.partner(recipient, "custody"))
            delivered: set[str] = set()
            notices: dict[str, set[bytes]] = {}
            followed = 0  # notices whose disclosure is on the topic before them
            for headers, _value in records:
                disclosure_id = headers[header.DISCLOSURE_ID].decode()
                if headers.get(header.KIND) == b"retraction":
                    retracts = headers[header.RETRACTS].decode()
                    followed += retracts in delivered
                    notices.setdefault(disclosure_id, set()).add(headers[header.LEDGER_SEQ])
                    pending_notice[recipient].add(retracts)
                else:
                    # first seen after its notice: the notice overtook it
                    if disclosure_id in pending_notice[recipient] and disclosure_id not in delivered:
                        later[recipient].add(disclosure_id)
                    delivered.add(disclosure_id)
            mine = {r.disclosure_id: r for r in retractions if r.recipient == recipient}
            assert set(notices) == set(mine), f"{recipient}: notices and the ledger's retractions differ"
            for disclosure_id, seqs in notices.items():
                assert seqs == {str(mine[disclosure_id].seq).encode()}, "a notice sent again with another seq"
            # Only the batch the kill cut short may never have reached the topic.
            assert followed >= len(mine) - settings.batch_size, (recipient, followed, len(mine))
            assert not later[recipient], f"{recipient}: {len(later[recipient])} disclosures after their notices"
        assert verify(db.owner).ok
