"""Schema evolution: may one version of an event type read another version's data?

An event type's schema changes over time (``schemas/events/<type>/v1.avsc``,
``v2.avsc`` ...), and old and new producers and readers live on the bus at the
same time: a processor upgraded to v2 still reads v1 events from the topic's
backlog, and a partner still on v1 may be sent a v2 record. Whether that works
is decided by Avro's schema resolution rules (the specification's "Schema
Resolution"), applied here without reading any data:

- records match by unqualified name (or a reader alias); fields match by name
  (or a reader field's alias); a writer field the reader lacks is skipped; a
  reader field the writer lacks takes the reader's default, and without one the
  data cannot be read;
- primitives match themselves, or are promoted: int to long, float or double;
  long to float or double; float to double; string to bytes and bytes to string;
- enums match by name, and a writer symbol the reader lacks is read as the
  reader's enum default, and without one it cannot be read;
- fixed types match by name and size; arrays by their items; maps by their values;
- a union writer may write any of its branches, so each must be readable; a
  union reader reads with its first branch that matches (the same type first,
  then one the writer's type is promoted to);
- logical types ride on their underlying type (a date is an int).

Which directions must hold is the event type's compatibility mode, a Confluent
mode name in the schema's ``accord.compatibility`` property (BACKWARD_TRANSITIVE
when absent): BACKWARD, the new version reads data written with the previous
one; FORWARD, the previous version reads data written with the new one; FULL,
both; NONE, no check; the _TRANSITIVE modes check against every earlier
version, not only the previous one. The mode is the type's, which its latest
version states (``schemas.catalogue``): every version is checked against those
before it, as a schema registry holding that mode would have checked it.

Every problem is one line naming the event type, the two versions and the field,
so that whoever changed the schema can go straight to it; no data is ever read,
so no line can carry personal data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro

from schemas import catalogue as events

__all__ = [
    "DEFAULT_MODE",
    "MODES",
    "IncompatibleCatalogue",
    "Incompatibility",
    "check_catalogue",
    "check_versions",
    "reader_problems",
    "require_compatible",
]

MODES = events.COMPATIBILITY_MODES  # BACKWARD ... FULL_TRANSITIVE, NONE
DEFAULT_MODE = events.DEFAULT_COMPATIBILITY  # BACKWARD_TRANSITIVE
MODE_PROPERTY = "accord.compatibility"

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_NAMED = {"record", "error", "enum", "fixed"}
# Writer type -> the reader types it may be read as (the specification's promotions).
_PROMOTIONS = {
    "int": {"long", "float", "double"},
    "long": {"float", "double"},
    "float": {"double"},
    "string": {"bytes"},
    "bytes": {"string"},
}


@dataclass(frozen=True)
class Incompatibility:
    """One reason a reader cannot read a writer's data: where (a dotted field path) and what."""

    path: str
    problem: str


class IncompatibleCatalogue(ValueError):
    """A catalogue whose versions cannot read each other as their modes require.

    Reads as its first problem (one line), and carries them all (``problems``),
    so a service refusing to start says exactly what to fix.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


# --------------------------------------------------------------------------- one reader, one writer


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _parsed(schema: Any) -> dict[str, Any] | Any:
    if isinstance(schema, dict) and "__named_schemas" in schema:
        return schema
    return fastavro.parse_schema(schema)


def _names(parsed: Any) -> Mapping[str, Any]:
    return parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    """The definition behind a name, and the plain type behind ``{"type": ...}`` wrappers.

    A logical type resolves to its underlying type: resolution ignores it.
    """
    while True:
        if isinstance(schema, str):
            if schema in _PRIMITIVES:
                return schema
            schema = names[schema]
            continue
        if isinstance(schema, dict):
            kind = schema.get("type")
            if isinstance(kind, (dict, list)) or (isinstance(kind, str) and kind not in _NAMED | {"array", "map"}):
                schema = kind
                continue
        return schema


def _kind(s: Any) -> str:
    if isinstance(s, str):
        return s
    if isinstance(s, list):
        return "union"
    return "record" if s["type"] == "error" else s["type"]


def _label(schema: Any, names: Mapping[str, Any]) -> str:
    """A short plain name for a type: ``string``, ``record Address``, ``array of string``, ``null or string``."""
    s = _resolve(schema, names)
    kind = _kind(s)
    logical = _logical(schema)
    if kind == "union":
        return " or ".join(_label(b, names) for b in s)
    if kind in ("record", "enum", "fixed"):
        text = f"{kind} {_short(s['name'])}"
    elif kind == "array":
        text = f"array of {_label(s['items'], names)}"
    elif kind == "map":
        text = f"map of {_label(s['values'], names)}"
    else:
        text = kind
    return f"{logical} {text}" if logical else text


def _logical(schema: Any) -> str | None:
    while isinstance(schema, dict):
        if "logicalType" in schema:
            return str(schema["logicalType"])
        schema = schema.get("type")
    return None


def _matches_name(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> bool:
    """Named types match by unqualified name, or by one of the reader's aliases."""
    wanted = _short(writer["name"])
    return _short(reader["name"]) == wanted or any(_short(a) == wanted for a in reader.get("aliases", ()))


def _field_in(writer: Mapping[str, Any], reader_field: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The writer's field a reader field reads: the same name, else one of the reader field's aliases."""
    by_name: dict[str, Mapping[str, Any]] = {f["name"]: f for f in writer["fields"]}
    if reader_field["name"] in by_name:
        return by_name[reader_field["name"]]
    return next((by_name[a] for a in reader_field.get("aliases", ()) if a in by_name), None)


def _fits(schema: Any, value: Any, names: Mapping[str, Any]) -> bool:
    """Whether a JSON default value is a value of the type (a union's: of its first branch)."""
    s = _resolve(schema, names)
    kind = _kind(s)
    if kind == "union":
        return bool(s) and _fits(s[0], value, names)
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind in ("int", "long"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in ("float", "double"):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("string", "bytes"):
        return isinstance(value, str)
    if kind == "fixed":
        return isinstance(value, str) and len(value) == s["size"]
    if kind == "enum":
        return value in s["symbols"]
    if kind == "array":
        return isinstance(value, list) and all(_fits(s["items"], v, names) for v in value)
    if kind == "map":
        return isinstance(value, dict) and all(_fits(s["values"], v, names) for v in value.values())
    if kind == "record":
        return isinstance(value, dict) and all(
            _fits(f["type"], value[f["name"]], names) if f["name"] in value else "default" in f for f in s["fields"]
        )
    return False


class _Check:
    """Walks a reader schema against a writer schema, collecting every incompatibility."""

    def __init__(self, reader: Any, writer: Any, reader_label: str, writer_label: str, newer: str | None) -> None:
        self.reader, self.writer = _parsed(reader), _parsed(writer)
        self.rnames, self.wnames = _names(self.reader), _names(self.writer)
        self.r, self.w, self.newer = reader_label, writer_label, newer
        self.found: list[Incompatibility] = []
        self.active: set[tuple[str, str]] = set()  # record pairs being walked (recursive types)

    def run(self) -> list[Incompatibility]:
        self.walk(self.reader, self.writer, "")
        return self.found

    def add(self, path: str, problem: str) -> None:
        self.found.append(Incompatibility(path or "(record)", problem))

    def where(self, path: str) -> str:
        return f"field {path}" if path else "the record"

    def matches(self, rs: Any, ws: Any) -> bool:
        """The specification's "match" (shallow): the same kind and name, or a promotion."""
        rk, wk = _kind(rs), _kind(ws)
        if rk in _PRIMITIVES and wk in _PRIMITIVES:
            return rk == wk or rk in _PROMOTIONS.get(wk, set())
        if rk != wk:
            return False
        if rk in ("record", "enum", "fixed"):
            return _matches_name(rs, ws) and (rk != "fixed" or rs["size"] == ws["size"])
        return rk in ("array", "map")

    def branch_for(self, reader_union: list[Any], ws: Any) -> Any | None:
        """The reader branch that reads a writer type: the same type first, then a promotion."""
        resolved = [_resolve(b, self.rnames) for b in reader_union]
        wk = _kind(ws)
        for rb, rs in zip(reader_union, resolved, strict=True):
            if _kind(rs) == wk and self.matches(rs, ws):
                return rb
        for rb, rs in zip(reader_union, resolved, strict=True):
            if self.matches(rs, ws):
                return rb
        return None

    def walk(self, reader: Any, writer: Any, path: str) -> None:
        rs, ws = _resolve(reader, self.rnames), _resolve(writer, self.wnames)
        rk, wk = _kind(rs), _kind(ws)
        if wk == "union":
            for branch in ws:
                self.walk(reader, branch, path)
            return
        if rk == "union":
            chosen = self.branch_for(rs, ws)
            if chosen is None:
                self.add(
                    path,
                    f"{self.where(path)}: {self.w} may hold {_label(writer, self.wnames)} there, "
                    f"which no branch of {self.r}'s {_label(reader, self.rnames)} can read",
                )
            else:
                self.walk(chosen, writer, path)
            return
        if rk in _PRIMITIVES and wk in _PRIMITIVES:
            if not self.matches(rs, ws):
                self.mismatch(reader, writer, path)
            return
        if rk != wk:
            self.mismatch(reader, writer, path)
            return
        if rk in ("record", "enum", "fixed") and not _matches_name(rs, ws):
            self.add(
                path,
                f"{self.where(path)} is {wk} {_short(ws['name'])} in {self.w} but {rk} {_short(rs['name'])} "
                f"in {self.r}: a named type must keep its name (or list the old one in its aliases)",
            )
            return
        if rk == "array":
            self.walk(rs["items"], ws["items"], f"{path}[]")
        elif rk == "map":
            self.walk(rs["values"], ws["values"], f"{path}{{}}")
        elif rk == "fixed":
            if rs["size"] != ws["size"]:
                self.add(
                    path,
                    f"{self.where(path)} (fixed {_short(rs['name'])}) is {ws['size']} bytes in {self.w} "
                    f"but {rs['size']} bytes in {self.r}",
                )
        elif rk == "enum":
            self.enum(rs, ws, path)
        elif rk == "record":
            self.record(rs, ws, path)

    def mismatch(self, reader: Any, writer: Any, path: str) -> None:
        wl, rl = _label(writer, self.wnames), _label(reader, self.rnames)
        self.add(
            path, f"{self.where(path)} is {wl} in {self.w} but {rl} in {self.r}, and Avro does not read {wl} as {rl}"
        )

    def enum(self, rs: Mapping[str, Any], ws: Mapping[str, Any], path: str) -> None:
        missing = [sym for sym in ws["symbols"] if sym not in rs["symbols"]]
        if missing and rs.get("default") not in rs["symbols"]:
            self.add(
                path,
                f"{self.where(path)} (enum {_short(rs['name'])}): {self.w} has symbol{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)}, which {self.r} does not, and {self.r}'s enum has no default to read "
                f"{'them' if len(missing) > 1 else 'it'} as",
            )

    def record(self, rs: Mapping[str, Any], ws: Mapping[str, Any], path: str) -> None:
        pair = (rs["name"], ws["name"])
        if pair in self.active:  # a recursive type: this pair is already being checked further up
            return
        self.active.add(pair)
        try:
            for field in rs["fields"]:
                fpath = f"{path}.{field['name']}" if path else field["name"]
                source = _field_in(ws, field)
                if source is not None:
                    self.walk(field["type"], source["type"], fpath)
                elif "default" not in field:
                    self.missing(field, fpath)
                elif not _fits(field["type"], field["default"], self.rnames):
                    self.add(
                        fpath,
                        f"field {fpath} ({_label(field['type'], self.rnames)}) is not in {self.w}, and its default "
                        f"in {self.r} is not a value of its type (a union's default must fit its first branch)",
                    )
        finally:
            self.active.discard(pair)

    def missing(self, field: Mapping[str, Any], fpath: str) -> None:
        label = _label(field["type"], self.rnames)
        if self.newer == self.r:
            problem = (
                f"field {fpath} ({label}) was added in {self.r} without a default, and {self.w} data does not "
                "have it: give it a default (an optional field is a union with null, default null)"
            )
        elif self.newer == self.w:
            problem = (
                f"field {fpath} ({label}) was removed in {self.w}, and {self.r} requires it (it has no default there)"
            )
        else:
            problem = f"field {fpath} ({label}) is not in {self.w}, and {self.r} has no default for it"
        self.add(fpath, problem)


def reader_problems(
    reader: Any,
    writer: Any,
    *,
    reader_label: str = "the reader",
    writer_label: str = "the writer",
    newer: str | None = None,
) -> list[Incompatibility]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty: it can).

    Schemas are JSON-loaded or fastavro-parsed. The labels name the two in the
    wording ("v2"); ``newer``, one of the labels, lets a missing field read as
    "added" or "removed" rather than only "missing".
    """
    return _Check(reader, writer, reader_label, writer_label, newer).run()


# --------------------------------------------------------------------------- versions and modes


def _line(event_type: str, reader: str, writer: str, problem: Incompatibility) -> str:
    return f"{event_type}: {reader} cannot read {writer}: {problem.problem}"


def check_versions(event_type: str, versions: Mapping[int, Any], mode: str | None = None) -> list[str]:
    """Every problem between the versions of one event type (version number -> schema), in order.

    ``mode`` is the type's compatibility mode; when None, the latest version's
    ``accord.compatibility`` (the catalogue's rule: the latest version carries the
    type's facts), BACKWARD_TRANSITIVE when it has none. Every version from the
    second on is checked against the previous one, or with a _TRANSITIVE mode
    against every earlier one, as a registry holding that mode would have checked
    it when it was registered.
    """
    numbers = sorted(versions)
    if not numbers:
        return []
    if mode is None:
        latest = versions[numbers[-1]]
        mode = latest.get(MODE_PROPERTY, DEFAULT_MODE) if isinstance(latest, Mapping) else DEFAULT_MODE
    if mode not in MODES:
        return [
            f"{event_type}: v{numbers[-1]}: {MODE_PROPERTY} {str(mode)[:40]!r} is not a compatibility mode "
            f"(one of {', '.join(MODES)})"
        ]
    if mode == "NONE":
        return []
    backward, forward = mode.startswith(("BACKWARD", "FULL")), mode.startswith(("FORWARD", "FULL"))
    out: list[str] = []
    for i, n in enumerate(numbers[1:], 1):
        new = f"v{n}"
        for e in numbers[:i] if mode.endswith("_TRANSITIVE") else numbers[i - 1 : i]:
            old = f"v{e}"
            if backward:
                for p in reader_problems(versions[n], versions[e], reader_label=new, writer_label=old, newer=new):
                    out.append(_line(event_type, new, old, p))
            if forward:
                for p in reader_problems(versions[e], versions[n], reader_label=old, writer_label=new, newer=new):
                    out.append(_line(event_type, old, new, p))
    return out


def check_catalogue(folder: Path | str | None = None) -> list[str]:
    """Every compatibility problem of every event type in a catalogue folder; empty: compatible.

    ``folder`` holds ``<type>/v<N>.avsc`` (default: the package's ``schemas/events/``),
    read by :func:`schemas.catalogue.load`; a catalogue it refuses is one problem,
    its line. What ``accord schemas check`` prints, one line each.
    """
    try:
        catalogue = events.load(folder)
    except events.CatalogueError as exc:
        return [str(exc)]
    out: list[str] = []
    for event_type in catalogue:
        versions = {v.number: v.schema for v in event_type.versions}
        out += check_versions(event_type.name, versions, event_type.compatibility)
    return out


def require_compatible(folder: Path | str | None = None) -> None:
    """Raise IncompatibleCatalogue (its first problem, one line) unless every event type is compatible.

    For a service's start: it must not read or write with a catalogue whose
    versions cannot read each other.
    """
    problems = check_catalogue(folder)
    if problems:
        raise IncompatibleCatalogue(problems)
