"""Load agreements from YAML, refusing a bad file with its path, line and field.

The YAML is composed first (to keep each key's line number), then validated
with the pydantic model; a validation error is mapped back to the line of the
offending key so that the person fixing the file can go straight to it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml
from pydantic import ValidationError

from agreements.model import Agreement
from schemas.projection import UnknownField, check_paths
from schemas.serde import load_schema


class AgreementError(ValueError):
    """A refused agreement file; ``str()`` reads ``file:line: field: problem``."""

    def __init__(self, path: Path, line: int, field: str, problem: str) -> None:
        self.path, self.line, self.field, self.problem = path, line, field, problem
        super().__init__(f"{path}:{line}: {field}: {problem}")


def _line_index(node: yaml.Node, prefix: tuple = (), index: dict | None = None) -> dict[tuple, int]:
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


def _nearest_line(index: dict[tuple, int], loc: tuple, default: int) -> int:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in index:
            return index[loc[:cut]]
    return default


def load_file(path: Path) -> Agreement:
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise AgreementError(path, (mark.line + 1) if mark else 1, "(yaml)", str(exc).splitlines()[0]) from None
    if not isinstance(data, dict) or node is None:
        raise AgreementError(path, 1, "(document)", "an agreement must be a YAML mapping")
    index = _line_index(node)
    try:
        agreement = Agreement.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(err["loc"])
        field = ".".join(str(p) for p in loc) or "(agreement)"
        raise AgreementError(path, _nearest_line(index, loc, 1), field, err["msg"]) from None
    for event_type, paths in agreement.fields.items():
        try:
            schema = load_schema(event_type)
        except FileNotFoundError:
            raise AgreementError(
                path, _nearest_line(index, ("event_types",), 1), "event_types", f"unknown event type {event_type!r}"
            ) from None
        try:
            check_paths(schema, list(paths))
        except UnknownField as exc:
            pos = paths.index(exc.path) if exc.path in paths else 0
            raise AgreementError(
                path,
                _nearest_line(index, ("fields", event_type, pos), 1),
                f"fields.{event_type}[{pos}]",
                f"{exc.path!r} is not a field of the {event_type} schema",
            ) from None
    return agreement


def load_dir(directory: Path) -> list[Agreement]:
    """Every ``*.yaml`` agreement in ``directory``; two files with one id and version are refused."""
    agreements: list[Agreement] = []
    seen: dict[str, Path] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        agreement = load_file(path)
        if agreement.key in seen:
            raise AgreementError(path, 1, "id", f"{agreement.key} is also defined in {seen[agreement.key]}")
        seen[agreement.key] = path
        agreements.append(agreement)
    if not agreements:
        raise AgreementError(Path(directory), 0, "(folder)", "no *.yaml agreements found")
    return agreements


def recipients_by_type(agreements: Iterable[Agreement]) -> dict[str, set[str]]:
    """Which partners receive which event types: the partner topics to create."""
    out: dict[str, set[str]] = {}
    for a in agreements:
        for t in a.event_types:
            out.setdefault(t, set()).update(a.recipients)
    return out
