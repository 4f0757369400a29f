"""A citizen's subject report: every sharing decision about them, each with its proof.

``collect`` reads the ledger (the subject's entries, their agreements, inclusion
proofs against the newest signed checkpoint); ``render_json`` and ``render_html``
are pure functions of what it returns. It reads the subject's rows through indexes
(``subject_key``, ledger/subject_refs.py, ``refers_to``) and O(log N) tile rows per
proof (ledger/tiles.py), never the whole ledger.

The subject is any subject key the ledger holds (``nhs:``, ``pnc:``, ``local:``;
schemas.subject_keys, so a bare NHS number works too). An entry is about the
subject when the key is its ``subject_key`` or one of its ``subjects`` (the
event's other people, e.g. the baby in a natal-care event): a person is found
wherever their identifier was shared. Retractions and receipts of those
entries are included whatever key they were filed under.

Entries under an agreement whose transparency is deferred (agreements/model.py
``Transparency``) are left out until its date, and the report says how many were
left out, never which.

The HTML is one self-contained page (no scripts, no external resources) and every
value from the ledger is escaped.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, select

from ledger.entry import StoredEntry, stored_entry
from ledger.subject_refs import LedgerSubjectRef
from ledger.tables import LedgerEntry
from ledger.tiles import stored_end
from schemas.subject_keys import InvalidSubjectKey, normalise

__all__ = [
    "InvalidSubjectKey",
    "ReportItem",
    "SubjectReport",
    "build_report",
    "collect",
    "render_html",
    "render_json",
    "subject_entries",
]

SHOWN_OUTCOMES = ("DISCLOSED", "WITHHELD", "RETRACTED")


_IN_CHUNK = 1000  # bound parameters per IN list


def _like_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def subject_entries(engine: Engine, subject_key: str) -> list[StoredEntry]:
    """Every entry about ``subject_key`` (a normalised key), in seq order.

    Main subject: the ``subject_key`` index. One of ``subjects``: the subject index
    (ledger/subject_refs.py) for the entries the tiles cover, and for the few after
    them (newer than the newest checkpoint) the JSON text pre-filtered with LIKE on a
    ``seq >`` range; every candidate is checked exactly. Then every entry that refers
    to one of those (retractions, receipts), whoever it was filed under. So the rows
    read are the subject's own, never the whole ledger's.
    """
    t = LedgerEntry.__table__
    pattern = f"%{_like_literal(json.dumps(subject_key, ensure_ascii=False))}%"
    refs = LedgerSubjectRef.__table__
    with engine.connect() as conn:
        indexed = stored_end(conn)
        # Both bounds on the tail: a planner without statistics yet takes a closed seq range
        # as narrow (an index scan), an open one as a third of the table (a full scan).
        head = conn.execute(select(t.c.seq).order_by(t.c.seq.desc()).limit(1)).scalar() or 0
        queries = (
            select(t).where(t.c.subject_key == subject_key),
            select(t).where(t.c.seq.in_(select(refs.c.seq).where(refs.c.subject_key == subject_key))),
            select(t).where(t.c.seq > indexed, t.c.seq <= head, t.c.subjects.like(pattern, escape="\\")),
        )
        found = {
            e.seq: e
            for stmt in queries
            for e in map(stored_entry, conn.execute(stmt))
            if e.draft.subject_key == subject_key or subject_key in e.draft.subjects
        }
        ids = sorted({e.draft.disclosure_id for e in found.values()})
        for i in range(0, len(ids), _IN_CHUNK):
            for row in conn.execute(select(t).where(t.c.refers_to.in_(ids[i : i + _IN_CHUNK]))):
                found.setdefault(row.seq, stored_entry(row))
    return [found[seq] for seq in sorted(found)]


@dataclass(frozen=True)
class ReportItem:
    """One decision as the citizen sees it."""

    seq: int
    outcome: str  # DISCLOSED, WITHHELD or RETRACTED
    decided_at: datetime
    recipient: str
    purpose: str
    legal_basis: str
    agreement_id: str
    agreement_version: int
    agreement_title: str | None  # None when the agreement is not in the agreements folder
    event_type: str
    provider: str
    fields: tuple[str, ...]
    consent_mode: str
    consent_version: int
    reason: str | None
    refers_to: str | None
    disclosure_id: str
    acknowledged_at: datetime | None  # the recipient's receipt, if any
    proof: dict[str, Any] | None  # ledger.proofs.InclusionProof.to_dict(); None if no checkpoint covers it yet

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "outcome": self.outcome,
            "decided_at": self.decided_at.isoformat(),
            "recipient": self.recipient,
            "purpose": self.purpose,
            "legal_basis": self.legal_basis,
            "agreement": {"id": self.agreement_id, "version": self.agreement_version, "title": self.agreement_title},
            "event_type": self.event_type,
            "provider": self.provider,
            "fields": list(self.fields),
            "consent": {"mode": self.consent_mode, "version": self.consent_version},
            "reason": self.reason,
            "refers_to": self.refers_to,
            "disclosure_id": self.disclosure_id,
            "acknowledged_at": self.acknowledged_at.isoformat() if self.acknowledged_at else None,
            "proof": self.proof,
        }


_KIND_WORDS = {"nhs": "NHS number", "pnc": "Police National Computer id", "local": "record"}


def _described(subject_key: str) -> str:
    """How the report names the subject to the person: ``NHS number 943…``, ``record X at agency``."""
    scheme, _, rest = subject_key.partition(":")
    if scheme == "local":
        agency, _, local_id = rest.partition(":")
        return f"record {local_id} at {agency}"
    return f"{_KIND_WORDS.get(scheme, scheme)} {rest}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class SubjectReport:
    subject_key: str  # normalised, e.g. nhs:9434765919, pnc:25/123456A, local:salford-council:LCS123456
    as_of: date
    generated_at: datetime
    items: tuple[ReportItem, ...]
    left_out_deferred: int  # entries under deferred-transparency agreements, not shown yet
    checkpoint: str | None  # the signed note the proofs are against
    unproven: int = 0  # shown entries newer than the newest checkpoint
    notes: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return self.subject_key.partition(":")[0]

    def to_dict(self) -> dict[str, Any]:
        subject: dict[str, str] = {"key": self.subject_key, "kind": self.kind}
        if self.kind == "nhs":
            subject["nhs_number"] = self.subject_key.partition(":")[2]
        return {
            "subject": subject,
            "as_of": self.as_of.isoformat(),
            "generated_at": self.generated_at.isoformat(),
            "entries": [i.to_dict() for i in self.items],
            "left_out_deferred": self.left_out_deferred,
            "unproven": self.unproven,
            "checkpoint": self.checkpoint,
            "notes": list(self.notes),
        }


def _visible(entry: StoredEntry, agreements: Mapping[str, Any], day: date) -> bool:
    agreement = agreements.get(f"{entry.draft.agreement_id}@v{entry.draft.agreement_version}")
    # An agreement no longer on file cannot say it is deferred: the citizen sees the entry.
    return agreement is None or agreement.transparency.visible_on(day)


def build_report(
    subject_key: str,
    stored: Sequence[StoredEntry],
    agreements: Mapping[str, Any],
    proofs: Mapping[int, dict[str, Any]],
    checkpoint: str | None,
    as_of: date,
    generated_at: datetime,
) -> SubjectReport:
    """The report from the subject's ledger entries (pure). ``agreements``: key ``id@vN`` -> Agreement."""
    acknowledged = {
        e.draft.refers_to: e.draft.decided_at for e in stored if e.draft.outcome == "RECEIVED" and e.draft.refers_to
    }
    items: list[ReportItem] = []
    hidden = 0
    for e in stored:
        d = e.draft
        if d.outcome not in SHOWN_OUTCOMES:
            continue
        if not _visible(e, agreements, as_of):
            hidden += 1
            continue
        agreement = agreements.get(f"{d.agreement_id}@v{d.agreement_version}")
        items.append(
            ReportItem(
                e.seq,
                d.outcome,
                d.decided_at,
                d.recipient,
                d.purpose,
                d.legal_basis,
                d.agreement_id,
                d.agreement_version,
                agreement.title if agreement is not None else None,
                d.event_type,
                d.provider,
                d.fields,
                d.consent_mode,
                d.consent_version,
                d.reason,
                d.refers_to,
                d.disclosure_id,
                acknowledged.get(d.disclosure_id),
                proofs.get(e.seq),
            )
        )
    unproven = sum(1 for i in items if i.proof is None)
    notes = []
    if unproven:
        notes.append(
            f"{unproven} of the entries shown {'is' if unproven == 1 else 'are'} newer than the newest signed "
            "checkpoint; ask again later for their proofs"
        )
    return SubjectReport(subject_key, as_of, generated_at, tuple(items), hidden, checkpoint, unproven, tuple(notes))


def collect(
    engine: Engine,
    subject: str,
    agreements: Mapping[str, Any],
    *,
    as_of: date | None = None,
    now: datetime | None = None,
    on_progress: Callable[[int], None] | None = None,
    stored: Sequence[StoredEntry] | None = None,
) -> SubjectReport:
    """Read the subject's entries and prove each shown one against the newest checkpoint.

    ``on_progress(1)`` is called after each entry is proved. ``stored``: the subject's
    entries as ``subject_entries`` read them just now, for a caller that needs them too
    (the citizen's page), so they are not read twice.

    ``subject``: any form :func:`schemas.subject_keys.normalise` accepts (a bare NHS
    number included); :class:`InvalidSubjectKey` otherwise.
    """
    from ledger.proofs import NotCovered, latest_checkpoint, prove_entries

    key = normalise(subject)
    now = now or datetime.now(UTC)
    day = as_of or now.date()
    if stored is None:
        stored = subject_entries(engine, key)
    shown = [e.seq for e in stored if e.draft.outcome in SHOWN_OUTCOMES and _visible(e, agreements, day)]
    checkpoint = latest_checkpoint(engine)
    proofs: dict[int, dict[str, Any]] = {}
    note = None
    if checkpoint is not None:
        covered = [s for s in shown if s <= checkpoint.tree_size]
        try:
            for p in prove_entries(engine, covered, checkpoint):
                proofs[p.seq] = p.to_dict()
                note = p.checkpoint
                if on_progress is not None:
                    on_progress(1)
        except NotCovered:
            proofs = {}
        note = note or checkpoint.note
    return build_report(key, stored, agreements, proofs, note, day, now)


def render_json(report: SubjectReport) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"


_OUTCOME_WORDS = {
    "DISCLOSED": "Shared",
    "WITHHELD": "Not shared",
    "RETRACTED": "Asked to stop using",
}

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Arial,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1d;line-height:1.5}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin:0}
.entry{border:1px solid #bbb;border-radius:6px;padding:1rem;margin:1rem 0}
.DISCLOSED{border-left:6px solid #005eb8}.WITHHELD{border-left:6px solid #768692}.RETRACTED{border-left:6px solid #da291c}
dl{display:grid;grid-template-columns:12rem 1fr;gap:.2rem 1rem;margin:.6rem 0}dt{font-weight:600}dd{margin:0}
code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;overflow-wrap:anywhere;white-space:pre-wrap}
.note{background:#fff4d6;padding:.6rem 1rem;border-radius:6px}
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _when(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%d %B %Y, %H:%M UTC")


def _consent(item: ReportItem) -> str:
    mode = item.consent_mode.replace("_", " ")
    state = (
        f"your consent record {item.consent_version} applied" if item.consent_version else "no consent record of yours"
    )
    return f"{mode}; {state}"


def _item_html(item: ReportItem) -> str:
    title = item.agreement_title or "(agreement no longer on file)"
    rows = [
        ("When", _when(item.decided_at)),
        ("Recipient", item.recipient),
        ("From", item.provider),
        ("Purpose", item.purpose.replace("_", " ")),
        ("Legal basis", item.legal_basis),
        ("Agreement", f"{title} (version {item.agreement_version}, id {item.agreement_id})"),
        ("Information shared", ", ".join(item.fields) if item.fields else "none"),
        ("Consent", _consent(item)),
    ]
    if item.reason:
        rows.append(("Why", item.reason))
    if item.refers_to:
        rows.append(("About the earlier sharing", item.refers_to))
    if item.acknowledged_at:
        rows.append(("Recipient confirmed receipt", _when(item.acknowledged_at)))
    rows.append(("Ledger entry", f"number {item.seq}, id {item.disclosure_id}"))
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows)
    if item.proof is not None:
        proof = f"<details><summary>Proof this entry is in the signed ledger</summary><pre>{_e(json.dumps(item.proof, indent=2))}</pre></details>"
    else:
        proof = "<p>No proof yet: this entry is newer than the ledger's latest signed checkpoint.</p>"
    heading = _OUTCOME_WORDS.get(item.outcome, item.outcome)
    return (
        f'<section class="entry {_e(item.outcome)}"><h2>{_e(heading)} with {_e(item.recipient)}</h2>'
        f"<dl>{body}</dl>{proof}</section>"
    )


def render_html(report: SubjectReport) -> str:
    """One self-contained, escaped page a citizen can read."""
    left_out = ""
    if report.left_out_deferred:
        left_out = (
            f'<p class="note">{report.left_out_deferred} further '
            f"{'entry is' if report.left_out_deferred == 1 else 'entries are'} not shown yet: the agreement "
            "they were made under delays telling you (for example while it could put someone at risk or "
            "prejudice an enquiry). They will appear here after that agreement's date.</p>"
        )
    notes = "".join(f'<p class="note">{_e(n)}</p>' for n in report.notes)
    items = "".join(_item_html(i) for i in report.items) or "<p>No sharing decisions about you are recorded.</p>"
    checkpoint = (
        f"<details><summary>The signed checkpoint the proofs refer to</summary><pre>{_e(report.checkpoint)}</pre></details>"
        if report.checkpoint
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>Who has your information: {_e(_described(report.subject_key))}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Who has been sent information about you</h1>"
        f"<p>{_e(_sentence(_described(report.subject_key)))}. This report lists every decision recorded in the ledger "
        f"to share, or not to share, information about you, as of {_e(report.as_of.isoformat())}. "
        f"{len(report.items)} {'decision is' if len(report.items) == 1 else 'decisions are'} shown.</p>"
        f"{left_out}{notes}{items}{checkpoint}"
        f"<p><small>Generated {_e(_when(report.generated_at))}. Each proof can be checked by anyone with the "
        "ledger's public key (see docs/ledger.md).</small></p>"
        "</body></html>\n"
    )
