"""The partner registry: which recipient class each partner belongs to."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agreements.errors import AgreementError, duplicate_keys, read_yaml_text, yaml_error

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def load_partners(path: Path) -> dict[str, str]:
    """``{partner id: recipient class}``; a bad entry is refused with file and line."""
    text = read_yaml_text(Path(path))
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise yaml_error(Path(path), exc) from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise AgreementError(Path(path), 1, "(document)", "the partner registry must map partner id to class")
    twice = duplicate_keys(Path(path), node)
    if twice:
        raise twice[0]
    partners: dict[str, str] = {}
    for key, value in node.value:
        line = key.start_mark.line + 1
        if not _SLUG.match(str(key.value)):
            raise AgreementError(Path(path), line, str(key.value), "partner ids are lower-case slugs")
        if not isinstance(value, yaml.ScalarNode) or not _SLUG.match(str(value.value)):
            raise AgreementError(Path(path), line, str(key.value), "the recipient class must be a lower-case slug")
        partners[key.value] = value.value
    return partners
