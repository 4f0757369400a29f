"""``accord serve``'s /metrics, /healthz and /readyz, in process on a real PostgreSQL.

Requests are counted by route template and status, never by the path a client sent
(a sign-in link's token, a preference id); what the guard refuses before routing is
counted under its route too; /readyz says "degraded" when the database does not answer.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, create_engine

from accord.provision import init_database
from accord.web.app import create_app
from agreements import load_dir
from agreements.partners import load_partners
from bus.settings import PACKAGE_ROOT, Settings
from consent.tokens import CITIZEN, issue_token

SECRET = "test-secret-for-the-web-metrics-0123456789"
ME = "nhs:9434765919"


def _app(engine: Engine):
    return create_app(
        Settings(),
        engine=engine,
        agreements=list(load_dir(PACKAGE_ROOT / "agreements" / "examples")),
        partners=load_partners(PACKAGE_ROOT / "agreements" / "partners.yaml"),
        secret=SECRET,
        read_dead_letters=False,
    )


@pytest.fixture
def client(pg_engine: Engine) -> Iterator[TestClient]:
    init_database(pg_engine)
    with TestClient(_app(pg_engine)) as c:
        yield c


def _requests(client: TestClient) -> dict[tuple[str, str, str], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    found = {}
    for family in text_string_to_metric_families(resp.text):
        if family.name == "accord_http_requests":
            for s in family.samples:
                if s.name == "accord_http_requests_total":
                    found[(s.labels["route"], s.labels["method"], s.labels["status"])] = s.value
    return found


def test_requests_are_counted_by_route_template_and_status_without_tokens(client: TestClient) -> None:
    token = issue_token(SECRET, CITIZEN, ME, 600)
    for _ in range(3):
        assert client.get("/v1/me/consents", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert client.get("/v1/me/consents").status_code == 401
    assert client.get("/sign-in", params={"token": "not-a-token"}).status_code == 401
    assert client.get("/no/such/page/9434765919").status_code == 404
    assert client.get("/static/accord.css").status_code == 200  # a mount: counted under its prefix
    # Refused by the guard before any route ran: still counted under the route it was for.
    assert client.post("/v1/me/consents", json={}).status_code == 401

    counted = _requests(client)
    assert counted[("/v1/me/consents", "GET", "200")] == 3
    assert counted[("/v1/me/consents", "GET", "401")] == 1
    assert counted[("/v1/me/consents", "POST", "401")] == 1
    assert counted[("/sign-in", "GET", "401")] == 1
    assert counted[("unmatched", "GET", "404")] == 1
    assert counted[("/static", "GET", "200")] == 1
    text = client.get("/metrics").text
    # No token, subject or path a client sent is a label.
    assert token not in text and "not-a-token" not in text and "9434765919" not in text
    assert not re.search(r'route="/(no|static/)', text)


def test_healthz_and_readyz_while_the_database_answers(client: TestClient) -> None:
    alive = client.get("/healthz")
    assert (alive.status_code, alive.text) == (200, "alive\n")
    ready = client.get("/readyz")
    assert (ready.status_code, ready.text) == (200, "ready\n")
    assert client.get("/metrics").status_code == 200
    # The operators' paths are not in the public API's reference.
    assert not {"/metrics", "/healthz", "/readyz"} & set(client.get("/openapi.json").json()["paths"])


def test_readyz_is_degraded_when_the_database_does_not_answer() -> None:
    # A port nothing listens on: the database is unreachable from the start.
    dead = create_engine("postgresql+psycopg://accord@127.0.0.1:9/none?connect_timeout=2")
    with TestClient(_app(dead)) as client:
        resp = client.get("/readyz")
        assert resp.status_code == 503
        assert resp.text.startswith("degraded: the database does not answer (")
        assert "127.0.0.1" not in resp.text  # the error's kind, not its text
        assert client.get("/healthz").status_code == 200  # alive: restarting it would not help
        assert _requests(client)[("/readyz", "GET", "503")] == 1
    dead.dispose()
