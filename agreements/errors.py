"""The one error of agreement files and the partner registry, and how a YAML file is read for either.

Below both loaders (agreements/loader.py, agreements/partners.py), so each can name a
problem as ``file:line: field: problem`` the same way.
"""

from __future__ import annotations

from pathlib import Path

import yaml

__all__ = ["AgreementError", "duplicate_keys", "read_yaml_text", "yaml_error"]


class AgreementError(ValueError):
    """A refused agreement file; ``str()`` reads ``file:line: field: problem``."""

    def __init__(self, path: Path, line: int, field: str, problem: str) -> None:
        self.path, self.line, self.field, self.problem = path, line, field, problem
        super().__init__(f"{path}:{line}: {field}: {problem}")


def read_yaml_text(path: Path) -> str:
    """A YAML file's text; AgreementError naming the file when it cannot be read or is not UTF-8."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise AgreementError(
            path, 1, "(file)", f"not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise AgreementError(
            path, 1, "(file)", f"cannot read: {(exc.strerror or type(exc).__name__).lower()}"
        ) from None


def yaml_error(path: Path, exc: yaml.YAMLError) -> AgreementError:
    """A YAML syntax error as ``file:line: (yaml): problem``, with where the construct it breaks began."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and context_mark is not None:
        problem = f"{problem} ({context} that began on line {context_mark.line + 1})"
    return AgreementError(path, (mark.line + 1) if mark else 1, "(yaml)", problem)


def duplicate_keys(path: Path, node: yaml.Node | None, where: str = "") -> list[AgreementError]:
    """Every key given twice in one mapping, at its second line.

    YAML loaders keep the last value without a word: a second ``fields:`` block would
    silently share more, a second line for a partner silently move it to another class.
    """
    problems: list[AgreementError] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value)
            dotted = f"{where}.{name}" if where else name
            line = key.start_mark.line + 1
            if name in seen:
                problems.append(
                    AgreementError(path, line, dotted, f"given twice (first on line {seen[name]}): keep one")
                )
            else:
                seen[name] = line
            problems += duplicate_keys(path, value, dotted)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += duplicate_keys(path, item, f"{where}[{i}]")
    return problems
