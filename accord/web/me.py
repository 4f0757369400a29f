"""The citizen's page, ``/me``: who was sent information about me, when, why, under what law.

Why: the ledger answers these questions exactly, but in ids and field paths
(``salford-health-visiting``, ``mother.nhs_number``); a citizen needs names, plain
words and their own choices beside them, with a way to change those and to complain.
Everything here is read through ledger.report (the subject's entries, their proofs
against the newest signed checkpoint, deferred entries counted, not shown), the
agreements (names of the parties, purpose, lawful basis, transparency) and the consent
history (consent.store); nothing is queried twice over.

- ``GET /me``: a summary first, then each recipient's entries (sent, not sent,
  told to stop using), what was not sent because of the citizen's choices, how many
  entries are held back and until when, the citizen's choices with a change for
  each recipient whose sharing rests on consent, and who to contact.
- ``GET /me/proofs.json``: a bundle per entry (accord/web/proofs.py) that
  static/proofs.js checks in the browser.
- ``GET /me/consent?recipient=...&decision=deny|permit``: what the change would do
  ("future sharing with X stops; N past disclosures will be retracted"), computed
  from the ledger with the sweeper's own rule (accord.sharing.retraction), before
  the citizen confirms.
- ``POST /me/consent``: records the change through consent.store.record, as the
  consent API does, so the processor applies it to the next event and the
  retraction sweep retracts what it must. CSRF-checked (accord/web/session.py).

The subject is always the signed-in citizen's (the session token's ``sub``); no
route takes a subject from the request. Contact details come from settings
(``ACCORD_DPO_CONTACT``, ``ACCORD_DPO_EMAIL``, ``ACCORD_COMPLAINT_URL``); the complaint
route defaults to the Information Commissioner's Office.

Wiring (one line in accord/web/app.py's create_app)::

    app.include_router(accord.web.me.router)

It reads ``engine``, ``agreements``, ``directory`` (names and recipient classes),
``verifier`` (the ledger's public key), ``settings`` and ``token_secret`` from
``app.state``, as create_app sets them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Engine

from accord.sharing.decide import Context
from accord.sharing.retraction import retractions_for
from accord.web.consent_api import current_view
from accord.web.labels import FieldLabel, field_labels
from accord.web.proofs import bundles_for
from accord.web.session import check_csrf, read_form, require_page_role
from accord.web.templating import render
from agreements.model import Agreement, ConsentMode, IdentifierTreatment, Purpose, deciding, statutory_gateways
from consent import store
from consent.model import ConsentDecision, ConsentRecord, InvalidPreference, KnownScopes, applicable
from consent.tokens import CITIZEN
from ledger.append import StoredEntry
from ledger.proofs import LedgerMismatch
from ledger.report import SHOWN_OUTCOMES, ReportItem, SubjectReport, build_report, collect, subject_entries
from schemas import catalogue

__all__ = [
    "COLLECTED_BY",
    "ICO_COMPLAINTS",
    "Contact",
    "Effect",
    "MePage",
    "build_page",
    "consent_effect",
    "router",
]

log = structlog.get_logger("accord.web.me")

COLLECTED_BY = "citizen-page"
ICO_COMPLAINTS = "https://ico.org.uk/make-a-complaint/"
LONDON = ZoneInfo("Europe/London")

router = APIRouter()

# --- plain words -------------------------------------------------------------------------------

PURPOSE_WORDS: Mapping[str, str] = {
    Purpose.INDIVIDUAL_CARE.value: "your care",
    Purpose.SAFEGUARDING.value: "keeping children and adults at risk safe",
    Purpose.CRIME_PREVENTION_AND_PROSECUTION.value: "preventing crime and prosecuting offences",
    Purpose.VICTIM_SUPPORT.value: "supporting victims of crime",
    Purpose.SERVICE_PLANNING.value: "planning services",
    Purpose.RESEARCH.value: "research",
}

ARTICLE_6_WORDS: Mapping[str, str] = {
    "6(1)(a)": "you agreed to it",
    "6(1)(b)": "it is needed for a contract with you",
    "6(1)(c)": "the law requires it",
    "6(1)(d)": "it protects someone's life",
    "6(1)(e)": "it is part of a public task the law gives this organisation",
    "6(1)(f)": "the organisation has a legitimate interest in it",
}

ARTICLE_9_WORDS: Mapping[str, str] = {  # the condition for health and other sensitive information
    "9(2)(a)": "you gave your explicit agreement",
    "9(2)(b)": "employment and social security law requires it",
    "9(2)(g)": "there is a substantial public interest in it, set out in law",
    "9(2)(h)": "it is needed for health or social care",
    "9(2)(i)": "it is needed for public health",
    "9(2)(j)": "it is for research or statistics in the public interest",
}

# Recipient classes of the partner registry (agreements/partners.yaml), as a consent choice names them.
CLASS_WORDS: Mapping[str, str] = {
    "nhs": "NHS services",
    "prosecution": "prosecutors",
    "courts": "the courts",
    "local_authority": "councils",
    "safeguarding_partnership": "safeguarding partnerships",
    "research_body": "research and planning teams",
    "youth_justice": "youth justice services",
}

_CONSENT_RECORD = re.compile(r"consent record (\d+)")


def when(dt: datetime) -> str:
    """``1 June 2026 at 10:05am``, UK time."""
    local = dt.astimezone(LONDON)
    hour = local.strftime("%I").lstrip("0") or "12"
    return f"{local.day} {local.strftime('%B %Y')} at {hour}:{local.strftime('%M')}{local.strftime('%p').lower()}"


def day(d: date | datetime) -> str:
    """``1 June 2026``."""
    if isinstance(d, datetime):
        d = d.astimezone(LONDON).date()
    return f"{d.day} {d.strftime('%B %Y')}"


def law_words(agreement: Agreement | None, legal_basis: str) -> str:
    """The lawful basis said plainly, from the agreement's structured basis when it has one."""
    lb = agreement.lawful_basis if agreement is not None else None
    if lb is None:
        return legal_basis
    parts = [f"UK data protection law allows it because {ARTICLE_6_WORDS.get(lb.article_6, lb.article_6)}."]
    if lb.article_9:
        sensitive = ARTICLE_9_WORDS.get(lb.article_9, lb.article_9)
        parts.append(f"For health and other sensitive information, it is allowed because {sensitive}.")
    if lb.statutory_gateway:
        parts.append(f"The law that allows this sharing is the {lb.statutory_gateway}.")
    return " ".join(parts)


# --- the page's model --------------------------------------------------------------------------


@dataclass(frozen=True)
class Contact:
    """Who to ask and where to complain."""

    dpo: str  # the data protection officer, as the deployment names them; '' if not configured
    dpo_email: str
    complaint_url: str  # the ICO's form unless the deployment gives another route

    @property
    def is_ico(self) -> bool:
        return self.complaint_url == ICO_COMPLAINTS

    @classmethod
    def from_settings(cls, settings: Any) -> Contact:
        return cls(
            settings.dpo_contact,
            settings.dpo_email,
            settings.complaint_url or ICO_COMPLAINTS,
        )


@dataclass(frozen=True)
class Entry:
    """One ledger entry as the citizen reads it."""

    seq: int
    outcome: str  # DISCLOSED, WITHHELD, RETRACTED
    heading: str  # "Sent on 1 June 2026 at 9:00am"
    on: str  # "1 June 2026 at 9:00am"
    status: str  # "Sent", "Not sent", "Taken back"
    decided_at: datetime
    recipient: str
    recipient_name: str
    provider_name: str
    purpose: str
    law: str
    legal_text: str
    agreement_title: str
    fields: tuple[FieldLabel, ...]
    why: str | None  # for entries not sent and retractions: the reason in plain words
    because_of_choice: bool  # not sent (or retracted) because of the citizen's own consent choice
    received_at: str | None  # the recipient's receipt
    retracted_at: str | None  # a later retraction of this disclosure
    about_sent_on: str | None  # for a retraction: when the disclosure it is about was sent
    proven: bool  # has a proof bundle (covered by a signed checkpoint)
    disclosure_id: str
    basis: tuple[str, bool]  # (agreement key, said to another subject of the event): entries sharing a Basis


@dataclass(frozen=True)
class Basis:
    """Why and under what law a recipient is sent what, once per agreement, with each time it happened.

    An agreement version sends the same fields every time (accord.sharing.decide sends
    its field list), so they are said once here rather than on every entry.
    """

    agreement_title: str
    purpose: str
    law: str
    legal_text: str
    fields: tuple[FieldLabel, ...]  # empty when nothing was ever sent under it
    entries: tuple[Entry, ...]  # newest first


@dataclass(frozen=True)
class Recipient:
    """A recipient's entries, newest first, by agreement, and a sentence summing them up."""

    id: str
    name: str
    entries: tuple[Entry, ...]
    bases: tuple[Basis, ...]
    sent: int
    withheld: int
    retracted: int
    summary: str


@dataclass(frozen=True)
class Deferred:
    count: int
    until: date


@dataclass(frozen=True)
class Choice:
    """A consent preference in force, said plainly."""

    id: int
    text: str
    recorded: str


@dataclass(frozen=True)
class Option:
    """A recipient whose sharing rests on consent: whether it happens now, and the change offered."""

    recipient: str
    name: str
    purposes: str
    sharing: bool  # future events would be shared with it now
    state: str
    action: str  # "Stop sharing with X" / "Allow sharing with X"
    decision: str  # the ConsentDecision value the action records


@dataclass(frozen=True)
class Statutory:
    """A recipient that receives under the law whatever the citizen chooses."""

    name: str
    purposes: str
    law: str


@dataclass(frozen=True)
class MePage:
    subject_key: str
    generated: str
    recipients: tuple[Recipient, ...]
    not_sent_by_choice: tuple[Entry, ...]
    deferred: tuple[Deferred, ...]
    deferred_total: int
    choices: tuple[Choice, ...]
    options: tuple[Option, ...]
    statutory: tuple[Statutory, ...]
    contact: Contact
    proven: int
    unproven: int
    vkey: str | None
    checkpoint_size: int | None
    ledger_problem: bool = False
    summary: tuple[str, ...] = field(default=())


def _reason_words(
    reason: str | None, records: Mapping[int, ConsentRecord], *, other_subject: bool = False
) -> tuple[str | None, bool]:
    """(plain words, whether it was the citizen's choice) for a ledger entry's reason.

    ``other_subject``: the citizen is another person the event names (a baby in the
    mother's natal-care record). Consent there is the main subject's (sharing.md), so a
    consent reason was that person's choice: never worded as the citizen's, and never
    saying whose, or when.
    """
    if not reason:
        return None, False
    if other_subject and reason.startswith(("consent withdrawn", "consent denied", "explicit consent required")):
        return "the consent it rested on was withdrawn", False
    found = _CONSENT_RECORD.search(reason)
    chosen = records.get(int(found.group(1))) if found else None
    said = f" on {day(chosen.recorded_at)}" if chosen is not None else ""
    if reason.startswith("consent withdrawn"):
        return f"you withdrew your agreement{said}", True
    if reason.startswith("consent denied"):
        return f"you said no{said}", True
    if reason.startswith("explicit consent required"):
        return "it needs your agreement, and you had not given it", True
    if reason.startswith("agreement ") and ("suspended" in reason or "revoked" in reason):
        return "the agreement it was shared under was stopped", False
    if reason.startswith("consent overridden"):
        return None, False
    return reason, False


def _pseudonymised(agreement: Agreement | None, event_type: str) -> tuple[str, ...]:
    if agreement is None or agreement.identifier_treatment is not IdentifierTreatment.PSEUDONYMISED:
        return ()
    events = catalogue.default()
    return events[event_type].identifiers if event_type in events else ()


def _entry(
    item: ReportItem,
    *,
    subject_key: str,
    own_key: str,
    agreement: Agreement | None,
    names: Mapping[str, str],
    records: Mapping[int, ConsentRecord],
    retracted: Mapping[str, ReportItem],
    received_by_id: Mapping[str, ReportItem],
) -> Entry:
    status_words = {"DISCLOSED": "Sent", "WITHHELD": "Not sent", "RETRACTED": "Taken back"}
    head_words = {"DISCLOSED": "Sent", "WITHHELD": "Not sent", "RETRACTED": "Told to stop using what was sent"}
    other_subject = own_key != subject_key
    why, chosen = _reason_words(item.reason, records, other_subject=other_subject)
    labels = field_labels(
        item.event_type,
        item.fields,
        pseudonymised=_pseudonymised(agreement, item.event_type),
        other_subject=other_subject,
    )
    later = retracted.get(item.disclosure_id)
    about = received_by_id.get(item.refers_to or "")
    return Entry(
        seq=item.seq,
        outcome=item.outcome,
        heading=f"{head_words.get(item.outcome, item.outcome)} on {when(item.decided_at)}",
        on=when(item.decided_at),
        status=status_words.get(item.outcome, item.outcome),
        decided_at=item.decided_at,
        recipient=item.recipient,
        recipient_name=names.get(item.recipient, item.recipient),
        provider_name=names.get(item.provider, item.provider),
        purpose=PURPOSE_WORDS.get(item.purpose, item.purpose.replace("_", " ")),
        law=law_words(agreement, item.legal_basis),
        legal_text=item.legal_basis,
        agreement_title=item.agreement_title or "an agreement no longer on file",
        fields=tuple(labels),
        why=why,
        because_of_choice=chosen,
        received_at=day(item.acknowledged_at) if item.acknowledged_at else None,
        retracted_at=day(later.decided_at) if later is not None else None,
        about_sent_on=day(about.decided_at) if about is not None else None,
        proven=item.proof is not None,
        disclosure_id=item.disclosure_id,
        basis=(f"{item.agreement_id}@v{item.agreement_version}", other_subject),
    )


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _times(n: int) -> str:
    return "once" if n == 1 else "twice" if n == 2 else f"{n} times"


def _recipient(rid: str, name: str, entries: list[Entry]) -> Recipient:
    entries.sort(key=lambda e: e.seq, reverse=True)
    sent = sum(1 for e in entries if e.outcome == "DISCLOSED")
    withheld = sum(1 for e in entries if e.outcome == "WITHHELD")
    retracted = sum(1 for e in entries if e.outcome == "RETRACTED")
    parts = []
    if sent:
        purposes = sorted({e.purpose for e in entries if e.outcome == "DISCLOSED"})
        parts.append(f"Sent information about you {_times(sent)}, for {' and '.join(purposes)}")
    if withheld:
        parts.append(f"held back {_times(withheld)}")
    if retracted:
        parts.append(f"told {_times(retracted)} to stop using what it was sent")
    summary = "; ".join(parts)
    summary = summary[:1].upper() + summary[1:] + f". Latest: {day(entries[0].decided_at)}."
    by_basis: dict[tuple[str, bool], list[Entry]] = {}
    for e in entries:
        by_basis.setdefault(e.basis, []).append(e)
    bases = tuple(
        Basis(
            group[0].agreement_title,
            group[0].purpose,
            group[0].law,
            group[0].legal_text,
            next((e.fields for e in group if e.fields), ()),
            tuple(group),
        )
        for group in by_basis.values()
    )
    return Recipient(rid, name, tuple(entries), bases, sent, withheld, retracted, summary)


def _choice_text(r: ConsentRecord, names: Mapping[str, str]) -> str:
    verb = "Yes to" if r.decision is ConsentDecision.PERMIT else "No to"
    scope = []
    if r.recipient:
        scope.append(f"sharing with {names.get(r.recipient, r.recipient)}")
    elif r.recipient_class:
        scope.append(f"sharing with {CLASS_WORDS.get(r.recipient_class, r.recipient_class.replace('_', ' '))}")
    else:
        scope.append("sharing")
    if r.purpose:
        scope.append(f"for {PURPOSE_WORDS.get(r.purpose, r.purpose.replace('_', ' '))}")
    until = f" (until {day(r.expires_at)})" if r.expires_at else ""
    return f"{verb} {' '.join(scope)}{until}"


def _options(
    agreements: Sequence[Agreement],
    records: Sequence[ConsentRecord],
    partners: Mapping[str, str],
    names: Mapping[str, str],
    today: date,
    now: datetime,
) -> tuple[list[Option], list[Statutory]]:
    consent_based: dict[str, list[Agreement]] = {}
    statutory: dict[str, list[Agreement]] = {}
    for a in deciding(agreements, today):  # a version a newer one has replaced shares nothing
        if not a.in_force(today):
            continue
        for r in a.recipients:
            (statutory if a.consent_mode is ConsentMode.NOT_REQUIRED else consent_based).setdefault(r, []).append(a)
    options = []
    for rid, under in sorted(consent_based.items(), key=lambda kv: names.get(kv[0], kv[0])):
        name = names.get(rid, rid)
        sharing = False
        for a in under:
            governing = applicable(records, a.purpose.value, rid, partners.get(rid), now)
            if governing is not None:
                sharing = sharing or governing.decision is ConsentDecision.PERMIT
            else:
                sharing = sharing or a.consent_mode is ConsentMode.OPT_OUT
        purposes = " and ".join(sorted({PURPOSE_WORDS[a.purpose.value] for a in under}))
        explicit = all(a.consent_mode is ConsentMode.EXPLICIT for a in under)
        if sharing:
            state = "shared, because you agreed" if explicit else "shared unless you say no"
        else:
            state = "not shared unless you agree" if explicit else "not shared, because you said no"
        options.append(
            Option(
                rid,
                name,
                purposes,
                sharing,
                state,
                f"{'Stop' if sharing else 'Allow'} sharing with {name}",
                (ConsentDecision.DENY if sharing else ConsentDecision.PERMIT).value,
            )
        )
    laws = [
        Statutory(
            names.get(rid, rid),
            " and ".join(sorted({PURPOSE_WORDS[a.purpose.value] for a in under})),
            "; ".join(sorted({a.gateway for a in under})),
        )
        for rid, under in sorted(statutory.items(), key=lambda kv: names.get(kv[0], kv[0]))
    ]
    return options, laws


def _deferred(stored: Sequence[StoredEntry], by_key: Mapping[str, Agreement], today: date) -> list[Deferred]:
    counts: dict[date, int] = {}
    for e in stored:
        d = e.draft
        if d.outcome not in SHOWN_OUTCOMES:
            continue
        a = by_key.get(f"{d.agreement_id}@v{d.agreement_version}")
        if a is not None and not a.transparency.visible_on(today) and a.transparency.until is not None:
            counts[a.transparency.until] = counts.get(a.transparency.until, 0) + 1
    return [Deferred(n, until) for until, n in sorted(counts.items())]


def build_page(
    report: SubjectReport,
    stored: Sequence[StoredEntry],
    agreements: Sequence[Agreement],
    records: Sequence[ConsentRecord],
    partners: Mapping[str, str],
    names: Mapping[str, str],
    contact: Contact,
    vkey: str | None,
    *,
    now: datetime,
    ledger_problem: bool = False,
) -> MePage:
    """The page's model from the report and what it was built from (pure).

    ``partners``: partner id -> recipient class; ``names``: party id -> name (accord.web.names).
    """
    by_key = {a.key: a for a in agreements}
    by_id = {r.id: r for r in records}
    own_key = {e.seq: e.draft.subject_key for e in stored}
    retracted = {i.refers_to: i for i in report.items if i.outcome == "RETRACTED" and i.refers_to}
    disclosed = {i.disclosure_id: i for i in report.items if i.outcome == "DISCLOSED"}
    grouped: dict[str, list[Entry]] = {}
    for item in report.items:
        if (
            item.outcome == "WITHHELD"
            and own_key.get(item.seq, report.subject_key) != report.subject_key
            and _reason_words(item.reason, by_id)[1]
        ):
            # Held back by the choice of the person the record is about (the citizen is
            # another subject of it): nothing of the citizen's was sent, and showing it
            # would tell whoever reads this page what that other person chose.
            continue
        entry = _entry(
            item,
            subject_key=report.subject_key,
            own_key=own_key.get(item.seq, report.subject_key),
            agreement=by_key.get(f"{item.agreement_id}@v{item.agreement_version}"),
            names=names,
            records=by_id,
            retracted=retracted,
            received_by_id=disclosed,
        )
        grouped.setdefault(item.recipient, []).append(entry)
    recipients = sorted(
        (_recipient(rid, names.get(rid, rid), entries) for rid, entries in grouped.items()),
        key=lambda r: r.entries[0].seq,
        reverse=True,
    )
    not_sent = tuple(e for r in recipients for e in r.entries if e.outcome == "WITHHELD" and e.because_of_choice)
    deferred = _deferred(stored, by_key, report.as_of)
    options, statutory = _options(agreements, records, partners, names, report.as_of, now)
    sent = sum(r.sent for r in recipients)
    told = sum(r.retracted for r in recipients)
    receiving = sum(1 for r in recipients if r.sent)
    summary = []
    if sent:
        first = min(e.decided_at for r in recipients for e in r.entries if e.outcome == "DISCLOSED")
        last = max(e.decided_at for r in recipients for e in r.entries if e.outcome == "DISCLOSED")
        span = f"on {day(first)}" if day(first) == day(last) else f"between {day(first)} and {day(last)}"
        summary.append(
            f"{_plural(receiving, 'organisation was', 'organisations were')} sent information about you, "
            f"{_times(sent)} in all, {span}."
        )
    else:
        summary.append("No organisation has been sent information about you through this service.")
    if not_sent:
        summary.append(f"Because of your choices, information was held back {_times(len(not_sent))}.")
    if told == 1:
        summary.append("An organisation was told once to stop using what it was sent.")
    elif told:
        summary.append(f"Organisations were told {_times(told)} to stop using what they were sent.")
    if report.left_out_deferred:
        dates = " and ".join(day(d.until) for d in deferred) or "a later date"
        summary.append(
            f"{_plural(report.left_out_deferred, 'more record is', 'more records are')} not shown yet; "
            f"{'it' if report.left_out_deferred == 1 else 'they'} will appear on {dates}."
        )
    size = None
    if report.checkpoint:
        lines = report.checkpoint.split("\n")
        size = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None
    return MePage(
        subject_key=report.subject_key,
        generated=when(report.generated_at),
        recipients=tuple(recipients),
        not_sent_by_choice=not_sent,
        deferred=tuple(deferred),
        deferred_total=report.left_out_deferred,
        choices=tuple(
            Choice(r.id, _choice_text(r, names), day(r.recorded_at)) for r in reversed(current_view(records, now))
        ),
        options=tuple(options),
        statutory=tuple(statutory),
        contact=contact,
        proven=sum(1 for i in report.items if i.proof is not None) if vkey else 0,
        unproven=report.unproven,
        vkey=vkey,
        checkpoint_size=size,
        ledger_problem=ledger_problem,
        summary=tuple(summary),
    )


# --- what a consent change would do -------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """What recording ``decision`` for ``recipient`` would do, before the citizen confirms."""

    recipient: str
    name: str
    decision: str
    future: str  # "Future sharing with X stops." / "X may be sent ... from now on."
    retracted: int  # past disclosures the retraction sweep will retract
    continues: tuple[str, ...]  # sharing with X that the law requires, which goes on
    # X was sent records about someone else that name the citizen (a baby in the mother's
    # natal-care record): their sharing follows that person's consent, not this change.
    others_decide: bool = False


def records_for_change(
    subject_key: str,
    recipient: str,
    decision: ConsentDecision,
    agreements: Sequence[Agreement],
    records: Sequence[ConsentRecord],
    partners: Mapping[str, str],
    now: datetime,
) -> list[ConsentRecord]:
    """The records a change on /me makes, so that it governs every purpose the recipient receives for.

    The page's choice is about the recipient as a whole. Recorded for the recipient alone, it
    lost to an earlier choice naming the recipient *and* a purpose (the more specific record
    wins), and "Stop sharing" stopped nothing. So beside the recipient-wide record comes one
    per purpose where such an earlier choice would still govern. Ids are provisional (the
    store assigns them, in this order).
    """
    next_id = max((r.id for r in records), default=0) + 1
    made = [ConsentRecord(next_id, subject_key, None, recipient, decision, now)]
    purposes = sorted({a.purpose.value for a in agreements if recipient in a.recipients})
    for purpose in purposes:
        governing = applicable([*records, *made], purpose, recipient, partners.get(recipient), now)
        if governing is not None and governing.decision is not decision:
            made.append(ConsentRecord(next_id + len(made), subject_key, purpose, recipient, decision, now))
    return made


def consent_effect(
    subject_key: str,
    recipient: str,
    decision: ConsentDecision,
    stored: Sequence[StoredEntry],
    agreements: Sequence[Agreement],
    records: Sequence[ConsentRecord],
    partners: Mapping[str, str],
    names: Mapping[str, str],
    now: datetime,
) -> Effect:
    """The effect of a preference for ``recipient`` alone, from the ledger and the consent history.

    N is what the retraction sweep (accord/processor/sweeper.py) would append: its rule,
    :func:`accord.sharing.retraction.retractions_for`, over the subject's own entries
    with the new record added, less the disclosures already retracted, for this recipient.
    """
    name = names.get(recipient, recipient)
    others_decide = any(e.draft.recipient == recipient and e.draft.subject_key != subject_key for e in stored)
    under = [a for a in deciding(agreements, now.date()) if recipient in a.recipients and a.in_force(now.date())]
    statutory, _ = statutory_gateways(agreements, (recipient,), now.date())
    n = 0
    if decision is ConsentDecision.DENY:
        future = f"Future sharing with {name} that rests on your agreement stops."
        made = records_for_change(subject_key, recipient, decision, agreements, records, partners, now)
        already = {e.draft.refers_to for e in stored if e.draft.outcome == "RETRACTED" and e.draft.refers_to}
        mine = [e.draft for e in stored if e.draft.subject_key == subject_key]
        owed = retractions_for(mine, {a.key: a for a in agreements}, [*records, *made], Context(now, dict(partners)))
        n = sum(1 for r in owed if r.entry.recipient == recipient and r.retracts not in already)
    else:
        purposes = " and ".join(
            sorted({PURPOSE_WORDS[a.purpose.value] for a in under if a.consent_mode is not ConsentMode.NOT_REQUIRED})
        )
        future = f"{name} may be sent information about you for {purposes or 'the purposes agreed'} from now on."
    return Effect(recipient, name, decision.value, future, n, statutory, others_decide)


# --- the routes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Services:
    engine: Engine
    agreements: tuple[Agreement, ...]
    partners: Mapping[str, str]  # partner id -> recipient class
    known: KnownScopes
    names: Mapping[str, str]  # party id -> name
    vkey: str | None
    contact: Contact


def _services(request: Request) -> _Services:
    """What the routes read, from the app's state (accord/web/app.py), gathered once per app."""
    state = request.app.state
    found: _Services | None = getattr(state, "accord_me", None)
    if found is not None:
        return found
    directory = state.directory
    verifier = state.verifier
    found = _Services(
        state.engine,
        tuple(state.agreements),
        directory.classes,
        KnownScopes.from_partners(directory.classes),
        directory.names,
        verifier.vkey if verifier is not None else None,
        Contact.from_settings(state.settings),
    )
    state.accord_me = found
    return found


def _subject(request: Request) -> str:
    who = require_page_role(request, CITIZEN)
    assert who.subject is not None  # a citizen token always names its subject (consent.tokens)
    return who.subject


def _read(services: _Services, subject: str, now: datetime) -> tuple[SubjectReport, list[StoredEntry], bool]:
    """The report (with proofs when the ledger still matches its checkpoint) and the subject's entries."""
    by_key = {a.key: a for a in services.agreements}
    stored = subject_entries(services.engine, subject)
    try:
        return collect(services.engine, subject, by_key, now=now, stored=stored), stored, False
    except LedgerMismatch:
        log.warning("me_proofs_unavailable", reason="the ledger does not match its signed checkpoint")
        report = build_report(subject, stored, by_key, {}, None, now.date(), now)
        return report, stored, True


def _records(services: _Services, subject: str) -> list[ConsentRecord]:
    return store.history(services.engine, [subject]).get(subject, [])


@router.get("/me", response_class=HTMLResponse, include_in_schema=False)
def me_page(request: Request) -> Response:
    subject = _subject(request)
    services = _services(request)
    now = datetime.now(UTC)
    report, stored, problem = _read(services, subject, now)
    page = build_page(
        report,
        stored,
        services.agreements,
        _records(services, subject),
        services.partners,
        services.names,
        services.contact,
        services.vkey,
        now=now,
        ledger_problem=problem,
    )
    log.info("me_read", entries=len(report.items), deferred=report.left_out_deferred)
    wanted = request.query_params.get("recorded", "")
    recorded = next((c for c in page.choices if wanted.isdigit() and c.id == int(wanted)), None)
    return render(request, "me.html", {"page": page, "recorded": recorded, "title": "Your information"})


@router.get("/me/proofs.json", include_in_schema=False)
def me_proofs(request: Request) -> JSONResponse:
    subject = _subject(request)
    services = _services(request)
    report, _stored, _problem = _read(services, subject, datetime.now(UTC))
    return JSONResponse({str(k): v for k, v in bundles_for(report.items, services.vkey).items()})


def _change(services: _Services, form: Mapping[str, str]) -> tuple[str, ConsentDecision]:
    recipient = form.get("recipient", "")
    try:
        decision = ConsentDecision(form.get("decision", ""))
    except ValueError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="choose to allow or to stop sharing") from None
    consent_based = {
        r for a in services.agreements if a.consent_mode is not ConsentMode.NOT_REQUIRED for r in a.recipients
    }
    if recipient not in consent_based or recipient not in services.known.recipients:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="that organisation's sharing does not rest on consent")
    return recipient, decision


@router.get("/me/consent", response_class=HTMLResponse, include_in_schema=False)
def me_consent_confirm(request: Request) -> Response:
    subject = _subject(request)
    services = _services(request)
    recipient, decision = _change(services, request.query_params)
    now = datetime.now(UTC)
    effect = consent_effect(
        subject,
        recipient,
        decision,
        subject_entries(services.engine, subject),
        services.agreements,
        _records(services, subject),
        services.partners,
        services.names,
        now,
    )
    return render(request, "me_consent.html", {"effect": effect, "title": "Check your change"})


@router.post("/me/consent", include_in_schema=False)
async def me_consent_record(request: Request) -> Response:
    subject = _subject(request)
    services = _services(request)
    form = await read_form(request)
    check_csrf(request, form)
    recipient, decision = _change(services, form)
    made = records_for_change(
        subject,
        recipient,
        decision,
        services.agreements,
        _records(services, subject),
        services.partners,
        datetime.now(UTC),
    )
    try:
        recorded = [
            store.record(
                services.engine,
                subject,
                decision,
                known=services.known,
                recipient=recipient,
                purpose=wanted.purpose,
                collected_by=COLLECTED_BY,
                method="web-form",
            )
            for wanted in made
        ]
    except InvalidPreference as exc:
        log.info("request_refused", path="/me/consent", status=400, field=exc.field)
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=exc.reason) from None
    first = recorded[0]  # the recipient-wide record: the banner names it
    log.info("consent_recorded", record_id=first.id, records=len(recorded), collected_by=COLLECTED_BY)
    return RedirectResponse(f"/me?recorded={first.id}#your-choices", status_code=status.HTTP_303_SEE_OTHER)
