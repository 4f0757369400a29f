"""``/dashboard``: who shares with whom, for data protection officers and auditors (staff sign-in).

The page arranges the figures of accord.web.flows for a period the user picks
(a GET form: from, to, agreement) into tables (accord.web.tables), each
downloadable as CSV with the same query and ``format=csv&table=<key>``:

- ``matrix``: providers (rows) by recipients (columns), each cell the flow's
  disclosed, withheld and retracted counts, linking to its entries;
- ``flows``: the same per agreement version, with receipts;
- ``withheld``: withheld entries by kind of reason;
- ``days``: per day counts (and an inline SVG chart of them, for sighted users;
  the table is the accessible version);
- ``not_covered``: events no agreement covered;
- ``agreements``: the agreements loaded, in force or not, with review dates,
  overdue ones marked;
- ``pending``: disclosures awaiting a partner's receipt (all time);
- ``dead_letters``: dead letters by kind, read from the Kafka topic
  (accord.web.dead_letters; the ledger holds none).

``/dashboard/flow`` lists one flow's entries (seq, time, agreement, outcome,
reason; never a subject key), ``table=entries`` as CSV. ``POST
/dashboard/verify`` (CSRF-checked) runs ledger.verify over the whole ledger
and shows the result beside the latest checkpoint. Names come from the
partner registry and the agreements' parties (accord.web.names), ids beside them.
"""

from __future__ import annotations

import time as clock
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import Engine

from accord.web import flows
from accord.web.dead_letters import DeadLetters
from accord.web.flows import Period, PeriodError
from accord.web.names import Directory
from accord.web.session import check_csrf, read_form, require_page_role
from accord.web.tables import Cell, Link, Table, Tag
from accord.web.templating import render
from agreements.model import Agreement, deciding, has_begun, superseded_by
from consent.tokens import STAFF
from ledger.checkpoint import latest_checkpoint
from ledger.verify import verify

router = APIRouter(include_in_schema=False)

DEFAULT_DAYS: Final = 30
ENTRIES_PAGE: Final = 200
OUTCOME_WORDS: Final = {
    "DISCLOSED": "Disclosed",
    "WITHHELD": "Withheld",
    "RETRACTED": "Retracted",
    "RECEIVED": "Acknowledged by the partner",
}


@dataclass(frozen=True)
class Query:
    """The dashboard's GET form, checked."""

    period: Period
    agreement: str
    errors: dict[str, str]

    def params(self, **extra: str) -> dict[str, str]:
        base = {"from": self.period.start.isoformat(), "to": self.period.end.isoformat()}
        if self.agreement:
            base["agreement"] = self.agreement
        return {**base, **extra}

    def url(self, path: str, **extra: str) -> str:
        return f"{path}?{urlencode(self.params(**extra))}"


def _date(value: str | None, what: str, errors: dict[str, str], key: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        errors[key] = f"Enter the {what} as a date, for example 2026-03-31"
        return None


def parse_query(params: Mapping[str, str], agreements: Sequence[Agreement], today: date | None = None) -> Query:
    """The period and agreement asked for; a bad value is an error message and the default instead."""
    errors: dict[str, str] = {}
    default = Period.last_days(DEFAULT_DAYS, today)
    start = _date(params.get("from"), "start date", errors, "from") or default.start
    end = _date(params.get("to"), "end date", errors, "to") or default.end
    try:
        period = Period(start, end)
    except PeriodError as exc:
        errors["to"] = str(exc)
        period = default
    agreement = params.get("agreement", "") or ""
    if agreement and agreement not in {a.id for a in agreements}:
        errors["agreement"] = "Choose an agreement from the list"
        agreement = ""
    return Query(period, agreement, errors)


def _party(directory: Directory, party_id: str) -> str:
    if directory.known(party_id):
        return directory.name(party_id)
    return f"{party_id} (not named in any agreement)"


def _titles(agreements: Sequence[Agreement]) -> dict[tuple[str, int], str]:
    return {(a.id, a.version): a.title for a in agreements}


def _agreement(titles: Mapping[tuple[str, int], str], agreement_id: str, version: int | None = None) -> str:
    if version is None:
        versions = sorted(v for (i, v) in titles if i == agreement_id)
        version = versions[-1] if versions else None
    title = titles.get((agreement_id, version or 0))
    return f"{title} ({agreement_id} v{version})" if title else f"{agreement_id} (not loaded)"


def _counts(flow_total: tuple[int, int, int]) -> str:
    d, w, r = flow_total
    return f"{d:,} disclosed, {w:,} withheld, {r:,} retracted"


def matrix_table(found: Sequence[flows.Flow], directory: Directory, query: Query) -> Table:
    providers = sorted({f.provider for f in found}, key=directory.name)
    recipients = sorted({f.recipient for f in found}, key=directory.name)
    cells: dict[tuple[str, str], list[int]] = {}
    for f in found:
        c = cells.setdefault((f.provider, f.recipient), [0, 0, 0])
        c[0], c[1], c[2] = c[0] + f.disclosed, c[1] + f.withheld, c[2] + f.retracted
    rows: list[tuple[Cell, ...]] = []
    for p in providers:
        row: list[Cell] = [_party(directory, p)]
        for r in recipients:
            found_cell = cells.get((p, r))
            if found_cell is None:
                row.append("none")
            else:
                row.append(
                    Link(
                        _counts((found_cell[0], found_cell[1], found_cell[2])),
                        query.url("/dashboard/flow", provider=p, recipient=r),
                        lines=True,
                    )
                )
        rows.append(tuple(row))
    return Table(
        "matrix",
        "Flow matrix: providers (rows) to recipients (columns), entries in the period",
        ("Provider", *(_party(directory, r) for r in recipients)),
        tuple(rows),
    )


def flows_table(
    found: Sequence[flows.Flow], directory: Directory, query: Query, titles: Mapping[tuple[str, int], str]
) -> Table:
    rows = tuple(
        (
            Link(
                f"{_party(directory, f.provider)} to {_party(directory, f.recipient)}",
                query.url("/dashboard/flow", provider=f.provider, recipient=f.recipient, agreement=f.agreement_id),
            ),
            _agreement(titles, f.agreement_id, f.agreement_version),
            f.disclosed,
            f.withheld,
            f.retracted,
            f.acknowledged,
        )
        for f in sorted(found, key=lambda f: (directory.name(f.provider), directory.name(f.recipient), f.agreement_id))
    )
    return Table(
        "flows",
        "Flows by agreement",
        ("Flow", "Agreement", "Disclosed", "Withheld", "Retracted", "Acknowledged by partner"),
        rows,
        numeric=frozenset({2, 3, 4, 5}),
    )


def withheld_table(
    found: Sequence[flows.ReasonCount], directory: Directory, titles: Mapping[tuple[str, int], str]
) -> Table:
    rows = tuple(
        (
            f"{_party(directory, r.provider)} to {_party(directory, r.recipient)}",
            _agreement(titles, r.agreement_id),
            r.reason,
            r.count,
        )
        for r in sorted(found, key=lambda r: (directory.name(r.provider), directory.name(r.recipient), r.reason))
    )
    return Table(
        "withheld", "Withheld, by reason", ("Flow", "Agreement", "Reason", "Entries"), rows, numeric=frozenset({3})
    )


def days_table(days: Sequence[flows.DayCount]) -> Table:
    rows = tuple((d.day.isoformat(), d.disclosed, d.withheld, d.retracted, d.acknowledged, d.not_covered) for d in days)
    return Table(
        "days",
        "Entries per day (UTC)",
        ("Day", "Disclosed", "Withheld", "Retracted", "Acknowledged", "Not covered by an agreement"),
        rows,
        numeric=frozenset({1, 2, 3, 4, 5}),
    )


def not_covered_table(found: Sequence[flows.NotCovered], directory: Directory) -> Table:
    rows = tuple((_party(directory, n.provider), n.event_type, n.count) for n in found)
    return Table(
        "not_covered",
        "Events no agreement covered (nothing was shared)",
        ("Provider", "Event type", "Events"),
        rows,
        numeric=frozenset({2}),
    )


def agreements_table(agreements: Sequence[Agreement], directory: Directory, today: date) -> Table:
    rows: list[tuple[Cell, ...]] = []
    deciding_now = {a.key for a in deciding(agreements, today)}
    for a in sorted(agreements, key=lambda a: (a.title, a.version)):
        review: Cell = "none set"
        if a.review_date is not None:
            overdue = a.review_date < today
            review = Tag(a.review_date.isoformat(), "Review overdue" if overdue else "", "red")
        rows.append(
            (
                a.title,
                f"{a.id} v{a.version}",
                "in force" if a.in_force(today) and a.key in deciding_now else _not_in_force(a, agreements, today),
                ", ".join(_party(directory, p) for p in a.providers),
                ", ".join(_party(directory, r) for r in a.recipients),
                a.purpose.value.replace("_", " "),
                a.consent_mode.value.replace("_", " "),
                review,
            )
        )
    return Table(
        "agreements",
        "Agreements loaded, with their review dates",
        ("Agreement", "Id", "Status", "Providers", "Recipients", "Purpose", "Consent", "Review date"),
        tuple(rows),
        empty="No agreements are loaded.",
    )


def pending_table(found: Sequence[flows.Pending], directory: Directory) -> Table:
    rows = tuple(
        (
            _party(directory, p.recipient),
            p.disclosures,
            p.retractions,
            p.oldest.strftime("%Y-%m-%d %H:%M UTC") if p.oldest else "",
        )
        for p in sorted(found, key=lambda p: directory.name(p.recipient))
    )
    return Table(
        "pending",
        "Awaiting the partner's receipt (all time)",
        ("Recipient", "Disclosures", "Retractions", "Oldest waiting since"),
        rows,
        numeric=frozenset({1, 2}),
        empty="Every partner has acknowledged everything sent to it.",
    )


def dead_letters_table(found: DeadLetters | None) -> Table:
    rows = tuple((kind, n) for kind, n in (found.by_kind if found else ()))
    return Table(
        "dead_letters",
        "Dead letters, by kind",
        ("Kind of problem", "Events"),
        rows,
        numeric=frozenset({1}),
        empty="No dead letters in this period.",
    )


def entries_table(found: Sequence[flows.EntryRow]) -> Table:
    rows = tuple(
        (
            e.seq,
            e.decided_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
            f"{e.agreement_id} v{e.agreement_version}",
            e.event_type,
            OUTCOME_WORDS.get(e.outcome, e.outcome),
            e.reason or "",
        )
        for e in found
    )
    return Table(
        "entries",
        "Entries",
        ("Seq", "Time", "Agreement", "Event type", "Outcome", "Reason"),
        rows,
        numeric=frozenset({0}),
        empty="No entries for this flow in this period.",
    )


def _csv(table: Table, name: str) -> Response:
    return Response(
        table.csv(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="accord-{name}.csv"'},
    )


def _state(request: Request) -> tuple[Engine, Sequence[Agreement], Directory]:
    s = request.app.state
    return s.engine, s.agreements, s.directory


def _today() -> date:
    return datetime.now(UTC).date()


@router.get("/dashboard")
def dashboard(request: Request) -> Response:
    require_page_role(request, STAFF)
    engine, agreements, directory = _state(request)
    today = _today()
    query = parse_query(request.query_params, agreements, today)
    found = flows.flows(engine, query.period, query.agreement or None)
    days = flows.per_day(engine, query.period, query.agreement or None)
    titles = _titles(agreements)
    cache = request.app.state.dead_letters
    dead = cache.get(*query.period.bounds) if cache is not None else None
    pending = flows.pending(engine)
    tables = {
        t.key: t
        for t in (
            matrix_table(found, directory, query),
            flows_table(found, directory, query, titles),
            withheld_table(flows.withheld_by_reason(engine, query.period, query.agreement or None), directory, titles),
            days_table(days),
            not_covered_table(flows.not_covered(engine, query.period), directory),
            agreements_table(agreements, directory, today),
            pending_table(pending, directory),
            dead_letters_table(dead),
        )
    }
    if request.query_params.get("format") == "csv":
        key = request.query_params.get("table", "")
        if key not in tables:
            raise HTTPException(404, detail="no such table")
        return _csv(tables[key], key)
    totals = {
        "disclosed": sum(f.disclosed for f in found),
        "withheld": sum(f.withheld for f in found),
        "retracted": sum(f.retracted for f in found),
        "not_covered": sum(d.not_covered for d in days),
        "pending": sum(p.disclosures + p.retractions for p in pending),
    }
    size = flows.ledger_size(engine)
    checkpoint = latest_checkpoint(engine)
    return render(
        request,
        "dashboard.html",
        {
            "title": "Flows dashboard",
            "query": query,
            "agreements": sorted(agreements, key=lambda a: a.title),
            "tables": tables,
            "csv": {k: query.url("/dashboard", format="csv", table=k) for k in tables},
            "totals": totals,
            "chart": chart(days),
            "size": size,
            "checkpoint": checkpoint,
            "last_verify": request.app.state.last_verify,
            "overdue": sum(1 for a in agreements if a.review_date is not None and a.review_date < today),
            "dead": dead,
            "dead_letter_topic": f"{request.app.state.settings.topic_prefix}accord.deadletter",
        },
    )


@router.get("/dashboard/flow")
def flow_entries(request: Request) -> Response:
    require_page_role(request, STAFF)
    engine, agreements, directory = _state(request)
    params = request.query_params
    query = parse_query(params, agreements, _today())
    provider, recipient = params.get("provider", ""), params.get("recipient", "")
    if not provider or not recipient:
        raise HTTPException(404, detail="choose a flow on the dashboard")
    outcome = params.get("outcome", "")
    errors = dict(query.errors)
    if "agreement" in errors:  # this page has no list to choose from
        errors["agreement"] = "No agreement has that id: entries under every agreement are shown"
    if outcome and outcome not in OUTCOME_WORDS:
        errors["outcome"] = "Choose an outcome from the list: all outcomes are shown"
        outcome = ""
    after = params.get("after", "0")
    after_seq = int(after) if after.isdigit() and len(after) < 19 else 0
    limit = 100_000 if params.get("format") == "csv" else ENTRIES_PAGE
    found = flows.entries(
        engine,
        query.period,
        provider=provider,
        recipient=recipient,
        agreement_id=query.agreement or None,
        outcome=outcome or None,
        after_seq=after_seq,
        limit=limit,
    )
    table = entries_table(found)
    if params.get("format") == "csv":
        return _csv(table, "entries")
    extra = {"provider": provider, "recipient": recipient, **({"outcome": outcome} if outcome else {})}
    return render(
        request,
        "flow.html",
        {
            "title": f"{directory.name(provider)} to {directory.name(recipient)}",
            "provider": directory.name(provider),
            "recipient": directory.name(recipient),
            "query": query,
            "errors": errors,
            "outcome": outcome,
            "outcomes": OUTCOME_WORDS,
            "extra": extra,
            "table": table,
            "csv": query.url("/dashboard/flow", format="csv", **extra),
            "back": query.url("/dashboard"),
            "next": query.url("/dashboard/flow", after=str(found[-1].seq), **extra) if len(found) == limit else None,
            "base": query.url("/dashboard/flow", provider=provider, recipient=recipient),
        },
    )


@dataclass(frozen=True)
class VerifyRun:
    ok: bool
    description: str
    entries: int
    seconds: float
    at: datetime


@router.post("/dashboard/verify")
async def run_verify(request: Request) -> Response:
    require_page_role(request, STAFF)
    check_csrf(request, await read_form(request))
    state = request.app.state
    from starlette.concurrency import run_in_threadpool

    started = clock.monotonic()
    result = await run_in_threadpool(verify, state.engine, state.verifier, state.settings.ledger_origin)
    state.last_verify = VerifyRun(
        result.ok, result.describe(), result.entries, clock.monotonic() - started, datetime.now(UTC)
    )
    return RedirectResponse("/dashboard#integrity", status_code=303)


# --- the chart --------------------------------------------------------------------------------

SERIES: Final = (("disclosed", "#00703c"), ("withheld", "#d4351c"), ("retracted", "#f47738"))


def chart(days: Sequence[flows.DayCount], width: int = 720, height: int = 200) -> dict[str, Any]:
    """Stacked bars per day as SVG shapes (drawn by the template; the table beside it is the accessible form)."""
    left, bottom, top = 48, 24, 8
    peak = max((d.disclosed + d.withheld + d.retracted for d in days), default=0)
    scale_max = max(1, peak)
    inner_h = height - bottom - top
    step = (width - left) / max(1, len(days))
    bar = max(1.0, step * 0.8)
    bars = []
    for i, d in enumerate(days):
        y = float(height - bottom)
        for name, colour in SERIES:
            value = getattr(d, name)
            if value:
                h = inner_h * value / scale_max
                y -= h
                bars.append(
                    {
                        "x": round(left + i * step, 1),
                        "y": round(y, 1),
                        "w": round(bar, 1),
                        "h": round(h, 1),
                        "fill": colour,
                    }
                )
    every = max(1, len(days) // 6)
    labels = [
        {"x": round(left + i * step + bar / 2, 1), "text": d.day.strftime("%d %b")}
        for i, d in enumerate(days)
        if i % every == 0
    ]
    return {
        "width": width,
        "height": height,
        "bars": bars,
        "labels": labels,
        "peak": peak,
        "left": left,
        "baseline": height - bottom,
        "top": top,
    }


__all__ = ["Query", "VerifyRun", "chart", "parse_query", "router"]


def _not_in_force(agreement: Agreement, agreements: Sequence[Agreement], today: date) -> str:
    newer = superseded_by(agreement, agreements, today)
    if newer is not None:
        return f"replaced by v{newer.version}"
    if agreement.valid_from is not None and not has_begun(agreement, today):
        return f"from {agreement.valid_from.isoformat()}"
    return f"not in force ({agreement.status.value})"
