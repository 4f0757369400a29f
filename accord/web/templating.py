"""The pages' Jinja2 environment: autoescaping on for every template, one place to render.

Every value an agency sent (names in events, reasons, agreement titles) reaches
the pages only through these templates, and autoescape is on for all of them,
whatever their file name; nothing in a template is marked ``|safe``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined

WEB_DIR: Final = Path(__file__).resolve().parent
TEMPLATE_DIR: Final = WEB_DIR / "templates"
STATIC_DIR: Final = WEB_DIR / "static"

environment = Environment(
    loader=FileSystemLoader(TEMPLATE_DIR),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _thousands(value: int | float) -> str:
    return f"{value:,}"


environment.filters["thousands"] = _thousands


def render(
    request: Request, template: str, context: Mapping[str, Any] | None = None, *, status_code: int = 200
) -> HTMLResponse:
    """``template`` rendered with ``context`` plus what base.html needs (the signed-in principal, CSRF token)."""
    from accord.web.session import csrf_token, page_principal

    values: dict[str, Any] = {
        "principal": page_principal(request),
        "csrf_token": csrf_token(request),
        "path": request.url.path,
        "service_name": getattr(request.app.state, "service_name", "Accord"),
    }
    values.update(context or {})
    html = environment.get_template(template).render(values)
    return HTMLResponse(html, status_code=status_code)


__all__ = ["STATIC_DIR", "TEMPLATE_DIR", "environment", "render"]
