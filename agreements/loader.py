"""Load agreements from YAML, refusing a bad file with its path, line and field.

The YAML is composed first (to keep each key's line number), then validated
with the pydantic model; a validation error is mapped back to the line of the
offending key so that the person fixing the file can go straight to it.

Besides the model's own rules, loading checks what needs the event schemas or
the calendar:

- every allowed field, and every condition's field, exists in the schema of
  each event type the agreement covers, in every version of it
  (``schemas/events/<type>/v<N>.avsc``): the processor decodes each event with
  the version it was written with, so a field only some versions have would be
  missing from the others' disclosures; and a condition's operator and value
  fit the field's type in every version;
- in a folder: two files with one id and version.

Versions of one id may overlap: the newest that has begun decides
(``agreements.model.deciding``), so a new version takes over from the old by its
``valid_from`` and no published version is edited to end it. An active agreement
past its ``valid_until`` is loaded and no longer applies (``lapsed`` notes it).

``load_file`` raises the first problem; ``load_dir`` raises
:class:`AgreementsRefused` (the first problem, carrying every problem of the
folder); ``validate_dir`` returns every problem in every file, for
``accord agreements validate DIR``. An impossible date (``2026-02-30``) is one
of these problems, reported at its line like any other.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agreements.conditions import Condition, schema_problem
from agreements.errors import AgreementError, duplicate_keys, read_yaml_text, yaml_error
from agreements.model import COHERENCE_KEY, Agreement, Status
from agreements.partners import load_partners
from schemas import catalogue
from schemas.catalogue import EventCatalogue
from schemas.projection import UnknownField, check_paths
from schemas.serde import load_schema

__all__ = [
    "AgreementError",
    "AgreementsRefused",
    "load_dir",
    "lapsed",
    "load_file",
    "recipients_by_type",
    "schema_problems",
    "unregistered",
    "validate_dir",
]


class AgreementsRefused(AgreementError):
    """A folder refused: reads as its first problem, and carries them all (``problems``).

    So a command that loads agreements can print every problem, as
    ``accord agreements validate`` does, not only the first.
    """

    def __init__(self, directory: Path, problems: list[AgreementError]) -> None:
        first = problems[0]
        super().__init__(first.path, first.line, first.field, first.problem)
        self.directory, self.problems = directory, list(problems)


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps an impossible date (``2026-02-30``) as its text.

    PyYAML raises a bare ValueError for it, without file or line, and stops the
    file there; kept as text, the model refuses it at its key's line along with
    every other problem of the file.
    """


def _timestamp(loader: _Loader, node: yaml.ScalarNode) -> Any:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)
    except ValueError:
        return loader.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp)


def _line_index(
    node: yaml.Node, prefix: tuple[Any, ...] = (), index: dict[tuple[Any, ...], int] | None = None
) -> dict[tuple[Any, ...], int]:
    """Map each key path (and list position) to its 1-based line."""
    index = {} if index is None else index
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            path = (*prefix, key_node.value)
            index[path] = key_node.start_mark.line + 1
            _line_index(value_node, path, index)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index[(*prefix, i)] = item.start_mark.line + 1
            _line_index(item, (*prefix, i), index)
    return index


def _nearest_line(index: Mapping[tuple[Any, ...], int], loc: tuple[Any, ...], default: int = 1) -> int:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in index:
            return index[loc[:cut]]
    return default


def _field_name(loc: Iterable[Any]) -> str:
    """``('conditions', 0, 'value')`` -> ``conditions[0].value``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(agreement)"


def _pydantic_problems(path: Path, exc: ValidationError, index: Mapping[tuple[Any, ...], int]) -> list[AgreementError]:
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if not loc:  # a cross-field rule: the model names the key it is about
            m = COHERENCE_KEY.match(msg)
            if m:
                loc, msg = (m.group(1),), m.group(2)
        elif err["type"] != "missing" and loc not in index:
            # Drop pydantic's union-member labels etc.: point at the key the file has.
            kept = next((loc[:cut] for cut in range(len(loc) - 1, 0, -1) if loc[:cut] in index), loc)
            loc = kept
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if err["type"].startswith("date_"):  # the agreement's own text, never personal data
            reason = msg.split(", ", 1)[1] if msg.startswith("Input should be a valid date or datetime, ") else msg
            msg = f"{err['input']!r} is not a date ({reason}); write a calendar date as YYYY-MM-DD"
        problems.append(AgreementError(path, _nearest_line(index, loc), _field_name(loc), msg))
    return problems


def _versions(event_type: Any, events: EventCatalogue, own: bool) -> dict[int, Any] | None:
    """Every version of an event type's schema (number -> parsed schema), or None for an unknown type.

    ``own``: a schema shipped beside the catalogue (``schemas/<type>.avsc``) counts,
    as its one version.
    """
    if not isinstance(event_type, str):
        return None
    if event_type in events:
        return {v.number: v.schema for v in events[event_type].versions}
    if not own:
        return None
    try:
        return {1: load_schema(event_type)}
    except FileNotFoundError:
        return None


def _lacking(versions: Mapping[int, Any], path: Any) -> list[int]:
    """The versions in which an allow-list path names nothing."""
    lacking = []
    for n, schema in versions.items():
        try:
            check_paths(schema, [path])
        except UnknownField:
            lacking.append(n)
    return lacking


def _named(versions: Iterable[int]) -> str:
    return ", ".join(f"v{n}" for n in versions)


def _schema_checks(data: Mapping[str, Any], events_dir: Path | None = None) -> list[tuple[tuple[Any, ...], str, str]]:
    """``(loc, field, problem)`` for fields and conditions that do not fit the event schemas.

    Works on the raw mapping so that ``validate_dir`` reports these even when
    the model itself refused the file.
    """
    out: list[tuple[tuple[Any, ...], str, str]] = []
    raw_fields = data.get("fields")
    fields: Mapping[str, Any] = raw_fields if isinstance(raw_fields, Mapping) else {}
    event_types = data.get("event_types")
    types = [t for t in event_types if isinstance(t, str)] if isinstance(event_types, list | tuple) else []
    types += [t for t in fields if t not in types]
    events = catalogue.default() if events_dir is None else catalogue.load(events_dir)
    schemas: dict[str, dict[int, Any]] = {}
    for t in types:
        versions = _versions(t, events, own=events_dir is None)
        if versions is None:
            out.append((("event_types",), "event_types", f"unknown event type {t!r}"))
        else:
            schemas[t] = versions
    for event_type, paths in fields.items():
        if event_type not in schemas or not isinstance(paths, list | tuple):
            continue
        versions = schemas[event_type]
        for pos, p in enumerate(paths):
            lacking = _lacking(versions, p)
            if not lacking:
                continue
            loc, where = ("fields", event_type, pos), f"fields.{event_type}[{pos}]"
            if len(lacking) == len(versions):
                try:
                    check_paths(versions[lacking[0]], [p])
                except UnknownField as exc:
                    out.append((loc, where, f"{exc.path!r} is not a field of the {event_type} schema"))
                continue
            having = [n for n in versions if n not in lacking]
            out.append(
                (
                    loc,
                    where,
                    f"{p!r} is a field of the {event_type} schema's {_named(having)} but not of its {_named(lacking)}: "
                    f"an agreement may only name fields present in every version of its event types "
                    f"(a {event_type} v{lacking[0]} event has no such field to disclose)",
                )
            )
    conditions = data.get("conditions")
    if isinstance(conditions, list | tuple):
        for i, raw in enumerate(conditions):
            try:
                condition = raw if isinstance(raw, Condition) else Condition.model_validate(raw)
            except ValidationError:
                continue  # the model validation reports it
            found = None
            for event_type, versions in schemas.items():
                for n, schema in versions.items():
                    label = event_type if len(versions) == 1 else f"{event_type} v{n}"
                    found = schema_problem(condition, schema, label)
                    if found is not None:
                        break
                if found is not None:
                    attr, text = found
                    out.append((("conditions", i, attr), f"conditions[{i}].{attr}", text))
                    break  # one problem per condition is enough to fix it
    return out


def schema_problems(agreement: Agreement, *, events_dir: Path | None = None) -> list[str]:
    """What in an already-built agreement does not fit the event schemas (for the agreement feed)."""
    data = {
        "event_types": list(agreement.event_types),
        "fields": {t: list(p) for t, p in agreement.fields.items()},
        "conditions": list(agreement.conditions),
    }
    return [f"{field}: {problem}" for _, field, problem in _schema_checks(data, events_dir)]


def _check_file(
    path: Path, events_dir: Path | None = None
) -> tuple[Agreement | None, list[AgreementError], dict[tuple[Any, ...], int]]:
    """The agreement (when the model accepts it) and every problem found in one file."""
    try:
        text = read_yaml_text(path)
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        return None, [yaml_error(path, exc)], {}
    except AgreementError as exc:
        return None, [exc], {}
    if not isinstance(data, dict) or node is None:
        return None, [AgreementError(path, 1, "(document)", "an agreement must be a YAML mapping")], {}
    index = _line_index(node)
    problems: list[AgreementError] = duplicate_keys(path, node)
    agreement: Agreement | None = None
    try:
        agreement = Agreement.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(path, exc, index))
    for loc, field, problem in _schema_checks(data, events_dir):
        problems.append(AgreementError(path, _nearest_line(index, loc), field, problem))
    return agreement, problems, index


def load_file(path: Path, *, events_dir: Path | None = None) -> Agreement:
    """One agreement; raises AgreementError for the first problem (file, line, field).

    ``events_dir`` is the schema catalogue to check against (``schemas/events`` when None).
    """
    path = Path(path)
    agreement, problems, _ = _check_file(path, events_dir)
    if problems:
        raise problems[0]
    assert agreement is not None
    return agreement


def _scan(
    directory: Path, events_dir: Path | None = None, partners_file: Path | None = None
) -> tuple[list[Agreement], list[AgreementError]]:
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file: give the folder that holds it" if directory.exists() else "no such folder"
        return [], [AgreementError(directory, 0, "(folder)", what)]
    paths = sorted(directory.glob("*.yaml"))
    # A .yml file was skipped without a word: a suspension written in one was never read.
    ignored = [
        AgreementError(p, 0, "(file)", "agreements are read from *.yaml files only: rename it")
        for p in sorted(directory.glob("*.yml"))
    ]
    if not paths:
        return [], [*ignored, AgreementError(directory, 0, "(folder)", "no *.yaml agreements found")]
    agreements: list[Agreement] = []
    problems: list[AgreementError] = ignored
    seen: dict[str, Path] = {}
    registry: dict[str, str] | None = None
    if partners_file is not None:
        try:
            registry = load_partners(partners_file)
        except AgreementError as exc:
            problems.append(exc)
    for path in paths:
        agreement, file_problems, index = _check_file(path, events_dir)
        if agreement is not None and registry is not None and partners_file is not None:
            file_problems += [
                AgreementError(
                    path,
                    _nearest_line(index, ("recipients", i), _nearest_line(index, ("recipients",))),
                    "recipients",
                    unregistered(recipient, partners_file),
                )
                for i, recipient in enumerate(agreement.recipients)
                if recipient not in registry
            ]
        problems.extend(file_problems)
        if agreement is None:
            continue
        if agreement.key in seen:
            problems.append(
                AgreementError(
                    path,
                    _nearest_line(index, ("id",)),
                    "id",
                    f"{agreement.key} is also defined in {seen[agreement.key]}",
                )
            )
            continue
        seen[agreement.key] = path
        if not file_problems:
            agreements.append(agreement)
    return agreements, problems


def load_dir(directory: Path, *, events_dir: Path | None = None, partners_file: Path | None = None) -> list[Agreement]:
    """Every ``*.yaml`` agreement in ``directory``; raises AgreementsRefused (every problem, first first).

    Refused besides a bad file: two files with one id and version, two active versions
    of one id whose validity periods overlap, and, given the partner registry, a
    recipient it does not hold (:func:`unregistered`).
    """
    agreements, problems = _scan(Path(directory), events_dir, partners_file)
    if problems:
        raise AgreementsRefused(Path(directory), problems)
    return agreements


def validate_dir(
    directory: Path, *, events_dir: Path | None = None, partners_file: Path | None = None
) -> list[AgreementError]:
    """Every problem in every ``*.yaml`` file of ``directory`` (empty when all load), in file order."""
    return _scan(Path(directory), events_dir, partners_file)[1]


def lapsed(agreements: Iterable[Agreement], today: date | None = None) -> list[str]:
    """A note per active agreement whose ``valid_until`` has passed: it no longer applies.

    Not a refusal: an agreement reaching the end it was written with is planned, and the
    decision already leaves it out from the next day (``Agreement.in_force``). Refusing the
    folder stopped every processor and the consent API at their next restart.
    """
    today = today or datetime.now(UTC).date()  # the day the processor decides by, in UTC
    return [
        f"{a.key} expired on {a.valid_until.isoformat()} (today is {today.isoformat()}) and no longer applies: "
        "publish a new version to go on (a published version is never edited)"
        for a in agreements
        if a.valid_until is not None and a.valid_until < today and a.status is Status.ACTIVE
    ]


def unregistered(recipient: str, partners_file: Path) -> str:
    """Why a recipient missing from the partner registry is refused, not shared with.

    Its recipient class comes from the registry. Without one, a citizen's consent
    choice naming that class ("no sharing with the NHS") could not apply to it, and
    the event would be shared against it.
    """
    return (
        f"{recipient!r} is not in the partner registry {partners_file}: add it there with its recipient "
        "class, or a citizen's consent choice for that class could not apply to it"
    )


def recipients_by_type(agreements: Iterable[Agreement]) -> dict[str, set[str]]:
    """Which partners receive which event types: the partner topics to create."""
    out: dict[str, set[str]] = {}
    for a in agreements:
        for t in a.event_types:
            out.setdefault(t, set()).update(a.recipients)
    return out
