"""Walking a parsed Avro schema: named types, references, dotted paths, labels.

Shared by the validator, the JSON coercion, the compiled codecs, the diagnosis
and the plausibility rules, so each follows a reference the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from schemas.errors import SerdeError


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _named_types(schema: Any) -> dict[str, Any]:
    """Full name -> definition for every named type, so string references can be followed."""
    if isinstance(schema, dict) and "__named_schemas" in schema:
        return cast("dict[str, Any]", schema["__named_schemas"])
    names: dict[str, Any] = {}

    def walk(s: Any) -> None:
        if isinstance(s, list):
            for branch in s:
                walk(branch)
        elif isinstance(s, dict):
            kind = s.get("type")
            if kind in ("record", "error", "enum", "fixed") and "name" in s:
                names[s["name"]] = s
            if kind in ("record", "error"):
                for f in s.get("fields", []):
                    walk(f["type"])
            elif kind == "array":
                walk(s["items"])
            elif kind == "map":
                walk(s["values"])
            elif isinstance(kind, (dict, list)):
                walk(kind)

    walk(schema)
    return names


_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    """Follow a named-type reference; primitives and inline definitions pass through."""
    while isinstance(schema, str) and schema not in _PRIMITIVES:
        if schema not in names:
            raise SerdeError(f"schema refers to undefined type {schema!r}")
        schema = names[schema]
    if isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) and "logicalType" not in schema:
        return _resolve(schema["type"], names)
    return schema


def _label(schema: Any, names: Mapping[str, Any]) -> str:
    s = _resolve(schema, names)
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return " or ".join(_label(b, names) for b in s)
    logical = s.get("logicalType")
    if logical in ("timestamp-millis", "timestamp-micros"):
        return "timestamp"
    if logical:
        return cast("str", logical)
    kind = s["type"]
    if kind in ("record", "error", "enum", "fixed"):
        return f"{kind} {s['name'].rsplit('.', 1)[-1]}"
    return cast("str", kind)
