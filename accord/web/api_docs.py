"""``/docs``: the API reference as a plain page rendered from the OpenAPI document, offline.

FastAPI's ``/docs`` is Swagger UI, loaded from a CDN: blank without the internet,
and needing inline script a strict Content-Security-Policy forbids. Vendoring
swagger-ui-dist would add about 1.5 MB of JavaScript for a "try it out" button; a
page rendered here from ``app.openapi()`` costs none, works without JavaScript,
passes the same accessibility checks as the other pages, and links the machine-
readable ``/openapi.json`` for tools (Swagger UI or Postman, run locally, read it).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from accord.web.templating import render

_METHODS = ("get", "post", "put", "patch", "delete")


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref") or schema.get("items", {}).get("$ref", "")
    name = ref.rsplit("/", 1)[-1] if ref else schema.get("type", "")
    return f"list of {name}" if schema.get("type") == "array" else name


def operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Each operation of the document as what the page shows: method, path, words, body, responses."""
    out = []
    for path, item in doc.get("paths", {}).items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            out.append(
                {
                    "method": method.upper(),
                    "path": path,
                    "summary": op.get("summary", ""),
                    "description": op.get("description", ""),
                    "tags": op.get("tags", []),
                    "auth": bool(op.get("security")),
                    "body": _schema_name(body) if body else "",
                    "responses": [
                        (
                            code,
                            r.get("description", ""),
                            _schema_name(r.get("content", {}).get("application/json", {}).get("schema", {})),
                        )
                        for code, r in sorted(op.get("responses", {}).items())
                    ],
                }
            )
    return out


def schemas(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's schemas, each with its properties (name, type, required, description)."""
    found = []
    for name, schema in sorted(doc.get("components", {}).get("schemas", {}).items()):
        required = set(schema.get("required", []))
        props = []
        for prop, spec in schema.get("properties", {}).items():
            kinds = [s.get("type") or _schema_name(s) for s in spec.get("anyOf", [])] or [
                spec.get("type") or _schema_name(spec)
            ]
            if "enum" in spec:
                kinds = [" | ".join(map(str, spec["enum"]))]
            props.append((prop, " or ".join(k for k in kinds if k), prop in required, spec.get("description", "")))
        found.append({"name": name, "description": schema.get("description", ""), "properties": props})
    return found


def page(request: Request, doc: dict[str, Any]) -> HTMLResponse:
    info = doc.get("info", {})
    return render(
        request,
        "api_docs.html",
        {
            "title": "API reference",
            "info": info,
            "operations": operations(doc),
            "schemas": schemas(doc),
        },
    )


__all__ = ["operations", "page", "schemas"]
