"""The citizens' consent API: own data only, tokens checked, agreements for staff.

Choice documented here (and in ``consent.api``): a valid staff token on ``/v1/me``
is 403 (authenticated, wrong role), not 401.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from accord.settings import PACKAGE_ROOT
from agreements import load_dir
from consent import store
from consent.api import create_app
from consent.model import ConsentDecision
from consent.tokens import TokenError, issue_token, verify_token
from producers.nhs_number import is_valid

SECRET = "test-secret-for-the-consent-api-0123456789"
ME = "nhs:9434765919"
OTHER = "nhs:9434765870"
AGREEMENTS = load_dir(PACKAGE_ROOT / "agreements" / "examples")


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def citizen(subject: str = ME) -> dict[str, str]:
    return _auth(issue_token(SECRET, "citizen", subject))


def staff() -> dict[str, str]:
    return _auth(issue_token(SECRET, "staff"))


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    store.init_consent(pg_engine)
    return pg_engine


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(create_app(engine, AGREEMENTS, SECRET)) as c:
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
    unsigned = jwt.encode({"role": "staff", "exp": now + 60}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify_token(SECRET, unsigned)


# --- the citizen's own data -----------------------------------------------------------------


def test_citizen_reads_only_their_own_records(engine: Engine, client: TestClient) -> None:
    mine = [
        store.record(engine, ME, ConsentDecision.DENY, purpose="research"),
        store.record(engine, ME, ConsentDecision.PERMIT, recipient="liaison-diversion"),
        store.record(engine, ME, ConsentDecision.PERMIT, purpose="research"),
    ]
    theirs = [
        store.record(engine, OTHER, ConsentDecision.DENY, purpose="safeguarding"),
        store.record(engine, OTHER, ConsentDecision.DENY, recipient="cps"),
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
    store.record(engine, OTHER, ConsentDecision.DENY, purpose="research")
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
    assert (rec.decision, rec.purpose, rec.recipient) == (ConsentDecision.DENY, "crime_prevention_and_prosecution", "cps")
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
@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/me/consents"), ("POST", "/v1/me/consents"), ("GET", "/v1/agreements")])
def test_missing_or_invalid_token_is_401(
    engine: Engine, client: TestClient, headers: dict, method: str, path: str
) -> None:
    store.record(engine, ME, ConsentDecision.DENY, purpose="research")
    resp = client.request(method, path, headers=headers, json={"decision": "permit", "purpose": "research"})
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "9434765919" not in resp.text
    assert [r.decision for r in store.history(engine, [ME])[ME]] == [ConsentDecision.DENY]


def test_staff_token_on_me_is_403(engine: Engine, client: TestClient) -> None:
    store.record(engine, ME, ConsentDecision.DENY, purpose="research")
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
        create_app(engine, AGREEMENTS, "short")


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
    assert set(post_schema["properties"]) == {"decision", "purpose", "recipient"}
