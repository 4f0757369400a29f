"""Safe to face the public (issue 12, item 5): each finding of the probe, for the API and the pages.

Plain HTTP (TestClient, and a real uvicorn on a socket where only a socket can show it):
authentication before the body, the body size limit, malformed but signed tokens,
token lifetime, throttling, pagination, security and cache headers, no Host
reflection, 422 bodies without the submitted keys, CSRF on forms, the session cookie.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from accord.provision import init_database
from accord.web.app import create_app
from accord.web.guard import Limits, TokenBucket
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT, Settings
from consent import store
from consent.model import ConsentDecision, KnownScopes
from consent.tokens import MAX_LIFETIME_S, TokenError, issue_token, sign_in_link, verify_token
from tests.ports import free_port

SECRET = "test-secret-for-the-web-pages-0123456789"
ME = "nhs:9434765919"
OTHER = "nhs:9434765870"
AGREEMENTS = list(load_dir(PACKAGE_ROOT / "agreements" / "examples"))
PARTNERS = load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml")
KNOWN = KnownScopes.from_partners(PARTNERS)


def _app(engine: Engine, limits: Limits | None = None):
    return create_app(
        Settings(),
        engine=engine,
        agreements=AGREEMENTS,
        partners=PARTNERS,
        secret=SECRET,
        limits=limits,
        read_dead_letters=False,
    )


@pytest.fixture
def engine(pg_engine: Engine) -> Engine:
    init_database(pg_engine)
    return pg_engine


@pytest.fixture
def client(engine: Engine) -> Iterator[TestClient]:
    with TestClient(_app(engine)) as c:
        yield c


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _signed(claims: dict) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


def _now() -> int:
    return int(time.time())


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


# --- the body: authentication first, and a size limit -----------------------------------------


def _asgi_call(app, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int]:
    """(status, how many times the app asked for the body) for one request straight through ASGI."""
    reads = 0
    status = 0

    async def receive():
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": True}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "root_path": "",
    }
    asyncio.run(app(scope, receive, send))
    return status, reads


@pytest.mark.parametrize("path", ["/v1/me/consents", "/dashboard/verify", "/sign-out"])
def test_a_write_without_a_valid_token_is_401_before_the_body_is_read(engine: Engine, path: str) -> None:
    app = _app(engine)
    big = [(b"content-type", b"application/json"), (b"content-length", b"60000")]
    assert _asgi_call(app, "POST", path, big) == (401, 0)
    bad = [*big, (b"authorization", b"Bearer " + issue_token(SECRET[::-1], "citizen", ME).encode())]
    assert _asgi_call(app, "POST", path, bad) == (401, 0)
    cookie = [*big, (b"cookie", b"accord_session=not-a-token")]
    assert _asgi_call(app, "POST", path, cookie) == (401, 0)


def test_a_body_over_64_kb_is_413_unread_and_a_chunked_one_is_cut_off(engine: Engine) -> None:
    app = _app(engine)
    token = issue_token(SECRET, "citizen", ME).encode()
    headers = [(b"content-type", b"application/json"), (b"authorization", b"Bearer " + token)]
    assert _asgi_call(app, "POST", "/v1/me/consents", [*headers, (b"content-length", str(50 << 20).encode())]) == (
        413,
        0,
    )
    # No Content-Length (chunked): read until the limit, then 413; the receive above never ends.
    status, reads = _asgi_call(app, "POST", "/v1/me/consents", headers)
    assert status == 413 and reads == 2
    assert store.history(engine, [ME]) == {}


def _serve(app) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)


def test_on_a_socket_a_post_is_answered_from_its_headers_alone(engine: Engine) -> None:
    """No byte of the promised body is sent: a server that waited for it would time out here."""
    token = f"Authorization: Bearer {issue_token(SECRET, 'citizen', ME)}\r\n"
    for port in _serve(_app(engine)):
        for headers, length, expected in (("", 60_000, b"401"), (token, 50 << 20, b"413"), ("", 50 << 20, b"413")):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    f"POST /v1/me/consents HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}"
                    f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()
                )
                started = time.monotonic()
                reply = sock.recv(4096)
            assert reply.split(b" ")[1] == expected and time.monotonic() - started < 2


# --- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"role": ["citizen"], "sub": ME}, "unknown role"),
        ({"role": {"citizen": 1}, "sub": ME}, "unknown role"),
        ({"role": "citizen", "sub": "nhs:9434765919\x00"}, "malformed"),
        ({"role": "citizen", "sub": "nhs:9434765919\ud800"}, "malformed"),
        ({"role": "citizen", "sub": ["nhs:9434765919"]}, "malformed"),
        ({"role": "citizen", "sub": ME, "exp": 1_000_000_000_000}, "lifetime longer than 24 hours"),
        ({"role": "citizen", "sub": ME, "exp": "tomorrow"}, "malformed"),
        ({"role": "citizen", "sub": ME, "iat": None}, "missing claim iat"),
        ({"role": "citizen", "sub": ME, "iat": "now"}, "malformed"),
        ({"role": "citizen", "sub": ME, "iat": True}, "malformed"),
        ({"role": "staff", "iat": "future"}, "issued in the future"),
    ],
    ids=[
        "role-list",
        "role-object",
        "sub-nul",
        "sub-lone-surrogate",
        "sub-list",
        "exp-year-33658",
        "exp-string",
        "no-iat",
        "iat-string",
        "iat-bool",
        "iat-in-the-future",
    ],
)
def test_signed_tokens_with_bad_claims_are_401_not_500(client: TestClient, claims: dict, reason: str) -> None:
    now = _now()
    full = {"iat": now, "exp": now + 600, **claims}
    if full["iat"] is None:
        del full["iat"]
    if full.get("iat") == "future":
        full["iat"], full["exp"] = now + 3600, now + 7200
    token = _signed(full)
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, token)
    assert info.value.reason == reason
    for method in ("GET", "POST"):
        resp = client.request(
            method, "/v1/me/consents", headers=_bearer(token), json={"decision": "deny", "purpose": "research"}
        )
        assert resp.status_code == 401, resp.text
        assert "9434765919" not in resp.text
    # and as a session cookie on the pages
    client.cookies.set("accord_session", token)
    assert client.get("/dashboard").status_code == 401


def test_tokens_live_at_most_24_hours() -> None:
    with pytest.raises(ValueError, match="at most"):
        issue_token(SECRET, "staff", ttl_s=MAX_LIFETIME_S + 1)
    now = _now()
    assert verify_token(SECRET, _signed({"role": "staff", "iat": now, "exp": now + MAX_LIFETIME_S})).role == "staff"


# --- throttling -----------------------------------------------------------------------------


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(burst=2, per_minute=60)
    assert [bucket.take("k", now=0.0) for _ in range(3)] == [True, True, False]
    assert bucket.retry_after("k", now=0.0) == 1
    assert bucket.take("k", now=1.0) and not bucket.take("k", now=1.0)
    assert bucket.take("other", now=1.0)


def test_bad_tokens_are_throttled_per_client(engine: Engine) -> None:
    with TestClient(_app(engine, Limits(bad_token_burst=3, bad_tokens_per_minute=1))) as c:
        statuses = [c.get("/v1/me/consents", headers=_bearer("not-a-jwt")).status_code for _ in range(5)]
        assert statuses == [401, 401, 401, 429, 429]
        resp = c.get("/v1/me/consents", headers=_bearer(issue_token(SECRET, "citizen", ME)))
        assert resp.status_code == 429 and int(resp.headers["Retry-After"]) > 0
        # A bad sign-in link counts too (its token is in the query string).
        assert c.get("/sign-in?token=nope").status_code == 429


def test_bad_sign_in_links_are_throttled(engine: Engine) -> None:
    with TestClient(_app(engine, Limits(bad_token_burst=2, bad_tokens_per_minute=1))) as c:
        assert [c.get("/sign-in?token=x").status_code for _ in range(3)] == [401, 401, 429]


def test_writes_are_throttled_per_subject(engine: Engine) -> None:
    with TestClient(_app(engine, Limits(write_burst=5, writes_per_minute=1))) as c:
        body = {"decision": "deny", "purpose": "research"}
        mine = [
            c.post("/v1/me/consents", headers=_bearer(issue_token(SECRET, "citizen", ME)), json=body).status_code
            for _ in range(7)
        ]
        assert mine == [201] * 5 + [429, 429]
        other = c.post("/v1/me/consents", headers=_bearer(issue_token(SECRET, "citizen", OTHER)), json=body)
        assert other.status_code == 201
    assert len(store.history(engine, [ME])[ME]) == 5


def test_consent_history_is_paginated(engine: Engine) -> None:
    for i in range(7):
        store.record(
            engine, ME, ConsentDecision.DENY if i % 2 else ConsentDecision.PERMIT, known=KNOWN, purpose="research"
        )
    with TestClient(_app(engine, Limits(page_size=3))) as c:
        headers = _bearer(issue_token(SECRET, "citizen", ME))
        seen: list[int] = []
        url: str | None = "/v1/me/consents"
        pages = 0
        while url:
            resp = c.get(url, headers=headers)
            assert resp.status_code == 200
            body = resp.json()
            assert len(body["history"]) <= 3 and len(body["current"]) == 1
            seen += [r["id"] for r in body["history"]]
            link = resp.headers.get("Link")
            found = re.fullmatch(r'<(/v1/me/consents\?after=\d+)>; rel="next"', link) if link else None
            assert found or not link, link
            url = found.group(1) if found else None
            pages += 1
    assert pages == 3 and seen == [r.id for r in store.history(engine, [ME])[ME]]


# --- headers, Host, 422 ---------------------------------------------------------------------


def _staff_session(c: TestClient) -> None:
    assert c.get(sign_in_link(SECRET, "staff", base_url="").link).status_code == 200


def test_security_and_cache_headers_on_api_and_pages(client: TestClient) -> None:
    _staff_session(client)
    api = client.get("/v1/me/consents", headers=_bearer(issue_token(SECRET, "citizen", ME)))
    for resp in (api, client.get("/dashboard"), client.get("/"), client.get("/docs"), client.get("/nowhere")):
        h = resp.headers
        assert "default-src 'self'" in h["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in h["Content-Security-Policy"]
        assert "unsafe-inline" not in h["Content-Security-Policy"]
        assert h["X-Content-Type-Options"] == "nosniff"
        assert h["Referrer-Policy"] == "no-referrer"
        assert h["Cache-Control"] == "no-store"
    static = client.get("/static/govuk/govuk-frontend.min.css")
    assert static.status_code == 200 and "no-store" not in static.headers["Cache-Control"]


def test_pages_load_nothing_from_elsewhere(client: TestClient) -> None:
    _staff_session(client)
    for path in ("/", "/dashboard", "/docs"):
        html = client.get(path).text
        for url in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert url.startswith(("/", "#")), (path, url)
        assert "<script>" not in html and " style=" not in html  # no inline script or style (CSP)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8443"])
def test_no_redirect_reflects_the_host(engine: Engine, host: str) -> None:
    with TestClient(_app(engine), base_url=f"http://{host}") as c:
        resp = c.get(sign_in_link(SECRET, "staff", base_url="").link, follow_redirects=False)
        assert resp.status_code == 303 and resp.headers["Location"] == "/dashboard"
        for path in ("/dashboard/", "/v1/me/consents/", "/docs/"):
            resp = c.get(path, follow_redirects=False)
            assert resp.status_code == 404 and "location" not in resp.headers
            assert "evil" not in resp.text
        resp = c.get("/", follow_redirects=False)
        assert resp.headers["Location"] == "/dashboard"


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "deny", "purpose": "research", "9434765870": True},
        {"decision": "deny", "purpose": "research", "nhs:9434765870": {"9434765870": 1}},
        {"decision": "deny", "9434765870": "9434765870"},
    ],
)
def test_422_never_echoes_submitted_keys_or_values(client: TestClient, engine: Engine, body: dict) -> None:
    resp = client.post("/v1/me/consents", headers=_bearer(issue_token(SECRET, "citizen", ME)), json=body)
    assert resp.status_code == 422
    assert "9434765870" not in resp.text
    assert all(
        isinstance(part, int) or part in ("body", "decision", "purpose", "recipient")
        for issue in resp.json()["detail"]
        for part in issue["loc"]
    )
    assert store.history(engine, [ME]) == {}


def test_422_for_invalid_json_does_not_echo_it(client: TestClient) -> None:
    resp = client.post(
        "/v1/me/consents",
        headers={**_bearer(issue_token(SECRET, "citizen", ME)), "Content-Type": "application/json"},
        content=b'{"nhs:9434765870": ',
    )
    assert resp.status_code == 422 and "9434765870" not in resp.text


# --- sign-in, cookie, CSRF ------------------------------------------------------------------


def test_sign_in_cookie_is_httponly_strict_and_secure_over_https(engine: Engine) -> None:
    for base, secure in (("http://testserver", False), ("https://testserver", True)):
        with TestClient(_app(engine), base_url=base) as c:
            resp = c.get(sign_in_link(SECRET, "citizen", ME, base_url="").link, follow_redirects=False)
            assert resp.status_code == 303 and resp.headers["Location"] == "/me"
            cookie = resp.headers["set-cookie"]
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
            assert ("Secure" in cookie) is secure
            assert "Max-Age=28800" in cookie


def test_a_sign_in_link_works_once_and_needs_a_link_token(client: TestClient) -> None:
    link = sign_in_link(SECRET, "staff", base_url="").link
    assert client.get(link, follow_redirects=False).status_code == 303
    again = client.get(link, follow_redirects=False)
    assert again.status_code == 401 and "already been used" in again.text
    plain = issue_token(SECRET, "staff")  # a bearer token without an id is not a sign-in link
    assert client.get(f"/sign-in?token={plain}", follow_redirects=False).status_code == 401
    expired = _signed({"role": "staff", "iat": _now() - 100, "exp": _now() - 10, "jti": "abc"})
    assert client.get(f"/sign-in?token={expired}", follow_redirects=False).status_code == 401


def test_sign_in_link_helper_returns_the_token_and_a_link() -> None:
    made = sign_in_link(SECRET, "citizen", "9434765919", base_url="http://127.0.0.1:8000/")
    assert made.link == f"http://127.0.0.1:8000/sign-in?token={made.token}"
    who = verify_token(SECRET, made.token)
    assert (who.role, who.subject) == ("citizen", ME) and who.token_id and made.expires_in_s == 900


def test_forms_need_the_sessions_csrf_token(client: TestClient) -> None:
    _staff_session(client)
    page = client.get("/dashboard").text
    token = _csrf(page)
    assert client.post("/sign-out", data={}).status_code == 403
    assert client.post("/sign-out", data={"csrf_token": token[::-1]}).status_code == 403
    assert client.post("/dashboard/verify", data={"csrf_token": ""}).status_code == 403
    # Another session's token does not do either.
    with TestClient(client.app) as other:
        _staff_session(other)
        theirs = _csrf(other.get("/dashboard").text)
    assert theirs != token
    assert client.post("/sign-out", data={"csrf_token": theirs}).status_code == 403
    resp = client.post("/sign-out", data={"csrf_token": token}, follow_redirects=False)
    assert resp.status_code == 303 and resp.headers["Location"] == "/"
    assert 'accord_session=""' in resp.headers["set-cookie"] or "Max-Age=0" in resp.headers["set-cookie"]


def test_docs_work_offline(client: TestClient) -> None:
    resp = client.get("/docs")
    assert resp.status_code == 200 and "/v1/me/consents" in resp.text and "cdn" not in resp.text.lower()
    assert json.loads(client.get("/openapi.json").text)["paths"]


def test_the_consent_api_alone_serves_its_offline_docs_with_the_same_headers(engine: Engine) -> None:
    from accord.web.consent_api import create_app as api_only

    with TestClient(api_only(engine, AGREEMENTS, SECRET, known=KNOWN)) as c:
        c.cookies.set("accord_session", issue_token(SECRET, "staff", token_id="abc"))
        resp = c.get("/docs")
        assert resp.status_code == 200 and "/v1/me/consents" in resp.text
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert c.get("/static/govuk/govuk-frontend.min.js").status_code == 200
