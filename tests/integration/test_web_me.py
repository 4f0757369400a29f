"""The citizen's page, ``/me``, and its proofs, in a real headless Chromium.

One browser for the module (Debian's Chromium through Playwright; never Playwright's
own download). The proof checker, accord/web/static/proofs.js, is first held to
Python's own verification (accord.web.proofs.check_bundle, ledger.merkle,
ledger.note) on real bundles and on each way of breaking one; then the page is served
by uvicorn on 127.0.0.1 and a citizen signs in, reads it, sees every proof verify (and
one fail when the test flips a byte of it), and withdraws consent with a processor
running, so the next event is withheld and the retraction shows on the page.
"""

from __future__ import annotations

import base64
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, Route, sync_playwright
from sqlalchemy import create_engine

import consent
from accord.web.app import create_app
from accord.web.labels import LABELS
from accord.web.me import ICO_COMPLAINTS
from accord.web.proofs import FAILURES, SHOWN, VERIFIED, bundles_for, check_bundle
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT, Settings
from consent.tokens import CITIZEN, sign_in_link
from ledger import EntryDraft, append, canonical_bytes, merkle
from ledger.checkpoint import CheckpointBody, make_checkpoint
from ledger.leaf_codec import SCHEMA
from ledger.note import NoteSigner, sign_note
from ledger.report import collect
from producers.nhs_number import generate
from producers.synthetic import build_scenario
from schemas import catalogue
from tests.bus import running_bus
from tests.conftest import RoleDatabase
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
PROOFS_JS = PACKAGE_ROOT / "accord" / "web" / "static" / "proofs.js"
AGREEMENTS = {a.key: a for a in load_dir(PACKAGE_ROOT / "agreements" / "examples")}
ORIGIN = "accord.test/ledger"
T0 = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
KNOWN = consent.KnownScopes.from_partners(load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def checker(browser: Browser) -> Iterator[Page]:
    """A blank page on a secure origin (http://localhost) with proofs.js loaded."""
    page = browser.new_page()
    page.route(
        "http://localhost/", lambda r: r.fulfill(body="<!doctype html><title>t</title>", content_type="text/html")
    )
    page.goto("http://localhost/")
    page.add_script_tag(path=str(PROOFS_JS))
    try:
        yield page
    finally:
        page.close()


def js_check(page: Page, bundles: list[dict[str, Any]], shown: list[dict[str, str]] | None = None) -> list[str | None]:
    return page.evaluate(
        "([bs, ss]) => Promise.all(bs.map((b, i) => AccordProofs.check(b, ss ? ss[i] : undefined)))", [bundles, shown]
    )


# --- the checker against Python's, on bundles that verify and on each way of breaking one ----------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _flip(text: str, at: int = 0) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[at % len(raw)] ^= 0x01
    return _b64(bytes(raw))


def _resign(note: str, signer: NoteSigner, **changes: Any) -> str:
    body = CheckpointBody.parse(note[: note.rfind("\n\n") + 1])
    return sign_note(replace(body, **changes).text(), signer)


def broken(bundle: dict[str, Any], signer: NoteSigner) -> dict[str, tuple[dict[str, Any], str]]:
    """Each way of breaking ``bundle``, with the failure it must be reported as."""
    note: str = bundle["checkpoint"]
    text, sigs = note[: note.rfind("\n\n") + 1], note[note.rfind("\n\n") + 2 :]
    dash, name, sig = sigs.rstrip("\n").split(" ")
    other = NoteSigner.generate(signer.name)
    leaf = bytearray(base64.b64decode(bundle["leaf"]))
    leaf[-1] ^= 0x01  # the last byte: prev_hash, so the seq still reads right
    cases = {
        "leaf byte": ({**bundle, "leaf": _b64(bytes(leaf))}, "leaf"),
        "leaf and its hash": (
            {**bundle, "leaf": _b64(bytes(leaf)), "leaf_hash": _b64(merkle.leaf_hash(bytes(leaf)))},
            "root",
        ),
        "leaf index": ({**bundle, "leaf_index": bundle["leaf_index"] + 1}, "index"),
        "signature byte": ({**bundle, "checkpoint": f"{text}\n{dash} {name} {_flip(sig, 7)}\n"}, "signature"),
        "root in the signed text": (
            {**bundle, "checkpoint": text.replace(text.split("\n")[2], _flip(text.split("\n")[2])) + "\n" + sigs},
            "signature",
        ),
        "another key": ({**bundle, "vkey": other.verifier.vkey}, "signature"),
        "tree size": ({**bundle, "tree_size": bundle["tree_size"] + 1}, "size"),
        "validly signed other root": (
            {**bundle, "checkpoint": _resign(note, other, root=merkle.leaf_hash(b"x")), "vkey": other.verifier.vkey},
            "root",
        ),
        "no blank line": ({**bundle, "checkpoint": note.replace("\n\n", "\n")}, "checkpoint"),
        "not base64": ({**bundle, "leaf": "%%%"}, "malformed"),
    }
    if bundle["proof"]:
        flipped = [_flip(bundle["proof"][0], 3), *bundle["proof"][1:]]
        cases["proof byte"] = ({**bundle, "proof": flipped}, "root")
        cases["proof hash dropped"] = ({**bundle, "proof": bundle["proof"][:-1]}, "root")
    cases["proof hash added"] = ({**bundle, "proof": [*bundle["proof"], _b64(bytes(32))]}, "root")
    return cases


def _synthetic_bundles(size: int, signer: NoteSigner) -> list[dict[str, Any]]:
    """Every leaf's bundle in a tree of ``size`` made here from entries' canonical bytes (no database)."""
    a = AGREEMENTS["natal-care-to-research@v1"]
    rng = random.Random(size)
    leaves = [
        canonical_bytes(
            i + 1,
            EntryDraft(
                disclosure_id=f"d-{i}",
                event_id=f"e-{i}",
                event_type="natal_care",
                provider=a.providers[0],
                recipient=a.recipients[0],
                agreement_id=a.id,
                agreement_version=a.version,
                purpose=a.purpose.value,
                legal_basis="x" * rng.randrange(0, 300),
                outcome="DISCLOSED",
                reason=None,
                fields=(),
                consent_mode=a.consent_mode.value,
                consent_version=0,
                subject_key=f"nhs:{generate(rng)}",
                decided_at=T0,
            ),
            rng.randbytes(32),
        )
        for i in range(size)
    ]
    hashes = [merkle.leaf_hash(leaf) for leaf in leaves]
    tree = merkle.MerkleTree(hashes)
    note = sign_note(CheckpointBody(ORIGIN, size, tree.root()).text(), signer)
    return [
        {
            "seq": i + 1,
            "leaf": _b64(leaf),
            "leaf_hash": _b64(hashes[i]),
            "leaf_index": i,
            "tree_size": size,
            "proof": [_b64(p) for p in tree.inclusion_proof(i)],
            "checkpoint": note,
            "vkey": signer.verifier.vkey,
        }
        for i, leaf in enumerate(leaves)
    ]


def test_browser_checker_agrees_with_python_on_every_leaf_of_small_trees(checker: Page) -> None:
    signer = NoteSigner.generate(ORIGIN)
    bundles = [b for size in (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33) for b in _synthetic_bundles(size, signer)]
    assert [check_bundle(b) for b in bundles] == [None] * len(bundles)
    assert js_check(checker, bundles) == [None] * len(bundles)
    # A proof for one leaf does not pass for its neighbour.
    swapped = [{**b, "proof": bundles[i + 1]["proof"]} for i, b in enumerate(bundles[:-1]) if b["tree_size"] > 2]
    python = [check_bundle(b) for b in swapped]
    assert js_check(checker, swapped) == python and "root" in python


def _ledger_with_checkpoint(role_db: RoleDatabase, subject: str, n: int, signer: NoteSigner) -> None:
    a = AGREEMENTS["natal-care-to-health-visiting@v1"]
    drafts = [
        EntryDraft(
            disclosure_id=f"d-{subject}-{i}",
            event_id=f"e-{subject}-{i}",
            event_type="natal_care",
            provider=a.providers[0],
            recipient=a.recipients[0],
            agreement_id=a.id,
            agreement_version=a.version,
            purpose=a.purpose.value,
            legal_basis=a.legal_basis,
            outcome="DISCLOSED",
            reason=None,
            fields=a.fields["natal_care"],
            consent_mode=a.consent_mode.value,
            consent_version=0,
            subject_key=f"nhs:{subject}",
            decided_at=T0 + timedelta(minutes=i),
        )
        for i in range(n)
    ]
    append(role_db.app, drafts)
    make_checkpoint(role_db.app, signer, ORIGIN)


def test_browser_checker_agrees_with_python_on_real_bundles_and_names_each_failure(
    checker: Page, role_db: RoleDatabase
) -> None:
    signer = NoteSigner.generate(ORIGIN)
    me = generate(random.Random(20261201))
    _ledger_with_checkpoint(role_db, me, 13, signer)
    report = collect(role_db.app, me, AGREEMENTS, as_of=T0.date())
    bundles = list(bundles_for(report.items, signer.verifier.vkey).values())
    assert len(bundles) == 13
    assert [check_bundle(b) for b in bundles] == [None] * 13
    assert js_check(checker, bundles) == [None] * 13

    shown = [{k: getattr(i, k) for k in SHOWN} for i in report.items]
    assert [check_bundle(b, w) for b, w in zip(bundles, shown, strict=True)] == [None] * 13
    assert js_check(checker, bundles, shown) == [None] * 13
    # A proof of another entry than the one shown, or of the entry shown as something else, is refused.
    wrong = [
        (bundles[1], shown[0]),
        (bundles[0], {**shown[0], "recipient": "cps"}),
        (bundles[0], {**shown[0], "outcome": "WITHHELD"}),
    ]
    assert [check_bundle(b, w) for b, w in wrong] == ["entry"] * 3
    assert js_check(checker, [b for b, _ in wrong], [w for _, w in wrong]) == ["entry"] * 3

    for n in (0, 6, 12):
        cases = broken(bundles[n], signer)
        inputs = [b for b, _ in cases.values()]
        expected = {name: want for name, (_, want) in cases.items()}
        python = dict(zip(cases, (check_bundle(b, shown[n]) for b in inputs), strict=True))
        browser = dict(zip(cases, js_check(checker, inputs, [shown[n]] * len(inputs)), strict=True))
        assert python == expected
        assert browser == expected
    # The words the page shows are the same in both.
    words = checker.evaluate("() => [AccordProofs.VERIFIED, AccordProofs.FAILURES, AccordProofs.OUTCOMES]")
    assert words[0] == VERIFIED and {k: words[1][k] for k in FAILURES} == FAILURES
    [outcome] = [f for f in SCHEMA["fields"] if f["name"] == "outcome"]
    assert words[2] == outcome["type"]["symbols"]  # the leaf's enum, in the schema's order


# --- labels -------------------------------------------------------------------------------------


def _paths(schema: Any, prefix: str = "") -> set[str]:
    """Every dotted path into a record schema: records, their fields, down to the leaves."""
    if isinstance(schema, list):
        return set().union(*(_paths(s, prefix) for s in schema))
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return set()
    out: set[str] = set()
    for f in schema["fields"]:
        path = f"{prefix}{f['name']}"
        out.add(path)
        out |= _paths(f["type"], f"{path}.")
    return out


def test_every_field_of_every_event_schema_has_plain_words() -> None:
    events = catalogue.load(PACKAGE_ROOT / "schemas" / "events")
    for name in ("custody", "natal_care", "referral"):
        paths = set().union(*(_paths(v.schema) for v in events[name].versions))
        missing = sorted(p for p in paths if p not in LABELS[name])
        assert not missing, f"{name}: no label for {missing}"
        assert all("_" not in LABELS[name][p] and "." not in LABELS[name][p] for p in paths)


# --- the page, served -----------------------------------------------------------------------------

SECRET = "test-only-web-secret-0123456789abcdef"
MARKUP = "<script>document.title='owned'</script><img src=x onerror=alert(1)> & co"
# WCAG 2.0, 2.1 and 2.2, levels A and AA: the tags axe-core uses for them.
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]
AXE = PACKAGE_ROOT / "tests" / "assets" / "axe.min.js"


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """``app`` on uvicorn at 127.0.0.1 and a free port, in a thread; yields the base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def _draft(key: str, subject: str, i: int, outcome: str = "DISCLOSED", **changes: Any) -> EntryDraft:
    a = AGREEMENTS[key]
    event_type = a.event_types[0]
    d = EntryDraft(
        disclosure_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{subject}|{key}|{i}")),
        event_id=f"e-{subject}-{i}",
        event_type=event_type,
        provider=a.providers[0],
        recipient=a.recipients[0],
        agreement_id=a.id,
        agreement_version=a.version,
        purpose=a.purpose.value,
        legal_basis=a.legal_basis,
        outcome=outcome,
        reason=None if outcome == "DISCLOSED" else "consent denied (consent record 1)",
        fields=a.fields[event_type] if outcome == "DISCLOSED" else (),
        consent_mode=a.consent_mode.value,
        consent_version=0 if outcome == "DISCLOSED" else 1,
        subject_key=f"nhs:{subject}",
        decided_at=T0 + timedelta(days=i),
    )
    return replace(d, **changes)


@dataclass
class Citizen:
    base: str
    subject: str  # NHS number
    other: str  # another person's, in the same ledger
    proven: int  # entries under the checkpoint
    engine: Any
    baby: str = ""  # NHS number of the baby the mother's natal-care entries name

    def sign_in(self, page: Page, *, as_baby: bool = False) -> None:
        link = sign_in_link(SECRET, CITIZEN, f"nhs:{self.baby if as_baby else self.subject}", self.base).link
        response = page.goto(link)
        assert response is not None and response.ok and page.url == f"{self.base}/me"


@pytest.fixture
def citizen(role_db: RoleDatabase) -> Iterator[Citizen]:
    """A mother's ledger: natal care to health visiting and (pseudonymised) research, her baby named
    as another subject, a custody disclosure to the CPS, a referral under a deferred agreement, one
    entry withheld by her choice, one entry after the checkpoint; and another person's entries."""
    rng = random.Random(20261201)
    me, baby, other = generate(rng), generate(rng), generate(rng)
    consent.record(role_db.app, f"nhs:{me}", consent.ConsentDecision.DENY, known=KNOWN, purpose="research")
    drafts = [
        _draft("natal-care-to-health-visiting@v1", me, 1, subjects=(f"nhs:{baby}",)),
        _draft("natal-care-to-research@v1", me, 1, subjects=(f"nhs:{baby}",)),
        _draft("custody-to-prosecution@v1", other, 2),
        # A value an agency sent, with markup in it: shown as text, never run.
        _draft("custody-to-prosecution@v1", me, 3, legal_basis=MARKUP),
        _draft("referral-to-mash@v1", me, 4),  # deferred until 2027-03-31
        _draft("natal-care-to-research@v1", me, 5, outcome="WITHHELD", subjects=(f"nhs:{baby}",)),
        _draft("natal-care-to-health-visiting@v1", other, 6),
    ]
    append(role_db.app, drafts)
    signer = NoteSigner.generate(ORIGIN)
    make_checkpoint(role_db.app, signer, ORIGIN)
    append(role_db.app, [_draft("natal-care-to-health-visiting@v1", me, 7)])  # newer than the checkpoint
    app = create_app(Settings(), engine=role_db.app, verifier=signer.verifier, secret=SECRET)
    with serving(app) as base:
        yield Citizen(base, me, other, 4, role_db.app, baby)


def _results(page: Page, n: int) -> list[str]:
    page.wait_for_function(
        "n => document.querySelectorAll('[data-accord-proof-result]').length >= n + 1", arg=n, timeout=15_000
    )
    return page.locator("[data-accord-proof] [data-accord-proof-status]").all_inner_texts()


def test_citizen_sees_disclosures_by_name_in_plain_words_and_every_proof_verifies(
    browser: Browser, citizen: Citizen
) -> None:
    context = browser.new_context(bypass_csp=True)  # only so the test can inject axe-core
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    citizen.sign_in(page)

    text = page.locator("main").inner_text()
    for name in (
        "Manchester University NHS Foundation Trust",
        "Salford City Council health visiting service",
        "Salford City Council public-health intelligence",
        "Crown Prosecution Service",
        "Metropolitan Police Service",
    ):
        assert name in text
    for label in ("your NHS number", "your baby's details (NHS number, date of birth and sex)", "your address"):
        assert label in text
    assert page.locator("[data-recipient=salford-research] [data-pseudonymised]").all_inner_texts() == [
        "your NHS number, as a code that only this recipient can link",
        "your baby's NHS number, as a code that only this recipient can link",
    ]
    # No ids or field paths where a person reads, and nothing of the other person's.
    for raw in ("salford-health-visiting", "mft-nhs-trust", "mother.nhs_number", "baby.nhs_number", "nhs:"):
        assert raw not in text
    assert citizen.subject not in page.content() and citizen.other not in page.content()

    summary = page.get_by_test_id("summary").inner_text()
    assert "3 organisations were sent information about you, 4 times in all" in summary
    assert "1 more record is not shown yet; it will appear on 31 March 2027." in summary
    assert (
        "1 more entry is not shown yet. It will appear here on 31 March 2027."
        in page.get_by_test_id("deferred").inner_text()
    )
    not_sent = page.locator("#not-sent + ul").inner_text()
    assert "Salford City Council public-health intelligence" in not_sent and "because you said no on" in not_sent
    assert "No to sharing for research" in page.get_by_test_id("choices").inner_text()
    assert "make a complaint to the ICO" in text
    assert page.get_by_role("link", name="make a complaint to the ICO").get_attribute("href") == ICO_COMPLAINTS

    assert _results(page, citizen.proven) == [VERIFIED] * citizen.proven
    assert page.locator("[data-accord-proof-summary]").inner_text() == (
        "All 4 entries below verified in your browser: each is in the signed record, unchanged."
    )
    assert "Not yet: this entry is newer" in page.locator("[data-outcome]").first.inner_text()
    assert page.locator("[data-accord-proof-status][aria-live=polite]").count() == citizen.proven
    assert not errors, errors
    assert page.title() != "owned" and page.locator("main img").count() == 0
    page.locator("[data-recipient=cps] .govuk-details__summary").click()
    assert MARKUP in page.locator("[data-recipient=cps]").inner_text()

    page.add_script_tag(path=str(AXE))
    axe = page.evaluate(
        "tags => axe.run(document, {runOnly: {type: 'tag', values: tags}}).then(r => ({passes: r.passes.length, "
        "violations: r.violations.map(v => v.id + ': ' + v.help + ' (' + v.nodes.length + ')')}))",
        WCAG_TAGS,
    )
    assert axe["violations"] == [] and axe["passes"] > 10
    context.close()


def test_a_flipped_proof_byte_is_reported_as_not_verifying(browser: Browser, citizen: Citizen) -> None:
    page = browser.new_page()
    flipped: dict[str, int] = {}

    def tamper(route: Route) -> None:
        bundles = route.fetch().json()
        seq = sorted(bundles, key=int)[1]
        bundles[seq]["proof"][0] = _flip(bundles[seq]["proof"][0], 5)
        flipped["seq"] = int(seq)
        route.fulfill(json=bundles)

    page.route("**/me/proofs.json", tamper)
    citizen.sign_in(page)
    results = _results(page, citizen.proven)
    assert sorted(results) == sorted([VERIFIED] * (citizen.proven - 1) + [f"Not verified: {FAILURES['root']}."])
    status = page.locator(f"#entry-{flipped['seq']} [data-accord-proof-status]")
    assert status.inner_text() == "Not verified: the proof does not lead to the signed root."
    assert status.get_attribute("aria-live") == "polite"
    assert page.locator("[data-accord-proof-summary]").inner_text() == (
        "1 of 4 entries did not verify in your browser; it is marked “Not verified” below."
    )
    page.close()


def _two_natal_events_of_one_mother() -> tuple[dict[str, Any], dict[str, Any]]:
    """Two natal-care events about the same (synthetic) mother, from a fresh scenario."""
    for _ in range(20):
        scenario = build_scenario(n_events=60, seed=random.SystemRandom().randrange(1 << 30))
        by_mother: dict[str, list[dict[str, Any]]] = {}
        for e in scenario.events:
            if e.event_type == "natal_care":
                by_mother.setdefault(e.record["mother"]["nhs_number"], []).append(e.record)
        pairs = [events[:2] for events in by_mother.values() if len(events) >= 2]
        if pairs:
            return pairs[0][0], pairs[0][1]
    raise AssertionError("no synthetic mother with two natal-care events")


def _wait_for(probe: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("condition not met within timeout")


def test_withdrawing_consent_on_the_page_withholds_the_next_event_and_shows_the_retraction(
    browser: Browser, broker: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first, second = _two_natal_events_of_one_mother()
    mother = first["mother"]["nhs_number"]
    visiting = "Salford City Council health visiting service"
    with running_bus(broker, tmp_path_factory.mktemp("web-me")) as bus:
        engine = create_engine(bus.settings.ledger_url)  # the app role, as the processor
        signer = NoteSigner.generate(bus.settings.ledger_origin)
        bus.publish([("natal_care", first)])
        [disclosed] = bus.ledger(event_id=first["envelope"]["event_id"], recipient="salford-health-visiting")
        assert disclosed.outcome == "DISCLOSED"
        make_checkpoint(engine, signer, bus.settings.ledger_origin)
        app = create_app(bus.settings, engine=engine, verifier=signer.verifier, secret=SECRET)
        with serving(app) as base:
            page = browser.new_page()
            Citizen(base, mother, "", 0, engine).sign_in(page)
            section = page.locator("[data-recipient=salford-health-visiting]")
            assert section.locator("[data-outcome=DISCLOSED]").count() == 1

            page.get_by_role("link", name=f"Stop sharing with {visiting}").click()
            effect = page.get_by_test_id("effect").inner_text()
            assert f"Future sharing with {visiting} that rests on your agreement stops." in effect
            assert (
                f"1 past disclosure will be retracted: {visiting} will be told to stop using what it was sent."
                in effect
            )
            page.get_by_role("button", name="Confirm: stop sharing").click()
            page.wait_for_url(f"{base}/me?recorded=*")
            banner = page.locator(".govuk-notification-banner").inner_text()
            assert f"Your choice is recorded: No to sharing with {visiting}." in banner
            [record] = consent.history(engine, [f"nhs:{mother}"])[f"nhs:{mother}"]
            assert (record.recipient, record.decision) == ("salford-health-visiting", consent.ConsentDecision.DENY)

            [retraction] = _wait_for(lambda: bus.ledger(refers_to=disclosed.disclosure_id))
            assert retraction.outcome == "RETRACTED"
            bus.publish([("natal_care", second)])
            [withheld] = bus.ledger(event_id=second["envelope"]["event_id"], recipient="salford-health-visiting")
            assert (withheld.outcome, withheld.reason) == ("WITHHELD", f"consent denied (consent record {record.id})")
            make_checkpoint(engine, signer, bus.settings.ledger_origin)

            page.goto(f"{base}/me")
            told = section.locator("[data-outcome=RETRACTED]")
            assert told.count() == 1 and "Told to stop using what it was sent on" in told.inner_text()
            assert "because you withdrew your agreement on" in told.inner_text()
            assert "it was told to stop using it" in section.locator("[data-outcome=DISCLOSED]").inner_text()
            assert section.locator("[data-outcome=WITHHELD]").count() == 1
            assert f"{visiting}, " in page.locator("#not-sent + ul").inner_text()
            assert f"No to sharing with {visiting}" in page.get_by_test_id("choices").inner_text()
            assert page.get_by_role("link", name=f"Allow sharing with {visiting}").count() == 1
            proven = page.locator("[data-accord-proof]").count()
            assert proven >= 4 and _results(page, proven) == [VERIFIED] * proven
            page.close()
        engine.dispose()


def test_a_consent_change_needs_the_sessions_csrf_token_and_a_consent_based_recipient(
    browser: Browser, citizen: Citizen
) -> None:
    page = browser.new_page()
    citizen.sign_in(page)
    before = consent.history(citizen.engine, [f"nhs:{citizen.subject}"])[f"nhs:{citizen.subject}"]
    form: dict[str, str | float | bool] = {"recipient": "salford-health-visiting", "decision": "deny"}
    assert page.request.post(f"{citizen.base}/me/consent", form=form).status == 403
    assert page.request.post(f"{citizen.base}/me/consent", form={**form, "csrf_token": "0" * 64}).status == 403
    page.goto(f"{citizen.base}/me/consent?recipient=salford-health-visiting&decision=deny")
    token = page.locator("main input[name=csrf_token]").get_attribute("value")
    statutory = page.request.post(
        f"{citizen.base}/me/consent", form={"recipient": "cps", "decision": "deny", "csrf_token": token or ""}
    )
    assert statutory.status == 400
    refused = page.goto(f"{citizen.base}/me/consent?recipient=cps&decision=deny")
    assert refused is not None and refused.status == 400
    after = consent.history(citizen.engine, [f"nhs:{citizen.subject}"])[f"nhs:{citizen.subject}"]
    assert after == before
    page.close()


def test_the_babys_page_keeps_the_mothers_choices_to_herself(browser: Browser, citizen: Citizen) -> None:
    """The baby is another subject of the mother's natal-care entries, one of them held back by her choice."""
    page = browser.new_page()
    citizen.sign_in(page, as_baby=True)
    main = page.locator("main").inner_text()
    assert "Salford City Council health visiting service" in main  # what was sent about the baby
    assert "Because of your choices" not in main and "you said no" not in main
    page.goto(f"{citizen.base}/me/consent?recipient=salford-research&decision=deny")
    effect = page.get_by_test_id("effect").inner_text()
    assert "are shared with Salford City Council public-health intelligence by that person's choices" in effect
    page.close()


def test_stop_sharing_stops_it_even_after_an_earlier_choice_naming_a_purpose(
    browser: Browser, citizen: Citizen
) -> None:
    """An earlier permit for health visiting *and* its purpose (through the API, say) beat the page's
    recipient-wide deny, so "Stop sharing" stopped nothing. Judged by the rule the processor decides by."""
    recipient = "salford-health-visiting"
    purpose = AGREEMENTS["natal-care-to-health-visiting@v1"].purpose.value
    subject = f"nhs:{citizen.subject}"
    consent.record(
        citizen.engine, subject, consent.ConsentDecision.PERMIT, known=KNOWN, recipient=recipient, purpose=purpose
    )
    page = browser.new_page()
    citizen.sign_in(page)
    page.get_by_role("link", name="Stop sharing with Salford City Council health visiting service").click()
    page.get_by_role("button", name="Confirm: stop sharing").click()
    page.wait_for_url(f"{citizen.base}/me?recorded=*")
    records = consent.history(citizen.engine, [subject])[subject]
    classes = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
    governing = consent.applicable(records, purpose, recipient, classes.get(recipient), datetime.now(UTC))
    assert governing is not None and governing.decision is consent.ConsentDecision.DENY
    assert page.get_by_role("link", name="Allow sharing with Salford City Council health visiting service").count() == 1
    page.close()
