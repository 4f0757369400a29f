"""Ledger entries like the pipeline's, for the web tests that do not need the pipeline itself.

Entries follow the example agreements (their providers, recipients, purposes and
consent modes), on several days, with every outcome the dashboard counts: disclosed,
withheld for two reasons, retracted, acknowledged by the partner, and not covered.
Subject keys are synthetic NHS numbers that pass Modulus 11.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from agreements import Agreement
from ledger import EntryDraft, append
from producers.nhs_number import generate

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


def _id(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "accord-web-test:" + ":".join(map(str, parts))))


def drafts(
    agreements: list[Agreement], seed: int = 7, days: int = 5, per_day: int = 12, tag: str = ""
) -> list[EntryDraft]:
    """Realistic drafts over ``days`` days from T0: for each event, one decision per recipient it names."""
    rng = random.Random(seed)
    out: list[EntryDraft] = []
    disclosed: list[EntryDraft] = []
    for day in range(days):
        for n in range(per_day):
            a = rng.choice(agreements)
            provider = rng.choice(a.providers)
            event_type = a.event_types[0]
            subject = f"nhs:{generate(rng)}"
            when = T0 + timedelta(days=day, minutes=7 * n + rng.randrange(5))
            event_id = _id(tag, seed, "event", day, n)
            for recipient in a.recipients:
                fields: tuple[str, ...]
                roll = rng.random()
                if a.consent_mode.value == "explicit" and roll < 0.6:
                    outcome, reason, fields = "WITHHELD", "explicit consent required and none recorded", ()
                elif a.consent_mode.value == "opt_out" and roll < 0.25:
                    outcome, reason = "WITHHELD", f"consent denied (consent record {rng.randrange(1, 400)})"
                    fields = ()
                else:
                    outcome, reason, fields = "DISCLOSED", None, tuple(a.fields[event_type])
                d = EntryDraft(
                    disclosure_id=_id(tag, seed, event_id, recipient, a.id, a.version),
                    event_id=event_id,
                    event_type=event_type,
                    provider=provider,
                    recipient=recipient,
                    agreement_id=a.id,
                    agreement_version=a.version,
                    purpose=a.purpose.value,
                    legal_basis=a.legal_basis,
                    outcome=outcome,
                    reason=reason,
                    fields=fields,
                    consent_mode=a.consent_mode.value,
                    consent_version=0,
                    subject_key=subject,
                    decided_at=when,
                    event_digest=hashlib.sha256(event_id.encode()).hexdigest(),
                )
                out.append(d)
                if outcome == "DISCLOSED":
                    disclosed.append(d)
            if n % 5 == 4:
                out.append(
                    EntryDraft.not_covered(
                        _id(tag, seed, "nc", day, n),
                        _id(tag, seed, "nce", day, n),
                        "referral",
                        "salford-schools",
                        f"nhs:{generate(rng)}",
                        0,
                        when + timedelta(seconds=30),
                    )
                )
    # Receipts for most disclosures, and a few retractions (consent withdrawn) a day later.
    for i, d in enumerate(disclosed):
        if i % 4 != 3:
            out.append(
                replace(
                    d,
                    disclosure_id=_id("receipt", d.disclosure_id),
                    outcome="RECEIVED",
                    reason="acknowledged by the partner",
                    fields=(),
                    refers_to=d.disclosure_id,
                    decided_at=d.decided_at + timedelta(minutes=1),
                )
            )
        if i % 9 == 5:
            out.append(
                replace(
                    d,
                    disclosure_id=_id("retract", d.disclosure_id),
                    outcome="RETRACTED",
                    reason="consent withdrawn: consent denied (consent record 77)",
                    refers_to=d.disclosure_id,
                    decided_at=d.decided_at + timedelta(days=1, hours=1),
                )
            )
    out.sort(key=lambda d: d.decided_at)
    return out


def fill(engine: Engine, agreements: list[Agreement], **kw: object) -> list[EntryDraft]:
    made = drafts(agreements, **kw)  # type: ignore[arg-type]
    append(engine, made)
    return made
