"""What makes Accord's web application safe to face the public, in front of every route.

One ASGI middleware (:class:`Guard`) for the consent API and the pages alike,
because the dangerous part happens before a route runs: FastAPI reads and parses a
request's body before it resolves the route's dependencies, authentication
among them. So, in this order, before the application sees a request:

1. a body larger than ``Limits.max_body_bytes`` (64 KB) is answered 413 from its
   ``Content-Length`` without reading it; a body without one (chunked) is counted
   as it is read and cut off at the limit with 413;
2. a client that presented too many invalid tokens lately is answered 429
   (a token bucket per client address; the check costs no signature verification);
3. a request that changes something (any method but GET, HEAD, OPTIONS) must carry
   a valid credential, a bearer token or the pages' session cookie, checked by
   :func:`consent.tokens.verify_token`: otherwise 401 before the body is read;
4. a principal's writes are throttled (a token bucket per subject, or per role
   for staff): 429 with ``Retry-After``.

Every response gets the security headers (a Content-Security-Policy allowing only
Accord's own assets and no framing, ``X-Content-Type-Options``, ``Referrer-Policy``,
``X-Frame-Options``) and ``Cache-Control: no-store`` unless it is a static asset.

The buckets are in memory, per process: behind a proxy every client shares the
proxy's address unless the server is told to trust ``X-Forwarded-For``
(uvicorn ``--forwarded-allow-ips``), and several processes each keep their own
counts (docs/web.md).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from typing import Any, Final

import structlog
from fastapi import HTTPException

from consent.tokens import Principal, TokenError, verify_token

log = structlog.get_logger("accord.web.guard")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE: Final = "accord_session"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths that take a credential in their own way (the sign-in link carries its token in the query).
OPEN_PATHS: Final = frozenset({"/sign-in"})

CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=(), interest-cohort=()"),
)


@dataclass(frozen=True)
class Limits:
    """The guard's limits; the defaults suit one citizen at a browser and a DPO's dashboard."""

    max_body_bytes: int = 64 * 1024
    bad_token_burst: int = 10  # invalid tokens a client may present at once...
    bad_tokens_per_minute: float = 10.0  # ...and then this many a minute
    write_burst: int = 20  # changes a principal may make at once...
    writes_per_minute: float = 6.0  # ...and then this many a minute
    page_size: int = 100  # consent records per page of the API's history


class TokenBucket:
    """A token bucket per key, in memory: ``take(key)`` is True while the key has a token left.

    At most ``max_keys`` keys are kept (the least recently used go first), so a
    stream of new keys cannot grow it without bound.
    """

    def __init__(self, burst: int, per_minute: float, max_keys: int = 10_000) -> None:
        self.burst, self.rate, self.max_keys = float(burst), per_minute / 60.0, max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, tokens + (now - last) * self.rate)

    def empty(self, key: str, now: float | None = None) -> bool:
        """Whether ``key`` has less than one token, without taking one."""
        return self._level(key, time.monotonic() if now is None else now) < 1.0

    def take(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        tokens = self._level(key, now)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def retry_after(self, key: str, now: float | None = None) -> int:
        """Whole seconds until ``key`` has a token again."""
        tokens = self._level(key, time.monotonic() if now is None else now)
        return max(1, math.ceil((1.0 - tokens) / self.rate)) if self.rate > 0 else 60


@dataclass(frozen=True)
class Throttles:
    """The buckets the guard keeps, shared with routes that see a credential the guard does not
    (the sign-in link's token is in its query string)."""

    bad_tokens: TokenBucket  # per client address
    writes: TokenBucket  # per subject, or per role for staff

    @classmethod
    def of(cls, limits: Limits) -> Throttles:
        return cls(
            TokenBucket(limits.bad_token_burst, limits.bad_tokens_per_minute),
            TokenBucket(limits.write_burst, limits.writes_per_minute),
        )


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def session_token(cookie_header: str | None) -> str | None:
    """The session cookie's value from a ``Cookie`` header, or None."""
    if not cookie_header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(SESSION_COOKIE)
    return morsel.value if morsel is not None and morsel.value else None


def presented_token(scope: Scope) -> tuple[str | None, str | None]:
    """(credential, where): the bearer token if the request has one, else the session cookie."""
    auth = _header(scope, b"authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        return (value.strip() or None, "bearer") if scheme.lower() == "bearer" else (None, "other")
    token = session_token(_header(scope, b"cookie"))
    return (token, "cookie") if token else (None, None)


def client_key(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class Guard:
    """The ASGI middleware described in the module docstring."""

    def __init__(
        self, app: ASGIApp, secret: str | bytes, limits: Limits | None = None, throttles: Throttles | None = None
    ) -> None:
        self.app, self.secret = app, secret
        self.limits = limits or Limits()
        self.throttles = throttles or Throttles.of(self.limits)
        self.bad_tokens, self.writes = self.throttles.bad_tokens, self.throttles.writes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        send = self._with_headers(send, static=path.startswith("/static/"))

        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                await _reply(send, 400, "invalid Content-Length")
                return
            if int(length) > self.limits.max_body_bytes:
                log.info("request_refused", path=path, status=413)
                await _reply(send, 413, f"request body larger than {self.limits.max_body_bytes} bytes")
                return

        token, where = presented_token(scope)
        client = client_key(scope)
        principal: Principal | None = None
        if token is not None:
            if self.bad_tokens.empty(client):
                log.info("request_throttled", path=path, status=429, why="invalid tokens")
                await _reply(
                    send,
                    429,
                    "too many invalid tokens; try again later",
                    [(b"retry-after", str(self.bad_tokens.retry_after(client)).encode())],
                )
                return
            try:
                principal = verify_token(self.secret, token)
            except TokenError as exc:
                self.bad_tokens.take(client)
                reason = exc.reason
            else:
                reason = ""

        if method not in SAFE_METHODS and path not in OPEN_PATHS:
            if principal is None:
                presented = token is not None
                reason = f"invalid token: {reason}" if presented else "missing bearer token"
                challenge = 'Bearer realm="accord", error="invalid_token"' if presented else 'Bearer realm="accord"'
                log.info("auth_refused", path=path, reason=reason, where=where)
                await _reply(send, 401, reason, [(b"www-authenticate", challenge.encode())])
                return
            who = f"subject:{principal.subject}" if principal.subject else f"role:{principal.role}"
            if not self.writes.take(who):
                log.info("request_throttled", path=path, status=429, why="writes")
                await _reply(
                    send,
                    429,
                    "too many changes in a short time; try again later",
                    [(b"retry-after", str(self.writes.retry_after(who)).encode())],
                )
                return

        await self.app(scope, self._limited(receive), send)

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.limits.max_body_bytes

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # FastAPI re-raises an HTTPException from reading the body as it is.
                    raise HTTPException(413, detail=f"request body larger than {limit} bytes")
            return message

        return limited

    @staticmethod
    def _with_headers(send: Send, *, static: bool) -> Send:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                names = {k.lower() for k, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"public, max-age=3600" if static else b"no-store"))
                message["headers"] = headers
            await send(message)

        return sending


async def _reply(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error answered without touching the request body."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


__all__ = [
    "CSP",
    "SESSION_COOKIE",
    "Guard",
    "Limits",
    "Throttles",
    "TokenBucket",
    "client_key",
    "presented_token",
    "session_token",
]
