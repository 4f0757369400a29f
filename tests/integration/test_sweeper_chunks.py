"""The retraction sweep works in bounded chunks: a suspended agreement with many disclosures
is retracted a chunk per pass, each disclosure exactly once, with one notice each.

In-process, on a real PostgreSQL (as the app role) and the embedded broker: the sweeper
is driven pass by pass, and what it did is read from the ledger and the partner topic.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

from sqlalchemy import func, select

from accord.processor.agreement_feed import AgreementSet
from accord.processor.sweeper import RetractionSweeper
from agreements import Status, load_dir
from agreements.recipient_schemas import recipient_catalogue
from bus import kafka
from ledger import EntryDraft, LedgerEntry, append, verify
from tests.bus import Bus, make_settings, read_topic
from tests.conftest import fresh_role_database

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


def test_a_suspended_agreement_is_retracted_in_bounded_chunks_once_each(broker, tmp_path_factory) -> None:
    with fresh_role_database() as db:
        settings = make_settings(broker, db.app_url, tmp_path_factory.mktemp("chunks"))
        agreements = load_dir(settings.agreements_dir)
        bus = Bus(settings, db.owner, agreements)
        bus.create_topics()
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
            with db.owner.connect() as conn:
                return conn.execute(
                    select(func.count()).select_from(LedgerEntry).where(LedgerEntry.outcome == "RETRACTED")
                ).scalar_one()

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
