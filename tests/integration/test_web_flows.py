"""The flows dashboard's figures equal the ledger's, counted here another way (Python over the rows).

accord.web.flows counts with SQL aggregates; these tests read every ledger row and
count in Python, per period, flow, reason, day and receipt, and compare. The page and
its CSV export are checked against the same figures, and agency-sent text is escaped.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from accord.provision import init_database
from accord.web import flows
from accord.web.app import create_app
from accord.web.flows import Period
from agreements import load_dir
from agreements.model import Party
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT, Settings
from consent.tokens import sign_in_link
from ledger import EntryDraft, append
from ledger.receipts import pending_receipts
from ledger.tables import LedgerEntry
from tests.web_data import T0, fill

SECRET = "test-secret-for-the-web-pages-0123456789"
AGREEMENTS = list(load_dir(PACKAGE_ROOT / "agreements" / "examples"))
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
PERIOD = Period(date(2026, 3, 3), date(2026, 3, 5))  # inside the data's five days, so some fall outside


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    init_database(pg_engine)
    fill(pg_engine, AGREEMENTS)
    return pg_engine


def _rows(engine: Engine) -> list:
    with engine.connect() as conn:
        return list(conn.execute(select(LedgerEntry)).all())


def _in(row, period: Period) -> bool:
    day = row.decided_at.astimezone(UTC).date()
    return period.start <= day <= period.end


def test_flow_counts_equal_the_ledgers_for_every_provider_recipient_pair(engine: Engine) -> None:
    expected: Counter = Counter()
    for r in _rows(engine):
        if _in(r, PERIOD) and r.outcome != "NOT_COVERED":
            expected[(r.provider, r.recipient, r.agreement_id, r.agreement_version, r.outcome)] += 1
    got: Counter = Counter()
    for f in flows.flows(engine, PERIOD):
        for outcome, n in (
            ("DISCLOSED", f.disclosed),
            ("WITHHELD", f.withheld),
            ("RETRACTED", f.retracted),
            ("RECEIVED", f.acknowledged),
        ):
            if n:
                got[(f.provider, f.recipient, f.agreement_id, f.agreement_version, outcome)] = n
    assert got == expected
    assert sum(expected.values()) > 50 and {k[4] for k in expected} == {
        "DISCLOSED",
        "WITHHELD",
        "RETRACTED",
        "RECEIVED",
    }
    # The period matters: the whole data set has more.
    everything = flows.flows(engine, Period(date(2026, 3, 1), date(2026, 3, 31)))
    assert sum(f.total for f in everything) > sum(f.total for f in flows.flows(engine, PERIOD))


def test_one_agreement_only(engine: Engine) -> None:
    only = flows.flows(engine, PERIOD, "natal-care-to-health-visiting")
    assert only and {f.agreement_id for f in only} == {"natal-care-to-health-visiting"}
    n = sum(
        1
        for r in _rows(engine)
        if _in(r, PERIOD) and r.agreement_id == "natal-care-to-health-visiting" and r.outcome == "DISCLOSED"
    )
    assert sum(f.disclosed for f in only) == n


def test_withheld_by_reason_per_day_and_not_covered_equal_the_ledgers(engine: Engine) -> None:
    rows = [r for r in _rows(engine) if _in(r, PERIOD)]
    reasons = Counter(
        (r.provider, r.recipient, r.agreement_id, r.reason.split(" (consent record")[0])
        for r in rows
        if r.outcome == "WITHHELD"
    )
    got = {
        (c.provider, c.recipient, c.agreement_id, c.reason): c.count for c in flows.withheld_by_reason(engine, PERIOD)
    }
    assert got == dict(reasons)
    assert {k[3] for k in reasons} == {"consent denied", "explicit consent required and none recorded"}

    days = flows.per_day(engine, PERIOD)
    assert [d.day for d in days] == [date(2026, 3, 3), date(2026, 3, 4), date(2026, 3, 5)]
    for d in days:
        on_day = Counter(r.outcome for r in rows if r.decided_at.astimezone(UTC).date() == d.day)
        assert (d.disclosed, d.withheld, d.retracted, d.acknowledged, d.not_covered) == (
            on_day["DISCLOSED"],
            on_day["WITHHELD"],
            on_day["RETRACTED"],
            on_day["RECEIVED"],
            on_day["NOT_COVERED"],
        )
    nc = Counter((r.provider, r.event_type) for r in rows if r.outcome == "NOT_COVERED")
    assert {(n.provider, n.event_type): n.count for n in flows.not_covered(engine, PERIOD)} == dict(nc) != {}


def test_pending_receipts_equal_the_ledgers_own_query(engine: Engine) -> None:
    waiting = Counter((e.draft.recipient, e.draft.outcome) for e in pending_receipts(engine))
    got = flows.pending(engine)
    assert {(p.recipient, "DISCLOSED"): p.disclosures for p in got if p.disclosures} | {
        (p.recipient, "RETRACTED"): p.retractions for p in got if p.retractions
    } == dict(waiting)
    assert sum(waiting.values()) > 0


def test_period_ends_are_whole_utc_days(pg_engine: Engine) -> None:
    init_database(pg_engine)
    a = AGREEMENTS[0]
    base = EntryDraft(
        "d-edge-0",
        "e0",
        a.event_types[0],
        a.providers[0],
        a.recipients[0],
        a.id,
        a.version,
        a.purpose.value,
        a.legal_basis,
        "DISCLOSED",
        None,
        (),
        a.consent_mode.value,
        0,
        "nhs:9434765919",
        datetime(2026, 3, 4, 0, 0, tzinfo=UTC),
    )
    from dataclasses import replace

    append(
        pg_engine,
        [
            base,
            replace(base, disclosure_id="d-edge-1", decided_at=datetime(2026, 3, 4, 23, 59, 59, 999_000, tzinfo=UTC)),
            replace(base, disclosure_id="d-edge-2", decided_at=datetime(2026, 3, 5, 0, 0, tzinfo=UTC)),
            replace(base, disclosure_id="d-edge-3", decided_at=datetime(2026, 3, 3, 23, 59, 59, 999_000, tzinfo=UTC)),
        ],
    )
    [flow] = flows.flows(pg_engine, Period(date(2026, 3, 4), date(2026, 3, 4)))
    assert flow.disclosed == 2
    assert [d.disclosed for d in flows.per_day(pg_engine, Period(date(2026, 3, 3), date(2026, 3, 5)))] == [1, 2, 1]


def test_drill_down_lists_the_flows_entries_in_seq_order_without_subject_keys(engine: Engine) -> None:
    rows = [r for r in _rows(engine) if _in(r, PERIOD) and r.provider == "met-police" and r.recipient == "cps"]
    got = flows.entries(engine, PERIOD, provider="met-police", recipient="cps")
    assert [e.seq for e in got] == sorted(r.seq for r in rows) and got
    assert [(e.outcome, e.reason) for e in got] == [(r.outcome, r.reason) for r in sorted(rows, key=lambda r: r.seq)]
    assert not hasattr(got[0], "subject_key")
    page = flows.entries(engine, PERIOD, provider="met-police", recipient="cps", after_seq=got[1].seq, limit=2)
    assert [e.seq for e in page] == [e.seq for e in got[2:4]]


# --- the page -------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The text of every <table data-table=...>'s cells, per row, as a browser shows it."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._key: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_caption = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "table" and "data-table" in a:
            self._key = a["data-table"]
            self.tables[self._key] = []
        elif self._key and tag == "tr":
            self._row = []
        elif self._key and tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "caption":
            self._in_caption = True
        elif tag == "br" and self._cell is not None:
            self._cell.append(" ")  # a line break reads as a space

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._key = None
        elif tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(re.sub(r"\s+", " ", "".join(self._cell)).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._key:
            self.tables[self._key].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None and not self._in_caption:
            self._cell.append(data)


def _staff_client(engine: Engine, agreements=AGREEMENTS) -> TestClient:
    app = create_app(
        Settings(), engine=engine, agreements=agreements, partners=PARTNERS, secret=SECRET, read_dead_letters=False
    )
    client = TestClient(app)
    assert client.get(sign_in_link(SECRET, "staff", base_url="").link).status_code == 200
    return client


@pytest.fixture
def staff(engine: Engine) -> Iterator[TestClient]:
    with _staff_client(engine) as c:
        yield c


QUERY = "from=2026-03-03&to=2026-03-05"


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


def test_every_table_on_the_page_equals_its_csv_export(staff: TestClient) -> None:
    page = staff.get(f"/dashboard?{QUERY}")
    assert page.status_code == 200
    parser = _Tables()
    parser.feed(page.text)
    assert set(parser.tables) >= {"matrix", "flows", "withheld", "days", "not_covered", "agreements", "pending"}
    for key, shown in parser.tables.items():
        resp = staff.get(f"/dashboard?{QUERY}&format=csv&table={key}")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
        exported = list(csv.reader(io.StringIO(resp.text)))
        as_shown = [[c.replace(",", "") if re.fullmatch(r"[\d,]+", c) else c for c in row] for row in shown]
        assert exported == as_shown, key


def test_the_matrix_shows_names_and_the_ledgers_counts(engine: Engine, staff: TestClient) -> None:
    exported = list(csv.reader(io.StringIO(staff.get(f"/dashboard?{QUERY}&format=csv&table=matrix").text)))
    header, body = exported[0], exported[1:]
    assert "Crown Prosecution Service" in header and "cps" not in header
    names = {
        name: pid
        for pid, name in ((p, n) for a in AGREEMENTS for party in a.parties for p, n in [(party.id, party.name)])
    }
    counted: Counter = Counter()
    for r in _rows(engine):
        if _in(r, PERIOD) and r.outcome in ("DISCLOSED", "WITHHELD", "RETRACTED"):
            counted[(r.provider, r.recipient, r.outcome)] += 1
    checked = 0
    for row in body:
        provider = names[row[0]]
        for recipient_name, cell in zip(header[1:], row[1:], strict=True):
            recipient = names[recipient_name]
            want = [counted[(provider, recipient, o)] for o in ("DISCLOSED", "WITHHELD", "RETRACTED")]
            if cell == "none":
                assert want == [0, 0, 0]
                continue
            assert [int(n) for n in re.findall(r"(\d+) (?:disclosed|withheld|retracted)", cell)] == want
            checked += 1
    assert checked >= 5


def test_drill_down_page_lists_the_entries(engine: Engine, staff: TestClient) -> None:
    resp = staff.get(f"/dashboard/flow?{QUERY}&provider=met-police&recipient=cps")
    assert resp.status_code == 200
    assert "Metropolitan Police Service to Crown Prosecution Service" in resp.text
    parser = _Tables()
    parser.feed(resp.text)
    seqs = [int(row[0]) for row in parser.tables["entries"][1:]]
    assert seqs == [e.seq for e in flows.entries(engine, PERIOD, provider="met-police", recipient="cps")]
    assert "nhs:" not in resp.text
    exported = list(
        csv.reader(io.StringIO(staff.get(f"/dashboard/flow?{QUERY}&provider=met-police&recipient=cps&format=csv").text))
    )
    assert [int(r[0]) for r in exported[1:]] == seqs


def test_drill_down_page_says_when_it_ignored_what_was_asked(staff: TestClient) -> None:
    flow = f"/dashboard/flow?{QUERY}&provider=met-police&recipient=cps"
    assert "There is a problem" not in staff.get(flow).text
    bad = staff.get(f"{flow}&outcome=BOGUS&agreement=zzz")
    assert bad.status_code == 200 and "There is a problem" in bad.text
    assert "Choose an outcome from the list: all outcomes are shown" in bad.text
    assert "No agreement has that id: entries under every agreement are shown" in bad.text
    assert "BOGUS" not in bad.text and "zzz" not in bad.text


def test_dashboard_is_for_staff_only(engine: Engine) -> None:
    app = create_app(
        Settings(), engine=engine, agreements=AGREEMENTS, partners=PARTNERS, secret=SECRET, read_dead_letters=False
    )
    with TestClient(app) as anonymous:
        assert anonymous.get("/dashboard").status_code == 401
    with TestClient(app) as citizen:
        citizen.get(sign_in_link(SECRET, "citizen", "nhs:9434765919", base_url="").link)
        assert citizen.get("/dashboard").status_code == 403
        assert citizen.get("/dashboard?format=csv&table=matrix").status_code == 403


def test_bad_dates_are_an_error_message_not_an_error(staff: TestClient) -> None:
    resp = staff.get("/dashboard?from=31/03/2026&to=2026-03-01")
    assert resp.status_code == 200
    assert "There is a problem" in resp.text and "Enter the start date as a date" in resp.text


def test_verify_button_runs_verify_with_csrf(staff: TestClient) -> None:
    page = staff.get("/dashboard").text
    token = _csrf(page)
    assert staff.post("/dashboard/verify", data={"csrf_token": "0" * 64}).status_code == 403
    resp = staff.post("/dashboard/verify", data={"csrf_token": token})
    assert resp.status_code == 200 and "Intact" in resp.text and "ledger OK" in resp.text


def test_agency_sent_text_is_escaped(engine: Engine) -> None:
    evil = "<script>alert('x')</script>"
    a = AGREEMENTS[0]
    parties = tuple(Party(name=evil if p.id == a.providers[0] else p.name, role=p.role, id=p.id) for p in a.parties)
    agreements = [a.model_copy(update={"parties": parties, "title": f"Title {evil}"}), *AGREEMENTS[1:]]
    append(
        engine,
        [
            EntryDraft(
                "d-evil",
                "e-evil",
                a.event_types[0],
                a.providers[0],
                a.recipients[0],
                a.id,
                a.version,
                a.purpose.value,
                a.legal_basis,
                "WITHHELD",
                f"reason {evil}",
                (),
                a.consent_mode.value,
                0,
                "nhs:9434765919",
                T0 + timedelta(days=2),
            )
        ],
    )
    with _staff_client(engine, agreements) as staff:
        for url in (
            f"/dashboard?{QUERY}",
            f"/dashboard/flow?{QUERY}&provider={a.providers[0]}&recipient={a.recipients[0]}",
        ):
            html = staff.get(url).text
            assert evil not in html and "<script>alert" not in html
            assert "&lt;script&gt;alert(" in html
