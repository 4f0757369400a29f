"""The citizens' consent API: own data only, tokens checked, agreements for staff.

Choice documented here (and in ``accord.web.consent_api``): a valid staff token on ``/v1/me``
is 403 (authenticated, wrong role), not 401.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select

from accord.provision import init_database
from accord.web.consent_api import create_app
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT
from consent import store
from consent.model import ConsentDecision, KnownScopes
from consent.tokens import TokenError, issue_token, verify_token
from producers.nhs_number import is_valid
from tests.conftest import RoleDatabase, _schema_url
from tests.ports import free_port

SECRET = "test-secret-for-the-consent-api-0123456789"
ME = "nhs:9434765919"
OTHER = "nhs:9434765870"
AGREEMENTS = load_dir(PACKAGE_ROOT / "agreements" / "examples")
KNOWN = KnownScopes.from_partners(load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def citizen(subject: str = ME) -> dict[str, str]:
    return _auth(issue_token(SECRET, "citizen", subject))


def staff() -> dict[str, str]:
    return _auth(issue_token(SECRET, "staff"))


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    init_database(pg_engine)  # the tables as `accord ledger init` makes them: the migrations
    return pg_engine


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, AGREEMENTS, SECRET, known=KNOWN)) as c:
        yield c


def test_test_data_nhs_numbers_are_valid() -> None:
    assert is_valid(ME.split(":")[1]) and is_valid(OTHER.split(":")[1])


# --- tokens ---------------------------------------------------------------------------------


def test_token_round_trip_and_refusals() -> None:
    assert verify_token(SECRET, issue_token(SECRET, "citizen", ME)).subject == ME
    staff_p = verify_token(SECRET, issue_token(SECRET, "staff"))
    assert (staff_p.role, staff_p.subject) == ("staff", None)
    with pytest.raises(ValueError):
        issue_token("too-short", "staff")
    with pytest.raises(ValueError):
        issue_token(SECRET, "citizen")  # no subject
    now = int(time.time())
    cases = {
        "expired": jwt.encode({"role": "staff", "exp": now - 10}, SECRET, algorithm="HS256"),
        "bad signature": issue_token(SECRET[::-1], "citizen", ME),
        "malformed": "not-a-jwt",
        "unknown role": jwt.encode({"role": "admin", "exp": now + 60}, SECRET, algorithm="HS256"),
        "citizen token without subject": jwt.encode({"role": "citizen", "exp": now + 60}, SECRET, algorithm="HS256"),
    }
    for reason, token in cases.items():
        with pytest.raises(TokenError) as info:
            verify_token(SECRET, token)
        assert info.value.reason == reason
    # alg "none" takes no key: the stub asks for one whatever the algorithm.
    unsigned = jwt.encode({"role": "staff", "exp": now + 60}, None, algorithm="none")  # type: ignore[arg-type]
    with pytest.raises(TokenError):
        verify_token(SECRET, unsigned)


# --- the citizen's own data -----------------------------------------------------------------


def test_citizen_reads_only_their_own_records(engine: Engine, client: TestClient) -> None:
    mine = [
        store.record(engine, ME, ConsentDecision.DENY, known=KNOWN, purpose="research"),
        store.record(engine, ME, ConsentDecision.PERMIT, known=KNOWN, recipient="liaison-diversion"),
        store.record(engine, ME, ConsentDecision.PERMIT, known=KNOWN, purpose="research"),
    ]
    theirs = [
        store.record(engine, OTHER, ConsentDecision.DENY, known=KNOWN, purpose="safeguarding"),
        store.record(engine, OTHER, ConsentDecision.DENY, known=KNOWN, recipient="cps"),
    ]
    resp = client.get("/v1/me/consents", headers=citizen(ME))
    assert resp.status_code == 200
    body = resp.json()
    assert [r["id"] for r in body["history"]] == [r.id for r in mine]
    # the research scope was replaced by the newer permit
    assert [(r["id"], r["decision"]) for r in body["current"]] == [(mine[1].id, "permit"), (mine[2].id, "permit")]
    their_ids = {r.id for r in theirs}
    assert not their_ids & {r["id"] for r in body["history"] + body["current"]}
    assert OTHER not in resp.text and "9434765870" not in resp.text

    other = client.get("/v1/me/consents", headers=citizen(OTHER)).json()
    assert [r["id"] for r in other["history"]] == [r.id for r in theirs]


def test_citizen_with_no_records_sees_an_empty_list(engine: Engine, client: TestClient) -> None:
    store.record(engine, OTHER, ConsentDecision.DENY, known=KNOWN, purpose="research")
    resp = client.get("/v1/me/consents", headers=citizen(ME))
    assert resp.status_code == 200
    assert resp.json() == {"history": [], "current": []}


def test_citizen_post_records_for_their_own_subject(engine: Engine, client: TestClient) -> None:
    resp = client.post(
        "/v1/me/consents",
        headers=citizen(ME),
        json={"decision": "deny", "purpose": "crime_prevention_and_prosecution", "recipient": "cps"},
    )
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert (created["decision"], created["purpose"], created["recipient"]) == (
        "deny",
        "crime_prevention_and_prosecution",
        "cps",
    )
    saved = store.history(engine, [ME, OTHER])
    assert OTHER not in saved
    [rec] = saved[ME]
    assert rec.id == created["id"]
    assert (rec.decision, rec.purpose, rec.recipient) == (
        ConsentDecision.DENY,
        "crime_prevention_and_prosecution",
        "cps",
    )
    listed = client.get("/v1/me/consents", headers=citizen(ME)).json()
    assert [r["id"] for r in listed["current"]] == [created["id"]]


def test_a_body_naming_a_subject_is_refused(engine: Engine, client: TestClient) -> None:
    resp = client.post(
        "/v1/me/consents",
        headers=citizen(ME),
        json={"decision": "permit", "purpose": "research", "subject_key": OTHER},
    )
    assert resp.status_code == 422
    assert "9434765870" not in resp.text
    assert store.history(engine, [ME, OTHER]) == {}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"decision": "permit", "purpose": "marketing"}, "purpose"),
        ({"decision": "permit", "recipient": "acme-insurance"}, "recipient"),
        ({"decision": "permit"}, None),
        ({"decision": "maybe", "purpose": "research"}, "decision"),
    ],
)
def test_invalid_preferences_are_422(engine: Engine, client: TestClient, body: dict, field: str | None) -> None:
    resp = client.post("/v1/me/consents", headers=citizen(ME), json=body)
    assert resp.status_code == 422
    issues = resp.json()["detail"]
    if field is not None:
        assert any(i["loc"][-1] == field for i in issues), issues
    assert all("input" not in i for i in issues)
    assert store.history(engine, [ME]) == {}


@pytest.mark.parametrize(
    "raw",
    [
        '{"decision": "permit", "purpose": "research", "decision": "deny"}',
        '{"decision": "deny", "recipient": "salford-mash", "recipient": "cps"}',
        '{"decision": "deny", "purpose": "research", "9434765919": 1, "9434765919": 2}',  # a key never echoed
    ],
)
def test_a_field_given_twice_is_422_and_records_nothing(engine: Engine, client: TestClient, raw: str) -> None:
    """A JSON reader keeps the last value: {"decision": "permit", ..., "decision": "deny"} recorded a deny."""
    resp = client.post(
        "/v1/me/consents", headers={**citizen(ME), "content-type": "application/json"}, content=raw.encode()
    )
    assert resp.status_code == 422, resp.text
    [issue] = resp.json()["detail"]
    assert issue["type"] == "duplicate_key" and issue["msg"] == "given more than once: give each field once"
    assert "9434765919" not in resp.text and "input" not in issue
    assert store.history(engine, [ME]) == {}


def test_a_no_to_a_recipient_reached_by_statutory_sharing_says_what_it_cannot_stop(
    engine: Engine, client: TestClient
) -> None:
    """The CPS receives custody records under a statute, whatever consent says: the "no" is recorded,
    and the answer says it stops nothing (it said nothing, as if it had)."""
    resp = client.post("/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": "cps"})
    assert resp.status_code == 201, resp.text
    note = resp.json()["note"]
    assert note.startswith("All sharing with cps does not rest on your consent") and "Act" in note, note
    consent_based = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": "salford-research"}
    )
    assert consent_based.status_code == 201 and consent_based.json()["note"] is None
    allowed = client.post("/v1/me/consents", headers=citizen(ME), json={"decision": "permit", "recipient": "cps"})
    assert allowed.json()["note"] is None
    # A "no" for a purpose that only statutory sharing serves stops nothing either.
    purpose = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "purpose": "crime_prevention_and_prosecution"}
    )
    assert purpose.json()["note"].startswith("All sharing for crime prevention and prosecution does not rest")


def test_a_no_to_a_class_of_recipients_reached_by_statutory_sharing_says_what_it_cannot_stop(
    engine: Engine, client: TestClient
) -> None:
    """A "no" to a whole class was answered with no note, where the same "no" to its one member had one."""
    resp = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient_class": "prosecution"}
    )
    assert resp.status_code == 201, resp.text
    note = resp.json()["note"]
    assert note.startswith("All sharing with prosecution recipients (cps) does not rest on your consent"), note
    assert "Act" in note
    research = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient_class": "research_body"}
    )
    assert research.status_code == 201 and research.json()["note"] is None
    allowed = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "permit", "recipient_class": "prosecution"}
    )
    assert allowed.status_code == 201 and allowed.json()["note"] is None


def test_a_class_of_recipients_can_be_named_as_the_error_for_a_class_given_as_recipient_advises(
    engine: Engine, client: TestClient
) -> None:
    """The API answered `recipient: "nhs"` with "record it as a recipient class" and then refused
    `recipient_class` as an unexpected field."""
    resp = client.post("/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient_class": "nhs"})
    assert resp.status_code == 201, resp.text
    assert (resp.json()["recipient_class"], resp.json()["recipient"]) == ("nhs", None)
    [rec] = store.history(engine, [ME])[ME]
    assert rec.recipient_class == "nhs" and rec.decision is ConsentDecision.DENY
    unknown = client.post("/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient_class": "acme"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["loc"] == ["body", "recipient_class"]
    assert "acme" not in unknown.text
    both = client.post(
        "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": "cps", "recipient_class": "nhs"}
    )
    assert both.status_code == 422 and len(store.history(engine, [ME])[ME]) == 1


def test_unknown_recipient_class_as_recipient_and_bare_scope_are_422_with_reasons(
    engine: Engine, client: TestClient
) -> None:
    cases = {
        "nobody": "unknown recipient",
        "nhs": "recipient class, not a partner",  # a class from partners.yaml is not a partner id
    }
    for recipient, reason in cases.items():
        resp = client.post("/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": recipient})
        assert resp.status_code == 422
        [issue] = resp.json()["detail"]
        assert issue["loc"] == ["body", "recipient"] and reason in issue["msg"]
        assert recipient not in issue["msg"]  # the reason does not echo the input
    assert store.history(engine, [ME]) == {}


def test_recipient_known_from_the_partner_registry_not_from_agreements(engine: Engine) -> None:
    """The registry decides what a preference may name, even a partner no loaded agreement names yet."""
    known = KnownScopes.from_partners({"cps": "prosecution", "new-partner": "nhs"})
    with TestClient(create_app(engine, AGREEMENTS, SECRET, known=known)) as c:
        assert (
            c.post(
                "/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": "new-partner"}
            ).status_code
            == 201
        )
        assert (
            c.post("/v1/me/consents", headers=citizen(ME), json={"decision": "deny", "recipient": "hmcts"}).status_code
            == 422
        )
    assert [r.recipient for r in store.history(engine, [ME])[ME]] == ["new-partner"]


def _token_for(subject: str) -> dict[str, str]:
    """A correctly signed citizen token whatever its subject (issue_token refuses malformed ones)."""
    now = int(time.time())
    return _auth(
        jwt.encode({"role": "citizen", "sub": subject, "iat": now, "exp": now + 60}, SECRET, algorithm="HS256")
    )


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("NHS:9434765870", "lower case"),
        ("nhs:9434765870 ", "contains spaces"),
        (" nhs:9434765870", "contains spaces"),
        ("nhs:9434765871", "Modulus 11"),
        ("nhs:123", "10 digits"),
        ("passport:9434765870", "unknown subject key scheme"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/me/consents"), ("POST", "/v1/me/consents")])
def test_a_token_whose_subject_is_not_a_well_formed_key_is_401_and_records_nothing(
    engine: Engine, client: TestClient, subject: str, reason: str, method: str, path: str
) -> None:
    resp = client.request(method, path, headers=_token_for(subject), json={"decision": "deny", "purpose": "research"})
    assert resp.status_code == 401
    assert "subject is not a well-formed subject key" in resp.json()["detail"] and reason in resp.json()["detail"]
    assert "9434765870" not in resp.text and "9434765871" not in resp.text
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(store.ConsentRow)).scalar_one() == 0
    with pytest.raises(ValueError):
        issue_token(SECRET, "citizen", subject)  # nor can such a token be issued


def test_a_token_for_a_bare_nhs_number_acts_on_the_normalised_key(engine: Engine, client: TestClient) -> None:
    resp = client.post(
        "/v1/me/consents", headers=_token_for("9434765870"), json={"decision": "deny", "purpose": "research"}
    )
    assert resp.status_code == 201, resp.text
    assert [r.id for r in store.history(engine, [OTHER])[OTHER]] == [resp.json()["id"]]
    listed = client.get("/v1/me/consents", headers=citizen(OTHER)).json()
    assert [r["id"] for r in listed["history"]] == [resp.json()["id"]]


# --- authentication and authorisation -------------------------------------------------------


def _expired_citizen() -> str:
    now = int(time.time())
    return jwt.encode({"role": "citizen", "sub": ME, "iat": now - 120, "exp": now - 60}, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        _auth("not-a-jwt"),
        _auth(issue_token("another-secret-entirely-0123456789abcdef", "citizen", ME)),
        _auth(_expired_citizen()),
    ],
    ids=["missing", "not-bearer", "malformed", "bad-signature", "expired"],
)
@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/me/consents"), ("POST", "/v1/me/consents"), ("GET", "/v1/agreements")]
)
def test_missing_or_invalid_token_is_401(
    engine: Engine, client: TestClient, headers: dict, method: str, path: str
) -> None:
    store.record(engine, ME, ConsentDecision.DENY, known=KNOWN, purpose="research")
    resp = client.request(method, path, headers=headers, json={"decision": "permit", "purpose": "research"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "9434765919" not in resp.text
    assert [r.decision for r in store.history(engine, [ME])[ME]] == [ConsentDecision.DENY]


def test_staff_token_on_me_is_403(engine: Engine, client: TestClient) -> None:
    store.record(engine, ME, ConsentDecision.DENY, known=KNOWN, purpose="research")
    assert client.get("/v1/me/consents", headers=staff()).status_code == 403
    resp = client.post("/v1/me/consents", headers=staff(), json={"decision": "permit", "purpose": "research"})
    assert resp.status_code == 403
    assert len(store.history(engine, [ME])[ME]) == 1


def test_citizen_token_on_agreements_is_403(client: TestClient) -> None:
    resp = client.get("/v1/agreements", headers=citizen(ME))
    assert resp.status_code == 403
    assert "9434765919" not in resp.text


def test_staff_reads_agreements(client: TestClient) -> None:
    resp = client.get("/v1/agreements", headers=staff())
    assert resp.status_code == 200
    got = {a["id"]: a for a in resp.json()}
    assert set(got) == {a.id for a in AGREEMENTS}
    prosecution = got["custody-to-prosecution"]
    assert prosecution["recipients"] == ["cps", "hmcts"]
    assert prosecution["purpose"] == "crime_prevention_and_prosecution"
    assert prosecution["event_types"] == ["custody"]
    assert set(prosecution["fields"]) == {"custody"} and prosecution["fields"]["custody"]
    for key in ("version", "title", "status", "providers", "legal_basis", "consent_mode"):
        assert key in prosecution


def test_short_secret_refused_at_startup(engine: Engine) -> None:
    with pytest.raises(ValueError):
        create_app(engine, AGREEMENTS, "short", known=KNOWN)


# --- starting the API -----------------------------------------------------------------------


def _uvicorn(url: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """The API started the way accord.web.consent_api documents, not through `accord consent serve`."""
    port = free_port()
    env = {**os.environ, "ACCORD_LEDGER_URL": url, "ACCORD_API_SECRET": SECRET, "ACCORD_STATE_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "accord.web.consent_api:app_from_settings", "--port", str(port)],
        env=env,
        cwd=PACKAGE_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc, port


@pytest.mark.parametrize("who", ["owner", "superuser"])
def test_uvicorn_factory_refuses_to_serve_as_a_role_that_could_change_consent_history(
    role_db: RoleDatabase, tmp_path: Path, who: str
) -> None:
    url = role_db.owner_url if who == "owner" else _schema_url(role_db.schema)
    proc, port = _uvicorn(url, tmp_path)
    try:
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "refusing to run as database role" in err
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)


def test_uvicorn_factory_serves_as_the_app_role(role_db: RoleDatabase, tmp_path: Path) -> None:
    proc, port = _uvicorn(role_db.app_url, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                resp = httpx.post(
                    f"http://127.0.0.1:{port}/v1/me/consents",
                    headers=citizen(ME),
                    json={"decision": "deny", "recipient": "cps"},
                    timeout=2,
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the API did not start"
                time.sleep(0.2)
        assert resp.status_code == 201, resp.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert [r.recipient for r in store.history(role_db.app, [ME])[ME]] == ["cps"]


@pytest.mark.parametrize(("secret", "problem"), [("", "is not set"), ("too-short", "is too short")])
def test_consent_serve_without_a_usable_secret_says_which_variable_and_what_to_do(
    role_db: RoleDatabase, tmp_path: Path, secret: str, problem: str
) -> None:
    env = {
        **os.environ,
        "ACCORD_LEDGER_URL": role_db.app_url,
        "ACCORD_API_SECRET": secret,
        "ACCORD_STATE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "consent", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"ACCORD_API_SECRET {problem}" in lines[0] and "at least 32 bytes" in lines[0]


def test_consent_serve_as_the_owner_is_refused_in_one_line(role_db: RoleDatabase, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "ACCORD_LEDGER_URL": role_db.owner_url,
        "ACCORD_API_SECRET": SECRET,
        "ACCORD_STATE_DIR": str(tmp_path),
    }
    result = subprocess.run(
        [sys.executable, "-m", "accord.cli", "consent", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "refusing to run as database role" in result.stderr


# --- OpenAPI --------------------------------------------------------------------------------


def test_openapi_lists_paths_and_bearer_scheme(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "Accord consent API"
    assert doc["info"]["description"]
    assert set(doc["paths"]) == {"/v1/me/consents", "/v1/agreements"}
    assert set(doc["paths"]["/v1/me/consents"]) == {"get", "post"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http" and schemes["bearerAuth"]["scheme"] == "bearer"
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert {"bearerAuth": []} in op["security"], path
            assert op["summary"]
            assert {"401", "403"} <= set(op["responses"]), path
    # no endpoint takes a subject anywhere
    for ops in doc["paths"].values():
        for op in ops.values():
            assert not op.get("parameters")
    post_schema = doc["components"]["schemas"]["ConsentRequest"]
    assert set(post_schema["properties"]) == {"decision", "purpose", "recipient", "recipient_class"}
