"""Accord's web application: the consent API beside server-rendered pages, fully offline.

``create_app(settings)`` is one FastAPI app: the consent API
(accord.web.consent_api, ``/v1/...``), the flows dashboard for staff
(``/dashboard``, accord.web.dashboard), the citizen's page (``/me``, accord.web.me,
included when present), sign-in (``/sign-in``, ``/sign-out``) and the offline API
reference (``/docs``); and for operators ``/metrics`` (Prometheus: requests by route
template and status, accord.web.metrics), ``/healthz`` (alive) and ``/readyz`` (the
database answers). Every asset is Accord's own, under ``/static``: GOV.UK
Frontend's compiled CSS and JS (vendored by accord/web/build_assets.py) and a few
lines of Accord's. The guard (accord.web.guard) sits in front of all of it.

Routers a page module adds: a module with ``router: fastapi.APIRouter`` reads what
it needs from ``request.app.state``: ``engine``, ``agreements``, ``directory``
(names, accord.web.names), ``settings``, ``verifier`` (the ledger's public key or
None) and ``token_secret``; it renders with :func:`accord.web.templating.render`
and templates extending ``base.html``, reads the principal with
:func:`accord.web.session.require_page_role` and checks forms with
:func:`accord.web.session.check_csrf`.

``serve(settings)`` prints where it listens and runs uvicorn (``accord serve``).
"""

from __future__ import annotations

import importlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from accord.web import consent_api
from accord.web.dead_letters import DeadLetterCache
from accord.web.guard import SESSION_COOKIE, Limits, client_key
from accord.web.metrics import RequestMetrics, WebMetrics
from accord.web.names import Directory
from accord.web.session import SESSION_TTL_S, check_csrf, page_principal, read_form
from accord.web.templating import render
from agreements.model import Agreement
from consent.model import KnownScopes
from consent.tokens import CITIZEN, STAFF, TokenError, issue_token, verify_token
from ledger.checkpoint import verifier_from_settings
from ledger.note import NoteVerifier

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bus.settings import Settings

log = structlog.get_logger("accord.web")

# Page modules included when they exist (the citizen's page is built separately).
PAGE_MODULES: Final = ("accord.web.dashboard", "accord.web.me")
HOME: Final = {STAFF: "/dashboard", CITIZEN: "/me"}


class SignInLinks:
    """The sign-in links already used (by token id) until they expire: each works once, per process."""

    def __init__(self) -> None:
        self._used: dict[str, float] = {}

    def spend(self, token_id: str, expires_at: float) -> bool:
        """True the first time ``token_id`` is presented."""
        now = time.time()
        for jti in [j for j, exp in self._used.items() if exp < now]:
            del self._used[jti]
        if token_id in self._used:
            return False
        self._used[token_id] = expires_at
        return True


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    agreements: Sequence[Agreement] | None = None,
    partners: dict[str, str] | None = None,
    limits: Limits | None = None,
    verifier: NoteVerifier | None = None,
    secret: str | None = None,
    read_dead_letters: bool = True,
) -> FastAPI:
    """The whole web application from ``settings``; the keyword arguments replace what it would load.

    ``secret`` defaults to ACCORD_API_SECRET (consent_api's check: at least 32 bytes).
    ``read_dead_letters``: count dead letters on the dashboard from the Kafka topic
    (ACCORD_BOOTSTRAP_SERVERS); off, the dashboard says they are not counted.
    """
    from agreements import load_dir
    from agreements.partners import load_partners
    from bus.database import engine_for

    token_secret = secret if secret is not None else consent_api.secret_from_settings(settings)
    partners = partners if partners is not None else load_partners(settings.partners_file)
    agreements = tuple(agreements if agreements is not None else load_dir(settings.agreements_dir))
    engine = engine if engine is not None else engine_for(settings)
    app = consent_api.create_app(
        engine, agreements, token_secret, known=KnownScopes.from_partners(partners), limits=limits
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.agreements = agreements
    app.state.directory = Directory.build(agreements, partners)
    app.state.token_secret = token_secret
    app.state.verifier = verifier if verifier is not None else verifier_from_settings(settings)
    app.state.service_name = "Accord"
    app.state.sign_in_links = SignInLinks()
    app.state.last_verify = None
    app.state.dead_letters = DeadLetterCache(settings) if read_dead_letters else None

    _add_pages(app)
    _add_operations(app)
    for name in PAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)
    return app


def _is_page(request: Request) -> bool:
    path = request.url.path
    return not (path.startswith("/v1/") or path == "/openapi.json" or path.startswith("/static/"))


def _add_pages(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if not _is_page(request):
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        return render(
            request,
            "error.html",
            {
                "title": _TITLES.get(exc.status_code, "Sorry, there is a problem"),
                "status": exc.status_code,
                "detail": str(exc.detail),
            },
            status_code=exc.status_code,
        )

    @app.get("/", include_in_schema=False)
    def home(request: Request) -> Response:
        who = page_principal(request)
        if who is not None:
            return RedirectResponse(HOME[who.role], status_code=303)
        return render(request, "home.html", {"title": "Sign in"})

    @app.get("/sign-in", include_in_schema=False)
    def sign_in(request: Request, token: str = "") -> Response:
        """A one-time sign-in link: sets the session cookie and redirects (a relative Location: no Host)."""
        secret = request.app.state.token_secret
        bad_tokens = request.app.state.throttles.bad_tokens
        client = client_key(request.scope)
        if bad_tokens.empty(client):
            raise HTTPException(
                429,
                detail="too many sign-in links that did not work; try again later",
                headers={"Retry-After": str(bad_tokens.retry_after(client))},
            )
        try:
            who = verify_token(secret, token)
        except TokenError as exc:
            bad_tokens.take(client)
            log.info("sign_in_refused", reason=exc.reason)
            raise HTTPException(401, detail=f"this sign-in link does not work ({exc.reason})") from None
        if who.token_id is None or who.expires_at is None:
            raise HTTPException(401, detail="this is not a sign-in link (its token has no id)")
        if not request.app.state.sign_in_links.spend(who.token_id, who.expires_at):
            log.info("sign_in_refused", reason="link already used")
            raise HTTPException(401, detail="this sign-in link has already been used: ask for a new one")
        # Its own id: two sessions never share a token, nor so a CSRF token (accord.web.session).
        session = issue_token(secret, who.role, who.subject, SESSION_TTL_S, token_id=uuid.uuid4().hex)
        response = RedirectResponse(HOME[who.role], status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            session,
            max_age=SESSION_TTL_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        log.info("signed_in", role=who.role)
        return response

    @app.post("/sign-out", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        check_csrf(request, await read_form(request))
        response = RedirectResponse("/", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https"
        )
        return response


def _add_operations(app: FastAPI) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz``, and the middleware that counts every request."""
    metrics = WebMetrics()
    app.state.metrics = metrics
    app.add_middleware(RequestMetrics, metrics=metrics, routes=app.routes)

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz", include_in_schema=False)
    def alive() -> Response:
        return PlainTextResponse("alive\n")

    @app.get("/readyz", include_in_schema=False)
    def ready(request: Request) -> Response:
        """Ready while the database answers: every page and the consent API read it."""
        try:
            with request.app.state.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError) as exc:
            # The error's kind only: its text may name the host or the role.
            return PlainTextResponse(f"degraded: the database does not answer ({type(exc).__name__})\n", 503)
        return PlainTextResponse("ready\n")


_TITLES: Final = {
    401: "You need to sign in",
    403: "You cannot see this page",
    404: "Page not found",
    413: "What you sent is too large",
    429: "Too many requests",
}


def app_from_settings() -> FastAPI:
    """The app from the environment, for ``uvicorn --factory accord.web.app:app_from_settings``.

    Refuses, as the consent API does, to serve as a database role that could change
    the consent history or the ledger (accord.provision.require_app_role).
    """
    from accord.provision import require_app_role
    from bus.database import engine_for
    from bus.settings import get_settings

    settings = get_settings()
    secret = consent_api.secret_from_settings(settings)
    engine = engine_for(settings)
    require_app_role(engine)
    return create_app(settings, engine=engine, secret=secret)


def serve(settings: Settings) -> None:
    """Print the address and run the app with uvicorn until stopped (``accord serve``).

    uvicorn's access log is off: it would write each sign-in link's token (in the
    query string) to the log; requests are logged by the app without query strings.
    """
    from accord.provision import open_ledger, require_app_role

    secret = consent_api.secret_from_settings(settings)
    engine = open_ledger(settings)  # never a new, empty ledger in a mistyped state folder
    require_app_role(engine)
    app = create_app(settings, engine=engine, secret=secret)
    run_app(
        app,
        settings.api_host,
        settings.api_port,
        announce=f"Accord is serving at http://{settings.api_host}:{settings.api_port}/ "
        "(dashboard: /dashboard, citizens: /me)",
    )


def run_app(app: Any, host: str, port: int, *, announce: str | None = None) -> None:
    """Run ``app`` with uvicorn on ``host:port``, bound before ``announce`` is printed.

    A port in use is then one line naming it (ApiSettingsError), not a message after
    the address was already given out.
    """
    import uvicorn

    listening = _listen(host, port)
    if announce:
        print(announce, flush=True)
    # log_config=None: uvicorn's own lines go through the standard library's logging, which
    # bus.logs renders like every other line (one JSON object per line in production).
    config = uvicorn.Config(app, access_log=False, log_level="warning", log_config=None, server_header=False)
    uvicorn.Server(config).run(sockets=[listening])


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ApiSettingsError naming them if the system refuses."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = (os.strerror(exc.errno) if exc.errno else type(exc).__name__).lower()
        raise consent_api.ApiSettingsError(
            f"cannot listen on {host}:{port} ({reason}); set ACCORD_API_HOST and ACCORD_API_PORT to a free "
            "address of this machine"
        ) from None


__all__ = ["HOME", "PAGE_MODULES", "SignInLinks", "app_from_settings", "create_app", "run_app", "serve"]
