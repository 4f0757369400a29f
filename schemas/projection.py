"""Field-level projection: what a data-sharing agreement lets a recipient see.

An agreement lists dotted paths (``subject.date_of_birth``) into the source
schema. The same paths shape both the recipient's schema (project_schema) and
each disclosed record (project_record). The invariant: nothing outside the allow
list ever reaches the output. Both sides are therefore built from the allow list
alone (never by deleting what is not allowed), so a field added to a source
schema later is withheld until an agreement names it.

A record is projected once per disclosure on the bus's hot path, so an allow
list is compiled once (``projector``, a bounded cache) into a function, and,
given the schema's key order, into straight-line code for records in that order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any, cast

import fastavro

__all__ = ["UnknownField", "check_paths", "key_order", "project_schema", "project_record", "projector"]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_NAMED = ("record", "error", "enum", "fixed")


class UnknownField(ValueError):
    """An allow-list path that names nothing in the source schema."""

    def __init__(self, path: str, problem: str = "not a field of the schema") -> None:
        self.path = path
        super().__init__(f"{path!r}: {problem}")


# An allow-list tree: field name -> WHOLE (keep the field as it is) or a subtree.
WHOLE: None = None
_Tree = dict[str, "_Tree | None"]


def _tree(paths: Iterable[str]) -> _Tree:
    """Merge dotted paths into a tree; a path naming a whole field wins over its sub-paths."""
    root: _Tree = {}
    for path in paths:
        parts = path.split(".")
        node = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if part in node and node[part] is WHOLE:
                break  # already kept whole
            if last:
                node[part] = WHOLE
            else:
                child = node.setdefault(part, {})
                assert child is not None
                node = child
    return root


def _named_types(schema: Any) -> Mapping[str, Any]:
    if isinstance(schema, dict) and "__named_schemas" in schema:
        return cast("Mapping[str, Any]", schema["__named_schemas"])
    parsed: Any = fastavro.parse_schema(schema)
    return cast("Mapping[str, Any]", parsed["__named_schemas"])


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    while isinstance(schema, str) and schema not in _PRIMITIVES:
        schema = names[schema]
    return schema


def _record_of(schema: Any, names: Mapping[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The record a path may descend into, and whether it sits in a nullable union."""
    s = _resolve(schema, names)
    if isinstance(s, dict) and s.get("type") in ("record", "error"):
        return s, False
    if isinstance(s, list):
        resolved = [_resolve(b, names) for b in s]
        records = [r for r in resolved if isinstance(r, dict) and r.get("type") in ("record", "error")]
        others = [b for b in s if b != "null" and _resolve(b, names) not in records]
        if len(records) == 1 and not others:
            return records[0], "null" in s
    return None, False


def check_paths(parsed_source: Any, paths: list[str]) -> None:
    """Raise UnknownField for the first path that names nothing in the schema."""
    names = _named_types(parsed_source)
    top = _resolve(parsed_source, names)
    for path in paths:
        if not isinstance(path, str) or not path:
            raise UnknownField(str(path), "empty path")
        record: dict[str, Any] | None = top
        parts = path.split(".")
        for i, part in enumerate(parts):
            if record is None:
                raise UnknownField(path, f"{'.'.join(parts[:i])!r} is not a record, so has no field {part!r}")
            field = next((f for f in record["fields"] if f["name"] == part), None)
            if field is None:
                raise UnknownField(path)
            record, _ = _record_of(field["type"], names)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


class _Builder:
    """Builds one projected schema, renaming every named type into the target namespace.

    Each distinct (source type, projection) gets one definition; later uses become
    name references, as Avro requires. Two different projections of one source
    type get distinct names so they cannot clash.
    """

    def __init__(self, names: Mapping[str, Any], namespace: str) -> None:
        self.names = names
        self.namespace = namespace
        self.defined: dict[Any, str] = {}  # key -> new full name
        self.taken: set[str] = set()

    def _new_name(self, short: str, path: list[str]) -> str:
        candidate = f"{self.namespace}.{short}"
        if candidate in self.taken:
            candidate = f"{self.namespace}.{short}_{'_'.join(path)}"
        n = 2
        base = candidate
        while candidate in self.taken:
            candidate, n = f"{base}_{n}", n + 1
        self.taken.add(candidate)
        return candidate

    def whole(self, schema: Any, path: list[str]) -> Any:
        """A copy of a source type with every named type moved into the namespace."""
        if isinstance(schema, str) and schema in _PRIMITIVES:
            return schema
        if isinstance(schema, list):
            return [self.whole(b, path) for b in schema]
        s = _resolve(schema, self.names)
        kind = s["type"]
        if kind not in _NAMED:
            if kind == "array":
                return {**_plain(s), "items": self.whole(s["items"], path)}
            if kind == "map":
                return {**_plain(s), "values": self.whole(s["values"], path)}
            return _plain(s)  # primitive with a logical type
        key = ("whole", s["name"])
        if key in self.defined:
            return self.defined[key]
        new_name = self._new_name(_short(s["name"]), path)
        self.defined[key] = new_name
        out = {**_plain(s), "name": new_name}
        if kind in ("record", "error"):
            out["fields"] = [{**_plain(f), "type": self.whole(f["type"], [*path, f["name"]])} for f in s["fields"]]
        return out

    def record(self, s: Mapping[str, Any], tree: _Tree, path: list[str]) -> Any:
        """The record holding only the allowed fields, in source order."""
        key = ("partial", s["name"], _freeze(tree))
        if key in self.defined:
            return self.defined[key]
        new_name = self._new_name(_short(s["name"]), path)
        self.defined[key] = new_name
        fields = []
        for f in s["fields"]:
            if f["name"] not in tree:
                continue
            sub = tree[f["name"]]
            fpath = [*path, f["name"]]
            if sub is WHOLE:
                fields.append({**_plain(f), "type": self.whole(f["type"], fpath)})
                continue
            inner, nullable = _record_of(f["type"], self.names)
            if inner is None:  # check_paths has already refused this
                raise UnknownField(".".join(fpath), "not a record")
            projected = self.record(inner, sub, fpath)
            field = {k: v for k, v in _plain(f).items() if k != "default"}
            if nullable:
                field["type"] = ["null", projected]
                field["default"] = None
            else:
                field["type"] = projected
            fields.append(field)
        out: dict[str, Any] = {"type": s["type"], "name": new_name, "fields": fields}
        if "doc" in s:
            out["doc"] = s["doc"]
        return out


def _plain(s: Mapping[str, Any]) -> dict[str, Any]:
    """A schema node without fastavro's bookkeeping keys or aliases (which name source types)."""
    return {k: v for k, v in s.items() if not k.startswith("__") and k not in ("aliases", "namespace")}


def _freeze(tree: _Tree | None) -> Any:
    if tree is None:
        return None
    return tuple(sorted((k, _freeze(v)) for k, v in tree.items()))


def project_schema(parsed_source: Any, paths: list[str], namespace: str) -> dict[str, Any]:
    """The parsed recipient schema: only the allowed fields, named types moved into ``namespace``.

    The namespace makes the fingerprint differ from the source's, so a projected
    message can never be mistaken for a source event, and two agreements'
    projections of one event type can share a Catalogue.
    """
    check_paths(parsed_source, paths)
    names = _named_types(parsed_source)
    source = _resolve(parsed_source, names)
    projected = _Builder(names, namespace).record(source, _tree(paths), [])
    return cast("dict[str, Any]", fastavro.parse_schema(projected))


def _copy(value: Any) -> Any:
    """Copy containers so a disclosed record never aliases the source event."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# Types _copy returns as they are (it copies dicts and lists only), tested by exact type first.
_SCALARS = frozenset({str, int, bool, float, bytes, type(None), datetime, date, tuple})

Projector = Callable[[Mapping[str, Any]], dict[str, Any]]


def _compile(tree: _Tree, path: str) -> Projector:
    """A function projecting one record level through ``tree``; partial fields get their own.

    It walks the record's own keys, in the record's order, exactly as the allow
    list says: a whole field is copied, a partial one must be a record or None.
    """
    plan: dict[str, Projector | None] = {
        key: None if sub is WHOLE else _compile(sub, f"{path}{key}.") for key, sub in tree.items()
    }
    absent = object()

    def project(record: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in record.items():
            sub: Any = plan.get(key, absent)
            if sub is absent:
                continue
            if sub is None:
                out[key] = value if type(value) in _SCALARS else _copy(value)
            elif value is None:
                out[key] = None
            elif isinstance(value, Mapping):
                out[key] = sub(value)
            else:
                # Never pass a non-record through a partial allow: it could hold anything.
                raise ValueError(f"{path}{key}: expected a record or null to project, got {type(value).__name__}")
        return out

    return project


# The key order of a source schema: field name -> the order of the record it holds, if any.
Order = tuple[tuple[str, "Order | None"], ...]


def key_order(parsed_source: Any) -> Order:
    """The field names of every record level of ``parsed_source``, in schema order (what decode returns)."""
    names = _named_types(parsed_source)

    def of(record: Mapping[str, Any], seen: frozenset[str]) -> Order:
        out = []
        for f in record["fields"]:
            inner, _ = _record_of(f["type"], names)
            sub = None if inner is None or inner["name"] in seen else of(inner, seen | {inner["name"]})
            out.append((f["name"], sub))
        return tuple(out)

    top = _resolve(parsed_source, names)
    return of(top, frozenset({top["name"]}))


class _NoFast(Exception):
    """The allow list descends where the order has no record: only the generic projector applies."""


class _FastGen:
    """Straight-line code for records whose every level holds exactly the schema's keys in its order.

    That is every record ``Catalogue.decode`` returns. Any other record (a key
    missing, added or out of order, a sub-record that is not a dict) is handed
    whole to the generic projector, so the result, its key order and its errors
    are the generic projector's in every case.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.n = 0

    def var(self) -> str:
        self.n += 1
        return f"v{self.n}"

    def emit(self, ind: int, line: str) -> None:
        self.lines.append("    " * ind + line)

    def level(self, tree: _Tree, order: Order, src: str, ind: int) -> str:
        keys = f"k{len(self.consts)}"
        self.consts[keys] = tuple(name for name, _ in order)
        self.emit(ind, f"if type({src}) is not dict or tuple({src}) != {keys}:")
        self.emit(ind + 1, "return slow(record)")
        items = []
        for name, sub_order in order:
            if name not in tree:
                continue
            sub, x = tree[name], self.var()
            self.emit(ind, f"{x} = {src}[{name!r}]")
            if sub is WHOLE:
                self.emit(ind, f"if type({x}) not in SCALARS:")
                self.emit(ind + 1, f"{x} = copy({x})")
            else:
                if sub_order is None:
                    raise _NoFast
                self.emit(ind, f"if {x} is not None:")
                inner = self.level(sub, sub_order, x, ind + 1)
                self.emit(ind + 1, f"{x} = {inner}")
            items.append((name, x))
        out = self.var()
        self.emit(ind, f"{out} = {{{', '.join(f'{name!r}: {x}' for name, x in items)}}}")
        return out


def _compile_fast(tree: _Tree, order: Order, slow: Projector) -> Projector | None:
    gen = _FastGen()
    try:
        top = gen.level(tree, order, "record", 1)
    except _NoFast:
        return None
    gen.emit(1, f"return {top}")
    namespace: dict[str, Any] = {"slow": slow, "copy": _copy, "SCALARS": _SCALARS, **gen.consts}
    source = "\n".join(["def project(record):", *gen.lines])
    exec(compile(source, "<projection>", "exec"), namespace)  # noqa: S102 - our own generated code
    return cast("Projector", namespace["project"])


@lru_cache(maxsize=512)
def _projector(paths: tuple[str, ...], order: Order | None = None) -> Projector:
    generic = _compile(_tree(paths), "")
    if order is None:
        return generic
    return _compile_fast(_tree(paths), order, generic) or generic


def projector(paths: Iterable[str], order: Order | None = None) -> Projector:
    """``project_record`` for one allow list, compiled once (bounded cache): ``projector(paths)(record)``.

    Given the source schema's ``key_order``, records in that order (every decoded
    record) take straight-line code; the result is the same either way.
    """
    return _projector(tuple(paths), order)


def project_record(record: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """The record holding only the allowed paths; a None sub-record stays None."""
    return _projector(tuple(paths))(record)
