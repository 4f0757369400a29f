"""``accord serve``'s Prometheus metrics: requests by route and status, in the app's own registry.

The route label is the route's template (``/v1/me/preferences/{preference_id}``), never the
path a client sent: paths carry tokens and identifiers, and a label per path would grow
without end. A request no route matches is ``unmatched``. Labels hold no personal data.
The middleware sits outside the guard (accord.web.guard), so what the guard refuses (401,
413, 429) is counted too. docs/metrics.md lists the metrics.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.routing import Match

from accord.web.guard import ASGIApp, Message, Receive, Scope, Send

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class WebMetrics:
    """The registry and the metrics of one web application."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "accord_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "accord_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=_SECONDS,
            registry=self.registry,
        )


def route_of(scope: Scope, routes: list[Any], before: Scope | None = None) -> str:
    """The template of the route that took (or would take) the request; ``unmatched`` if none.

    ``before``: the scope as it arrived. A request answered before routing (by the guard),
    or by a mount (which rewrites the scope's root path and leaves no route in it), is
    matched again on that, as the router matched it.
    """
    route = scope.get("route")
    if route is None:
        for candidate in routes:
            match, _ = candidate.matches(before if before is not None else scope)
            if match is Match.FULL:
                route = candidate
                break
    path = getattr(route, "path", None)
    return path if isinstance(path, str) and path else "unmatched"


class RequestMetrics:
    """ASGI middleware counting every HTTP request (see the module docstring)."""

    def __init__(self, app: ASGIApp, metrics: WebMetrics, routes: list[Any]) -> None:
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        before = dict(scope)  # the router rewrites a mount's scope in place
        status = {"code": 500}  # an exception that escapes is answered 500 by the server

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "other"
            route = route_of(scope, self.routes, before)
            self.metrics.requests.labels(route, method, str(status["code"])).inc()
            self.metrics.seconds.labels(route, method).observe(time.perf_counter() - started)


__all__ = ["RequestMetrics", "WebMetrics", "route_of"]
