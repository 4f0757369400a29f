"""The event catalogue: what ``schemas/events/`` says about each event type.

An event type is a folder, ``schemas/events/<type>/``, holding one Avro schema per
version, ``v1.avsc``, ``v2.avsc`` ... The facts the bus needs about a type are
schema properties at the top level of its record schema, all named ``accord.*``
(outside Avro's Parsing Canonical Form, so they never change a fingerprint):

- ``accord.subject_key``: where the person the event is about is named, an ordered
  list of ``{"scheme": ..., "field": ...}``; the first present wins, the last is
  the fallback and must always be there (a required string in every version);
- ``accord.other_subjects``: other people the event is about (same form), each
  recorded when present;
- ``accord.identifiers``: the dotted paths a pseudonymised agreement tokenises;
- ``accord.partitions``: partitions of the event topic (default 4);
- ``accord.compatibility``: the Confluent compatibility mode new versions must
  keep (default ``BACKWARD_TRANSITIVE``).

The latest version carries the type's facts; a subject-key field must be in every
version, since records of every version are still decoded and keyed. Adding an
event type is adding a folder: nothing in the code lists them.

The properties are read with plain ``json``; fastavro parses the same text for the
schema itself. A malformed catalogue is refused with one line naming the file and
what is wrong (:class:`CatalogueError`), never half loaded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import fastavro

from schemas.named_types import _named_types, _resolve
from schemas.subject_keys import KINDS
from schemas.wire import fingerprint

__all__ = [
    "COMPATIBILITY_MODES",
    "DEFAULT_COMPATIBILITY",
    "DEFAULT_PARTITIONS",
    "EVENTS_DIR",
    "CatalogueError",
    "EventCatalogue",
    "EventType",
    "KeyField",
    "Version",
    "default",
    "load",
    "optional_steps",
]

EVENTS_DIR = Path(__file__).resolve().parent / "events"
DEFAULT_PARTITIONS = 4
DEFAULT_COMPATIBILITY = "BACKWARD_TRANSITIVE"
COMPATIBILITY_MODES = (
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
    "NONE",
)
PROPERTIES = (
    "accord.subject_key",
    "accord.other_subjects",
    "accord.identifiers",
    "accord.partitions",
    "accord.compatibility",
)
_TYPE_NAME = re.compile(r"[a-z][a-z0-9_]*")
_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.avsc")


class CatalogueError(ValueError):
    """A malformed catalogue: ``str()`` is one line, ``<file>: <what is wrong>``."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


@dataclass(frozen=True)
class KeyField:
    """One place a subject key may come from: ``scheme`` (nhs, pnc, local) and a dotted ``field``.

    A ``local`` key is ``local:<envelope.source_agency>:<value>``: an agency's own
    identifier means nothing without the agency.
    """

    scheme: str
    field: str

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.field.split("."))


@dataclass(frozen=True)
class Version:
    """One version of an event type: its number, file, parsed schema and fingerprint."""

    number: int
    path: Path
    schema: dict[str, Any]  # parsed by fastavro; shared, so never to be changed
    fingerprint: bytes


@dataclass(frozen=True)
class EventType:
    """An event type and its facts, as its latest version states them."""

    name: str
    versions: tuple[Version, ...]  # by number, oldest first
    subject_key: tuple[KeyField, ...]
    other_subjects: tuple[KeyField, ...]
    identifiers: tuple[str, ...]
    partitions: int
    compatibility: str

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    @property
    def schema(self) -> dict[str, Any]:
        """The latest version's parsed schema: what producers write."""
        return self.latest.schema


@dataclass(frozen=True)
class EventCatalogue:
    """Every event type of one catalogue folder, by name (sorted)."""

    folder: Path
    types: Mapping[str, EventType]

    def __getitem__(self, name: str) -> EventType:
        return self.types[name]

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __iter__(self) -> Iterator[EventType]:
        return iter(self.types.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self.types)


# --------------------------------------------------------------------------- fields


def _field_of(schema: Any, names: Mapping[str, Any], path: tuple[str, ...]) -> tuple[Any, bool] | None:
    """(type, nullable anywhere on the way) of the field at ``path``; None when there is no such field.

    A step may go through a union of null and one record (an optional sub-record).
    """
    current, nullable = schema, False
    for part in path:
        s = _resolve(current, names)
        if isinstance(s, list):
            branches = [_resolve(b, names) for b in s]
            records = [b for b in branches if isinstance(b, dict) and b.get("type") in ("record", "error")]
            if len(records) != 1:
                return None
            nullable = nullable or "null" in branches
            s = records[0]
        if not (isinstance(s, dict) and s.get("type") in ("record", "error")):
            return None
        found = next((f for f in s["fields"] if f["name"] == part), None)
        if found is None:
            return None
        current = found["type"]
    return current, nullable


def _is_string(schema: Any, names: Mapping[str, Any]) -> tuple[bool, bool]:
    """(holds a string, may be null) for a leaf type: ``"string"`` or a union of null and string."""
    s = _resolve(schema, names)
    if isinstance(s, dict) and s.get("type") == "string" and "logicalType" not in s:
        s = "string"
    if s == "string":
        return True, False
    if isinstance(s, list):
        branches = [_resolve(b, names) for b in s]
        others = [b for b in branches if b != "null"]
        return others == ["string"], "null" in branches
    return False, False


def optional_steps(event_type: EventType, field: str) -> tuple[bool, ...]:
    """For each step of a dotted ``field``: may a record lack it (null, defaulted or not in some version)?

    What a reader of the field needs to know to index where it may and ``get`` where it must.
    """
    parts = field.split(".")
    out = [False] * len(parts)
    for version in event_type.versions:
        names = _named_types(version.schema)
        current: Any = version.schema
        for i, part in enumerate(parts):
            s = _resolve(current, names)
            if isinstance(s, list):
                records = [b for b in (_resolve(b, names) for b in s) if isinstance(b, dict) and "fields" in b]
                s = records[0] if len(records) == 1 else None
            found = next((f for f in s["fields"] if f["name"] == part), None) if isinstance(s, dict) else None
            if found is None:
                out[i:] = [True] * (len(parts) - i)
                break
            nullable = _is_string(found["type"], names)[1] or _resolve(found["type"], names) == "null"
            branches = found["type"] if isinstance(found["type"], list) else []
            if nullable or "default" in found or any(_resolve(b, names) == "null" for b in branches):
                out[i] = True
            current = found["type"]
    return tuple(out)


# --------------------------------------------------------------------------- loading


def _read_version(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the file's JSON, its fastavro-parsed schema)."""
    try:
        with path.open(encoding="utf-8") as fh:
            raw = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CatalogueError(path, f"not JSON: {exc.msg} at line {exc.lineno}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogueError(path, f"cannot be read: {type(exc).__name__}") from None
    if not (isinstance(raw, dict) and raw.get("type") == "record"):
        raise CatalogueError(path, 'an event schema is an Avro record schema ({"type": "record", ...})')
    unknown = sorted(k for k in raw if k.startswith("accord.") and k not in PROPERTIES)
    if unknown:
        raise CatalogueError(path, f"unknown property {unknown[0]} (known: {', '.join(PROPERTIES)})")
    try:
        parsed = fastavro.parse_schema(raw)
    except Exception as exc:  # noqa: BLE001 - fastavro's many refusals, each reported as a line
        raise CatalogueError(path, f"not a valid Avro schema: {exc}") from None
    if not isinstance(parsed, dict):  # a record schema parses to a dict; for the type checker
        raise CatalogueError(path, "an event schema is an Avro record schema")
    return raw, parsed


def _key_fields(path: Path, raw: Mapping[str, Any], prop: str) -> tuple[KeyField, ...]:
    value = raw.get(prop, [])
    if not isinstance(value, list):
        raise CatalogueError(path, f'{prop} must be a list of {{"scheme": ..., "field": ...}}')
    out = []
    for i, item in enumerate(value):
        where = f"{prop}[{i}]"
        if not (isinstance(item, dict) and set(item) == {"scheme", "field"}):
            raise CatalogueError(path, f'{where} must be {{"scheme": ..., "field": ...}} and nothing else')
        scheme, field = item["scheme"], item["field"]
        if scheme not in KINDS:
            raise CatalogueError(path, f"{where}: unknown scheme {scheme!r} (known: {', '.join(KINDS)})")
        if not (isinstance(field, str) and field and all(field.split("."))):
            raise CatalogueError(path, f"{where}: field must be a dotted path such as subject.nhs_number")
        out.append(KeyField(scheme, field))
    return tuple(out)


def _check_key_field(path: Path, parsed: Any, prop: str, i: int, key: KeyField, *, fallback: bool) -> None:
    names = _named_types(parsed)
    found = _field_of(parsed, names, key.path)
    where = f"{prop}[{i}]"
    if found is None:
        raise CatalogueError(path, f"{where}: {key.field} is not a field of this schema")
    leaf, through_optional = found
    string, nullable = _is_string(leaf, names)
    if not string:
        raise CatalogueError(path, f"{where}: {key.field} is not a string field")
    if fallback and (nullable or through_optional):
        raise CatalogueError(
            path,
            f"{where}: {key.field} may be null, but the last subject-key field is the fallback and must "
            "always be there (a required string)",
        )


def _load_type(folder: Path) -> EventType:
    name = folder.name
    if not _TYPE_NAME.fullmatch(name):
        raise CatalogueError(folder, "an event type's folder is named in lower case: letters, digits and _")
    numbered: dict[int, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        match = _VERSION_FILE.fullmatch(entry.name)
        if match is None or not entry.is_file():
            raise CatalogueError(entry, "not a version of the event type (expected v1.avsc, v2.avsc ...)")
        numbered[int(match.group(1))] = entry
    if not numbered:
        raise CatalogueError(folder, "no versions (expected v1.avsc)")
    for n in range(1, max(numbered) + 1):
        if n not in numbered:
            raise CatalogueError(
                folder / f"v{n}.avsc",
                f"missing: versions are numbered from v1 without gaps (v{max(numbered)}.avsc exists)",
            )
    read = [(n, numbered[n], *_read_version(numbered[n])) for n in sorted(numbered)]
    _, latest_path, latest_raw, latest_parsed = read[-1]

    subject_key = _key_fields(latest_path, latest_raw, "accord.subject_key")
    if not subject_key:
        raise CatalogueError(latest_path, "accord.subject_key is missing: say where the event names its subject")
    for _, vpath, _, vparsed in read:  # records of every version are keyed
        for i, key in enumerate(subject_key):
            _check_key_field(vpath, vparsed, "accord.subject_key", i, key, fallback=i == len(subject_key) - 1)
    other_subjects = _key_fields(latest_path, latest_raw, "accord.other_subjects")
    for i, key in enumerate(other_subjects):
        _check_key_field(latest_path, latest_parsed, "accord.other_subjects", i, key, fallback=False)

    identifiers = latest_raw.get("accord.identifiers", [])
    if not (isinstance(identifiers, list) and all(isinstance(p, str) and p and all(p.split(".")) for p in identifiers)):
        raise CatalogueError(latest_path, "accord.identifiers must be a list of dotted field paths")
    names = _named_types(latest_parsed)
    for i, p in enumerate(identifiers):
        found = _field_of(latest_parsed, names, tuple(p.split(".")))
        if found is None:
            raise CatalogueError(latest_path, f"accord.identifiers[{i}]: {p} is not a field of this schema")
        if not _is_string(found[0], names)[0]:
            raise CatalogueError(latest_path, f"accord.identifiers[{i}]: {p} is not a string field")
    for i, p in enumerate(identifiers):
        if any(q != p and p.startswith(q + ".") for q in identifiers):
            raise CatalogueError(latest_path, f"accord.identifiers[{i}]: {p} is inside another identifier")

    partitions = latest_raw.get("accord.partitions", DEFAULT_PARTITIONS)
    if not (type(partitions) is int and partitions >= 1):
        raise CatalogueError(latest_path, "accord.partitions must be a whole number of at least 1")
    compatibility = latest_raw.get("accord.compatibility", DEFAULT_COMPATIBILITY)
    if compatibility not in COMPATIBILITY_MODES:
        raise CatalogueError(
            latest_path,
            f"accord.compatibility: unknown mode {str(compatibility)[:40]!r} (known: {', '.join(COMPATIBILITY_MODES)})",
        )

    versions = tuple(Version(n, vpath, vparsed, fingerprint(vparsed)) for n, vpath, _, vparsed in read)
    return EventType(
        name=name,
        versions=versions,
        subject_key=subject_key,
        other_subjects=other_subjects,
        identifiers=tuple(identifiers),
        partitions=partitions,
        compatibility=compatibility,
    )


def load(folder: Path | str | None = None) -> EventCatalogue:
    """Read a catalogue folder (default: the one shipped with this package); CatalogueError if malformed."""
    root = Path(folder) if folder is not None else EVENTS_DIR
    if not root.is_dir():
        raise CatalogueError(root, "no such folder: the event catalogue is a folder of event types")
    types: dict[str, EventType] = {}
    seen: dict[bytes, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if not entry.is_dir():
            raise CatalogueError(entry, "not an event type: the catalogue holds one folder per event type")
        event_type = _load_type(entry)
        for v in event_type.versions:
            if v.fingerprint in seen:
                raise CatalogueError(
                    v.path,
                    f"the same schema as {seen[v.fingerprint]} (fingerprint "
                    f"{v.fingerprint.hex()}): a message could not say which it is",
                )
            seen[v.fingerprint] = v.path
        types[event_type.name] = event_type
    if not types:
        raise CatalogueError(root, "no event types")
    return EventCatalogue(root, MappingProxyType(types))


@lru_cache(maxsize=1)
def default() -> EventCatalogue:
    """The package's own catalogue, read once per process."""
    return load()
