"""The flows dashboard in a real headless Chromium, over a ledger the real pipeline wrote.

One module-scoped bus (tests.bus.running_bus: the embedded broker, PostgreSQL with
owner and app roles, the processor) runs a demo-like scenario: synthetic events
from every agency, citizens' consent choices (opt-outs, explicit permits), and a
withdrawal the sweeper turns into a retraction. The web application is served by
uvicorn on 127.0.0.1 (a free port, in a thread) as the app role; one Chromium
(Debian's, through Playwright) reads it as staff. Asserted: the flow matrix equals
the ledger for every provider -> recipient pair, a drill-down lists that flow's
entries, a CSV export equals its table, dead letters are counted by kind as the
topic has them, the pages break no CSP rule, and axe-core
finds no WCAG 2.x A/AA violation on /dashboard, /dashboard/flow and /docs.

``ACCORD_SCREENSHOTS=docs/images`` also saves docs/images/dashboard.png.
"""

from __future__ import annotations

import csv
import io
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright
from sqlalchemy import create_engine

import consent
from accord.sharing.decide import subject_key
from accord.web.app import create_app
from agreements.partners import load_partners
from bus import headers as header
from bus.settings import PACKAGE_ROOT
from consent.tokens import sign_in_link
from ledger.checkpoint import make_checkpoint
from ledger.note import NoteSigner
from producers.synthetic import build_scenario
from tests.bus import Bus, read_topic, running_bus
from tests.ports import free_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
AXE = Path(__file__).resolve().parent.parent / "assets" / "axe.min.js"
SECRET = "test-secret-for-the-web-dashboard-0123456789"
KNOWN = consent.KnownScopes.from_partners(load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"))
WCAG = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


@dataclass
class Served:
    bus: Bus
    base: str

    def sign_in(self, page: Page) -> None:
        page.goto(sign_in_link(SECRET, "staff", base_url=self.base).link)
        assert page.url == f"{self.base}/dashboard", page.url

    def period(self) -> str:
        today = datetime.now(UTC).date()
        return f"from={(today - timedelta(days=1)).isoformat()}&to={(today + timedelta(days=1)).isoformat()}"


def _scenario(bus: Bus) -> None:
    """Demo-like: events from every agency, opt-outs and permits first, then a withdrawal after a disclosure."""
    scenario = build_scenario(n_events=90, seed=random.SystemRandom().randrange(1 << 30), n_malformed=0)
    rng = random.Random(5)
    mothers = sorted({subject_key("natal_care", e.record) for e in scenario.events if e.event_type == "natal_care"})
    for key in rng.sample(mothers, max(1, len(mothers) // 4)):
        consent.record(bus.engine, key, consent.ConsentDecision.DENY, known=KNOWN, recipient="salford-health-visiting")
    detainees = sorted({subject_key("custody", e.record) for e in scenario.events if e.event_type == "custody"})
    for key in rng.sample(detainees, max(1, len(detainees) // 3)):
        consent.record(bus.engine, key, consent.ConsentDecision.PERMIT, known=KNOWN, recipient="liaison-diversion")
    malformed = [("referral", f"not avro {i} {uuid.uuid4()}".encode()) for i in range(3)]
    bus.publish([(e.event_type, e.record) for e in scenario.events] + malformed)
    disclosed = [r for r in bus.ledger(recipient="salford-health-visiting") if r.outcome == "DISCLOSED"]
    assert disclosed, "the scenario disclosed nothing to health visiting"
    consent.record(
        bus.engine,
        disclosed[0].subject_key,
        consent.ConsentDecision.DENY,
        known=KNOWN,
        recipient="salford-health-visiting",
    )
    deadline = time.monotonic() + 30
    while not bus.ledger(refers_to=disclosed[0].disclosure_id):
        assert time.monotonic() < deadline, "the withdrawal was never retracted"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def served(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with running_bus(broker, tmp_path_factory.mktemp("web-dashboard")) as bus:
        _scenario(bus)
        bus.stop_processor()
        signer = NoteSigner.generate(bus.settings.ledger_origin)
        assert make_checkpoint(bus.engine, signer, bus.settings.ledger_origin) is not None
        engine = create_engine(bus.settings.ledger_url)  # the app role, as `accord serve` runs
        app = create_app(
            bus.settings, engine=engine, agreements=bus.agreements, secret=SECRET, verifier=signer.verifier
        )
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield Served(bus, f"http://127.0.0.1:{server.config.port}")
        finally:
            server.should_exit = True
            thread.join(10)
            engine.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    csp_errors: list[str] = []
    page.csp_errors = csp_errors  # type: ignore[attr-defined]

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            csp_errors.append(message.text)

    page.on("console", on_console)
    served.sign_in(page)
    try:
        yield page
    finally:
        context.close()


def _table(page: Page, key: str) -> list[list[str]]:
    """The visible text of a table's header and body cells, row by row."""
    return page.eval_on_selector(
        f"table[data-table='{key}']",
        "t => [...t.rows].map(r => [...r.cells].map(c => c.innerText.replace(/\\s+/g, ' ').trim()))",
    )


def _names(served: Served) -> dict[str, str]:
    return {p.name: p.id for a in served.bus.agreements for p in a.parties if p.id}


def test_flow_matrix_equals_the_ledger_for_every_provider_recipient_pair(page: Page, served: Served) -> None:
    page.goto(f"{served.base}/dashboard?{served.period()}")
    rows = _table(page, "matrix")
    header, body = rows[0], rows[1:]
    ids = _names(served)
    counted: Counter = Counter((r.provider, r.recipient, r.outcome) for r in served.bus.ledger())
    pairs = {(p, r) for p, r, o in counted if o in ("DISCLOSED", "WITHHELD", "RETRACTED")}
    shown = set()
    for row in body:
        for recipient_name, cell in zip(header[1:], row[1:], strict=True):
            pair = (ids[row[0]], ids[recipient_name])
            want = (
                f"{counted[(*pair, 'DISCLOSED')]:,} disclosed, {counted[(*pair, 'WITHHELD')]:,} withheld, "
                f"{counted[(*pair, 'RETRACTED')]:,} retracted"
            )
            assert cell == (want if pair in pairs else "none"), pair
            if pair in pairs:
                shown.add(pair)
    assert shown == pairs and len(pairs) >= 6
    assert counted[("mft-nhs-trust", "salford-health-visiting", "RETRACTED")] >= 1
    total = page.inner_text("[data-total='disclosed']")
    assert total.startswith(f"{sum(n for (p, r, o), n in counted.items() if o == 'DISCLOSED'):,} ")
    assert page.csp_errors == []  # type: ignore[attr-defined]


def test_drill_down_lists_the_flows_entries_and_its_csv_equals_the_table(page: Page, served: Served) -> None:
    page.goto(f"{served.base}/dashboard?{served.period()}")
    with page.expect_navigation():
        page.click("table[data-table='matrix'] a[href*='recipient=salford-health-visiting']")
    assert (
        "Manchester University NHS Foundation Trust to Salford City Council health visiting service"
        in page.inner_text("h1")
    )
    rows = _table(page, "entries")
    expected = [r for r in served.bus.ledger(provider="mft-nhs-trust", recipient="salford-health-visiting")]
    assert [int(r[0]) for r in rows[1:]] == [r.seq for r in expected]
    outcomes = {
        "DISCLOSED": "Disclosed",
        "WITHHELD": "Withheld",
        "RETRACTED": "Retracted",
        "RECEIVED": "Acknowledged by the partner",
    }
    assert [(r[4], r[5]) for r in rows[1:]] == [(outcomes[e.outcome], e.reason or "") for e in expected]
    assert "nhs:" not in page.content()
    href = page.get_attribute("a[download]", "href")
    resp = page.request.get(f"{served.base}{href}")
    assert resp.ok and resp.headers["content-type"].startswith("text/csv")
    assert list(csv.reader(io.StringIO(resp.text()))) == [
        [c.replace(",", "") if c.replace(",", "").isdigit() else c for c in r] for r in rows
    ]
    assert page.csp_errors == []  # type: ignore[attr-defined]


def test_csv_export_of_the_matrix_equals_the_table(page: Page, served: Served) -> None:
    page.goto(f"{served.base}/dashboard?{served.period()}")
    shown = _table(page, "matrix")
    href = page.get_attribute("table[data-table='matrix'] >> xpath=../following-sibling::p[1]//a", "href")
    exported = list(csv.reader(io.StringIO(page.request.get(f"{served.base}{href}").text())))
    assert exported == [[c.replace(",", "") if c.replace(",", "").isdigit() else c for c in r] for r in shown]


def test_dead_letters_are_counted_by_kind_from_the_topic(page: Page, served: Served) -> None:
    on_topic = Counter(
        h[header.ERROR].decode() for h, _ in read_topic(served.bus.settings, served.bus.names.dead_letter)
    )
    assert sum(on_topic.values()) == 3
    page.goto(f"{served.base}/dashboard?{served.period()}")
    rows = _table(page, "dead_letters")
    assert {r[0]: int(r[1]) for r in rows[1:]} == dict(on_topic)
    assert page.inner_text("[data-total='dead_letters']").startswith("3 ")


def _axe(browser: Browser, served: Served, path: str) -> list[dict]:
    # axe is injected as a script, which the pages' CSP rightly refuses: this context bypasses it.
    context = browser.new_context(bypass_csp=True, viewport={"width": 1280, "height": 900})
    try:
        page = context.new_page()
        served.sign_in(page)
        page.goto(f"{served.base}{path}")
        page.add_script_tag(path=str(AXE))
        result = page.evaluate("tags => axe.run(document, {runOnly: {type: 'tag', values: tags}})", WCAG)
        assert len(result["passes"]) > 10, "axe checked next to nothing"  # it did run, on a real page
        return [
            {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:5]}
            for v in result["violations"]
        ]
    finally:
        context.close()


def test_axe_finds_no_wcag_a_or_aa_violations(browser: Browser, served: Served) -> None:
    flow = "/dashboard/flow?" + served.period() + "&provider=mft-nhs-trust&recipient=salford-health-visiting"
    for path in (f"/dashboard?{served.period()}", flow, "/docs", "/dashboard?from=nonsense"):
        assert _axe(browser, served, path) == [], path


def test_verify_button_checks_the_ledger_against_its_signed_checkpoint(page: Page, served: Served) -> None:
    page.goto(f"{served.base}/dashboard?{served.period()}")
    assert "not checked since Accord started" in page.inner_text("#verify-result")
    with page.expect_navigation():
        page.click("text=Check the whole ledger now")
    result = page.inner_text("#verify-result")
    entries = len(served.bus.ledger())
    assert result.startswith("Intact") and f"ledger OK: {entries:,} entries" in result, result
    assert "consistent with 1 signed checkpoint" in result
    assert page.csp_errors == []  # type: ignore[attr-defined]


def test_screenshot_for_the_docs(page: Page, served: Served) -> None:
    """Saves docs/images/dashboard.png when ACCORD_SCREENSHOTS names the folder; otherwise checks it renders."""
    page.goto(f"{served.base}/dashboard?{served.period()}")
    assert page.is_visible("table[data-table='matrix']")
    folder = os.environ.get("ACCORD_SCREENSHOTS")
    if folder:
        # The summary, the flow matrix and the flows by agreement: what a DPO reads first.
        page.set_viewport_size({"width": 1280, "height": 1000})
        bottom = page.eval_on_selector("table[data-table='flows']", "t => t.getBoundingClientRect().top + 420")
        page.screenshot(
            path=str(Path(folder) / "dashboard.png"),
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1280, "height": bottom},
        )
