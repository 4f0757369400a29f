"""The citizens' consent HTTP API (FastAPI).

A citizen, authenticated by a signed bearer token naming their subject key,
reads and changes only their own consent preferences; staff read the loaded
data-sharing agreements. The subject is always taken from the token: no
endpoint takes a subject in its path, query or body (a body naming one is
refused), so one citizen cannot address another's data.

Status codes: a missing or invalid token is 401 with ``WWW-Authenticate:
Bearer``, and so is a token whose subject is not a well-formed subject key
(``NHS:...``, a bad check digit, spaces: preferences under it would never
apply); a valid token of the wrong role is 403 (a staff token on ``/v1/me``
included). A preference naming a recipient or class not in the partner registry,
or an unknown purpose, is 422 with the reason. Error bodies never carry a
subject key or the submitted input (not even a submitted key: an NHS number
used as a JSON key is not echoed in a 422's ``loc``), and logs name record ids,
counts and reasons only (I6).

In front of every route sits :class:`accord.web.guard.Guard`: a body over 64 KB
is 413 unread, a write without a valid token is 401 before its body is read,
invalid tokens and writes are throttled (429), and every response carries the
security headers and ``Cache-Control: no-store``. The history is paginated:
at most ``Limits.page_size`` records a page, oldest first, the next page named
by a ``Link: <...?after=ID>; rel="next"`` header (RFC 8288).

``/docs`` is a plain page rendered from ``/openapi.json`` by Accord itself
(accord.web.api_docs): FastAPI's Swagger UI loads from a CDN and is blank offline.

Run it (``accord consent serve`` does the same)::

    uvicorn --factory accord.web.consent_api:app_from_settings  # with ACCORD_API_SECRET set

however it is started, :func:`app_from_settings` refuses to build an app that
would connect as the tables' owner, a superuser or any role that could change
the consent history (accord.database.require_app_role).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import structlog
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import Engine

from accord.sharing.explain import cannot_stop
from accord.web import api_docs
from accord.web.guard import Guard, Limits, Throttles
from accord.web.templating import STATIC_DIR
from agreements.model import Agreement, Purpose
from consent import store
from consent.model import ConsentDecision, ConsentRecord, InvalidPreference, KnownScopes
from consent.tokens import CITIZEN, MIN_SECRET_BYTES, STAFF, Principal, TokenError, check_secret, verify_token

if TYPE_CHECKING:
    from bus.settings import Settings

log = structlog.get_logger("accord.consent.api")

COLLECTED_BY = "citizen-api"

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    bearerFormat="JWT",
    description=(
        "An HS256 JWT with claims `role` (`citizen` or `staff`), `exp`, and for citizens "
        "`sub` = the subject key (e.g. `nhs:9434765919`). Citizens act only on that subject."
    ),
)


# --- response and request bodies ------------------------------------------------------------


class ErrorBody(BaseModel):
    detail: str = Field(description="A short reason; never a subject key")


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description='Where in the request the problem is, e.g. ["body", "purpose"]')
    msg: str
    type: str


class ValidationErrorBody(BaseModel):
    detail: list[ValidationIssue]


class ConsentRecordOut(BaseModel):
    id: int = Field(description="Record id; doubles as the consent version")
    purpose: str | None = Field(description="Purpose the preference applies to; null means every purpose")
    recipient: str | None = Field(description="Recipient (partner id) it applies to; null means not one partner")
    recipient_class: str | None = Field(
        None, description="Class of recipients it applies to (e.g. `nhs`), when recorded for a class"
    )
    decision: ConsentDecision
    recorded_at: datetime
    expires_at: datetime | None = Field(None, description="When the preference lapses; null means never")

    @classmethod
    def of(cls, r: ConsentRecord) -> ConsentRecordOut:
        return cls(
            id=r.id,
            purpose=r.purpose,
            recipient=r.recipient,
            recipient_class=r.recipient_class,
            decision=r.decision,
            recorded_at=r.recorded_at,
            expires_at=r.expires_at,
        )


class RecordedConsent(ConsentRecordOut):
    note: str | None = Field(
        None,
        description="What this preference cannot change: set when the recipient, a recipient of the class, or "
        "the purpose it names is served by statutory sharing that does not rest on consent",
    )


class MyConsents(BaseModel):
    history: list[ConsentRecordOut] = Field(description="Every preference you recorded, oldest first")
    current: list[ConsentRecordOut] = Field(
        description=(
            "For each distinct (purpose, recipient, recipient class) scope, the newest preference "
            "that has not expired, oldest first"
        )
    )


class ConsentRequest(BaseModel):
    """A preference for the caller's own subject. Name a purpose, a recipient or a class of recipients
    (a recipient and a class are not named together)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"decision": "deny", "purpose": "research"}]},
    )

    decision: ConsentDecision = Field(description="`permit` or `deny`")
    purpose: Purpose | None = Field(None, description="One of the agreement purposes")
    recipient: str | None = Field(
        None, min_length=1, max_length=64, description="A partner id from the partner registry (e.g. `cps`)"
    )
    recipient_class: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="A class of recipients from the partner registry (e.g. `nhs`, `prosecution`): every partner of it",
    )

    @model_validator(mode="after")
    def _scoped(self) -> ConsentRequest:
        if self.purpose is None and self.recipient is None and self.recipient_class is None:
            raise ValueError("name a purpose, a recipient or a recipient class")
        return self


class AgreementOut(BaseModel):
    id: str
    version: int
    title: str
    status: str
    providers: list[str]
    recipients: list[str]
    event_types: list[str]
    purpose: Purpose
    legal_basis: str
    consent_mode: str
    fields: dict[str, list[str]] = Field(description="Event type -> field paths the recipients receive")
    valid_from: date | None = None
    valid_until: date | None = None

    @classmethod
    def of(cls, a: Agreement) -> AgreementOut:
        return cls(
            id=a.id,
            version=a.version,
            title=a.title,
            status=a.status.value,
            providers=list(a.providers),
            recipients=list(a.recipients),
            event_types=list(a.event_types),
            purpose=a.purpose,
            legal_basis=a.legal_basis,
            consent_mode=a.consent_mode.value,
            fields={t: list(p) for t, p in a.fields.items()},
            valid_from=a.valid_from,
            valid_until=a.valid_until,
        )


# --- helpers --------------------------------------------------------------------------------


def _unauthorized(reason: str, *, presented: bool = True) -> HTTPException:
    # RFC 6750 section 3: no error code when no credentials were presented.
    challenge = 'Bearer realm="accord", error="invalid_token"' if presented else 'Bearer realm="accord"'
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=reason, headers={"WWW-Authenticate": challenge})


def current_view(records: Iterable[ConsentRecord], now: datetime | None = None) -> list[ConsentRecord]:
    """For each distinct (purpose, recipient, recipient class) scope, the newest record in force.

    A simplification of :func:`consent.model.applicable`: it lists, per scope, the
    record that replaced the earlier ones, without resolving scopes against each other.
    As there, records expired at ``now`` (default: the current time) are ignored.
    """
    now = now or datetime.now(UTC)
    newest: dict[tuple[str | None, str | None, str | None], ConsentRecord] = {}
    for r in records:
        scope = (r.purpose, r.recipient, r.recipient_class)
        if r.in_force(now) and (scope not in newest or r.id > newest[scope].id):
            newest[scope] = r
    return sorted(newest.values(), key=lambda r: r.id)


_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or invalid bearer token"},
    403: {"model": ErrorBody, "description": "Valid token, but not of the role this endpoint needs"},
}


# --- the app --------------------------------------------------------------------------------


def _safe_loc(loc: Iterable[Any], names: frozenset[str]) -> list[str | int]:
    """A validation error's location without anything the client wrote: cut at the first unknown key."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int) or part in names:
            out.append(part)
        else:
            break
    return out


# What a location may name: where in the request, and the request models' own field names.
_LOC_NAMES = frozenset({"body", "query", "path", "header", "cookie", *ConsentRequest.model_fields})
# Messages that quote the input or a key it had; replaced by a fixed text.
_PLAIN_MESSAGES = {
    "extra_forbidden": "unexpected field (only decision, purpose, recipient and recipient_class are accepted)",
    "duplicate_key": "given more than once: give each field once",
}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen[key] = value
    return seen


async def _one_value_per_key(request: Request) -> None:
    """Refuse a JSON body that gives a key twice (422, as any invalid body).

    A JSON reader keeps the last value, so ``{"decision": "permit", "decision": "deny"}``
    would record whichever the reader chose: a citizen's choice is never guessed.
    """
    try:
        json.loads(await request.body(), object_pairs_hook=_pairs)
    except _DuplicateKey as exc:
        error = {"loc": ("body", exc.key), "msg": "duplicate key", "type": "duplicate_key", "input": None}
        raise RequestValidationError([error]) from None
    except ValueError:
        return  # not JSON at all: the body's own validation says so


def create_app(
    engine: Engine,
    agreements: Sequence[Agreement],
    secret: str | bytes,
    *,
    known: KnownScopes,
    limits: Limits | None = None,
) -> FastAPI:
    """The consent API over ``engine`` (consent store) and the loaded ``agreements``.

    ``known``: the recipients and classes a preference may name, from the partner
    registry (:meth:`KnownScopes.from_partners`); the app reads no files itself.
    ``limits``: the guard's (body size, throttling, page size); the defaults otherwise.
    """
    check_secret(secret)  # refuse a short secret at start-up, not on the first request
    agreements = tuple(agreements)
    limits = limits or Limits()

    app = FastAPI(
        title="Accord consent API",
        version="1",
        description=(
            "Citizens read and change their own consent preferences for the sharing of their "
            "records between public services; staff read the data-sharing agreements in force.\n\n"
            "Authenticate with `Authorization: Bearer <token>`. A citizen's token names their "
            "subject; every `/v1/me` endpoint acts on that subject and no other. A missing or "
            "invalid token gets 401, a token of the wrong role 403."
        ),
        openapi_tags=[
            {"name": "consent", "description": "Your own consent preferences (citizen token)"},
            {"name": "agreements", "description": "Data-sharing agreements (staff token)"},
        ],
        docs_url=None,  # Swagger UI loads from a CDN: /docs is Accord's own page (below)
        redoc_url=None,
        redirect_slashes=False,  # Starlette builds that redirect from the Host header
    )
    app.state.throttles = Throttles.of(limits)
    app.state.token_secret = secret  # the pages' session and CSRF helpers read it (accord.web.session)
    app.add_middleware(Guard, secret=secret, limits=limits, throttles=app.state.throttles)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        return api_docs.page(request, app.openapi())

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default echoes the submitted input; keep location, message and type only.
        # Nor a submitted key (an NHS number used as a JSON key came back in loc).
        issues = [
            {
                "loc": _safe_loc(e.get("loc", ()), _LOC_NAMES),
                "msg": _PLAIN_MESSAGES.get(str(e.get("type", "")), str(e.get("msg", ""))),
                "type": str(e.get("type", "")),
            }
            for e in exc.errors()
        ]
        log.info("request_refused", path=request.url.path, status=422, issues=len(issues))
        return JSONResponse({"detail": issues}, status_code=422)

    def principal(
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        if credentials is None:
            log.info("auth_refused", reason="missing bearer token")
            raise _unauthorized("missing bearer token", presented=False)
        try:
            return verify_token(secret, credentials.credentials)
        except TokenError as exc:
            log.info("auth_refused", reason=exc.reason)
            raise _unauthorized(f"invalid token: {exc.reason}") from None

    def require(role: str):
        def dependency(p: Principal = Depends(principal)) -> Principal:
            if p.role != role:
                log.info("auth_forbidden", role=p.role, needed=role)
                raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"needs a {role} token")
            return p

        return dependency

    # Defaults rather than Annotated aliases: annotations are strings here (PEP 563),
    # and FastAPI resolves them against module globals only.
    as_citizen = Depends(require(CITIZEN))
    as_staff = Depends(require(STAFF))

    @app.get(
        "/v1/me/consents",
        tags=["consent"],
        summary="Your consent preferences",
        description=(
            "Your history (oldest first) and, per (purpose, recipient, recipient class) scope, "
            f"the newest preference still in force. The history comes {limits.page_size} records a page: "
            'when there are more, a `Link: </v1/me/consents?after=ID>; rel="next"` header names the '
            "next page (`after` = the last id on this one)."
        ),
        response_model=MyConsents,
        responses=_AUTH_RESPONSES,
    )
    def my_consents(
        response: Response,
        who: Principal = as_citizen,
        # Not in the schema: the published contract says no endpoint takes a parameter (no subject
        # can be addressed); the description above documents this cursor.
        after: int = Query(0, ge=0, le=2**63 - 1, include_in_schema=False),
    ) -> MyConsents:
        assert who.subject is not None
        records = store.history(engine, [who.subject]).get(who.subject, [])
        page = [r for r in records if r.id > after][: limits.page_size]
        if page and page[-1].id != records[-1].id:
            response.headers["Link"] = f'</v1/me/consents?after={page[-1].id}>; rel="next"'
        log.info("consents_read", records=len(page))
        return MyConsents(
            history=[ConsentRecordOut.of(r) for r in page],
            current=[ConsentRecordOut.of(r) for r in current_view(records)],
        )

    @app.post(
        "/v1/me/consents",
        tags=["consent"],
        summary="Record a consent preference",
        description=(
            "Records `permit` or `deny` for your own subject, scoped to a purpose, a recipient, or both. "
            "The newest preference for a scope replaces earlier ones from the moment it is recorded."
        ),
        status_code=status.HTTP_201_CREATED,
        response_model=RecordedConsent,
        responses={**_AUTH_RESPONSES, 422: {"model": ValidationErrorBody, "description": "Invalid preference"}},
        dependencies=[Depends(_one_value_per_key)],
    )
    def record_consent(body: ConsentRequest, who: Principal = as_citizen) -> RecordedConsent:
        assert who.subject is not None
        try:
            rec = store.record(
                engine,
                who.subject,
                body.decision,
                known=known,
                purpose=body.purpose.value if body.purpose is not None else None,
                recipient=body.recipient,
                recipient_class=body.recipient_class,
                collected_by=COLLECTED_BY,
            )
        except InvalidPreference as exc:
            log.info("request_refused", path="/v1/me/consents", status=422, field=exc.field)
            loc = ["body"] if exc.field in ("scope", "subject") else ["body", exc.field]
            return JSONResponse(  # type: ignore[return-value]
                {"detail": [{"loc": loc, "msg": exc.reason, "type": "value_error"}]}, status_code=422
            )
        log.info("consent_recorded", record_id=rec.id)
        note = cannot_stop(agreements, rec, datetime.now(UTC).date(), known.class_of)
        return RecordedConsent(**ConsentRecordOut.of(rec).model_dump(), note=note)

    @app.get(
        "/v1/agreements",
        tags=["agreements"],
        summary="Loaded data-sharing agreements",
        response_model=list[AgreementOut],
        responses=_AUTH_RESPONSES,
    )
    def list_agreements(_who: Principal = as_staff) -> list[AgreementOut]:
        return [AgreementOut.of(a) for a in agreements]

    return app


class ApiSettingsError(Exception):
    """The API cannot start from these settings; the message names the setting and what to do."""


def _secret_from(settings: Settings) -> str:
    value = settings.api_secret.get_secret_value()
    try:
        check_secret(value)
    except ValueError:
        problem = "is not set" if not value else "is too short"
        raise ApiSettingsError(
            f"ACCORD_API_SECRET {problem}: set it to a random secret of at least {MIN_SECRET_BYTES} bytes "
            "(e.g. `export ACCORD_API_SECRET=$(openssl rand -hex 32)`); it signs the API's tokens"
        ) from None
    return value


def secret_from_settings(settings: Settings) -> str:
    """ACCORD_API_SECRET, checked (:class:`ApiSettingsError` naming the variable and what to do otherwise)."""
    return _secret_from(settings)


def app_from_settings() -> FastAPI:
    """An app from the environment, for ``uvicorn --factory accord.web.consent_api:app_from_settings``.

    Reads ``ACCORD_API_SECRET`` (at least 32 bytes; :class:`ApiSettingsError`
    otherwise), the ledger URL, the agreements folder and the partner registry
    from :mod:`accord.settings`. Refuses (``LedgerRoleError``) to serve as a role
    that could change the consent history, so the guard holds however the API is
    started, not only through ``accord consent serve``.
    """
    from accord.provision import require_app_role
    from agreements import load_dir
    from agreements.partners import load_partners
    from bus.database import engine_for
    from bus.settings import get_settings

    settings = get_settings()
    secret_value = _secret_from(settings)
    known = KnownScopes.from_partners(load_partners(settings.partners_file))
    agreements = load_dir(settings.agreements_dir)
    engine = engine_for(settings)
    require_app_role(engine)
    return create_app(engine, agreements, secret_value, known=known)


__all__ = [
    "COLLECTED_BY",
    "ApiSettingsError",
    "app_from_settings",
    "create_app",
    "current_view",
    "secret_from_settings",
]
