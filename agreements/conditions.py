"""Declarative conditions on an agreement: which events of a covered type it applies to.

A condition is data, never code: a dotted path into the event, an operator from
a closed list, and (for most operators) a value written in the agreement. It is
never ``eval``'d. Every condition of an agreement must hold (AND).

    conditions:
      - {field: event_kind, op: eq, value: CHARGE}
      - {field: outcome, op: in, value: [CHARGED, REMANDED]}
      - {field: subject.date_of_birth, op: age_under, value: 18}

Operators:

- ``eq`` / ``ne``: the field equals / does not equal ``value``;
- ``in`` / ``not_in``: the field is / is not one of the listed values;
- ``present`` / ``absent``: the field has / has no value (no ``value`` given);
- ``age_under`` / ``age_at_least``: the age in whole years on the decision date,
  computed from a ``date`` field, is under / at least ``value``.

A comparison or age test on an absent field does not hold (a condition only
ever narrows sharing). The reason given for a failing condition never contains
the event's value (no personal data in reasons or logs): for ``ne`` and
``not_in`` a failure means the event holds the agreement's excluded value, so
those reasons do not repeat it either.

Whether a condition fits an event schema (the field exists, the operator and
value fit its type) is checked when agreements are loaded: ``schema_problem``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, model_validator

from schemas.projection import UnknownField, check_paths

__all__ = ["Condition", "Op", "age_on", "holds", "schema_problem"]


class Op(str, Enum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    NOT_IN = "not_in"
    PRESENT = "present"
    ABSENT = "absent"
    AGE_UNDER = "age_under"
    AGE_AT_LEAST = "age_at_least"


_COMPARE = (Op.EQ, Op.NE)
_MEMBER = (Op.IN, Op.NOT_IN)
_PRESENCE = (Op.PRESENT, Op.ABSENT)
_AGE = (Op.AGE_UNDER, Op.AGE_AT_LEAST)

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr
_PATH = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"


class Condition(BaseModel):
    """One test on one field of the event."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    field: str = Field(pattern=_PATH)
    op: Op
    value: Scalar | tuple[Scalar, ...] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Condition:
        op, value = self.op, self.value
        if op in _PRESENCE:
            if value is not None:
                raise ValueError(f"op {op.value} takes no value")
        elif op in _COMPARE:
            if value is None or isinstance(value, tuple):
                raise ValueError(f"op {op.value} needs a single value (use in/not_in for a list)")
        elif op in _MEMBER:
            if not isinstance(value, tuple) or not value:
                raise ValueError(f"op {op.value} needs a non-empty list of values")
        elif op in _AGE:  # noqa: SIM102 - one branch per family of ops, as above
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 150:
                raise ValueError(f"op {op.value} needs a whole number of years between 0 and 150")
        return self

    def describe(self) -> str:
        """The condition as the agreement states it (agreement data, not event data)."""
        if self.op in _PRESENCE:
            return f"{self.field} {self.op.value}"
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return f"{self.field} {self.op.value} {value!r}"


# --------------------------------------------------------------------------- evaluation

_MISSING = object()


def _lookup(record: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path; _MISSING when it or a record on the way is absent or null."""
    value: Any = record
    for part in path.split("."):
        if not isinstance(value, Mapping) or value.get(part) is None:
            return _MISSING
        value = value[part]
    return value


def age_on(born: date, day: date) -> int:
    """Age in whole years on ``day`` (a birthday counts from the day itself)."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def _failure(condition: Condition, value: Any, today: date) -> str | None:
    """Why the condition fails for ``value``, or None when it holds. Never names ``value``."""
    op, field, want = condition.op, condition.field, condition.value
    if op is Op.PRESENT:
        return None if value is not _MISSING else f"{field} is absent"
    if op is Op.ABSENT:
        return None if value is _MISSING else f"{field} is present"
    if value is _MISSING:
        return f"{field} is absent"
    if op is Op.EQ:
        return None if _same(value, want) else f"{field} is not {want!r}"
    if op is Op.NE:
        return None if not _same(value, want) else f"{field} has the excluded value"
    if op is Op.IN:
        assert isinstance(want, tuple)
        return None if any(_same(value, w) for w in want) else f"{field} is not one of {list(want)!r}"
    if op is Op.NOT_IN:
        assert isinstance(want, tuple)
        return None if not any(_same(value, w) for w in want) else f"{field} has one of the excluded values"
    # age_under / age_at_least
    if isinstance(value, datetime):
        value = value.date()
    if not isinstance(value, date):
        return f"{field} is not a date"
    assert isinstance(want, int)
    age = age_on(value, today)
    if op is Op.AGE_UNDER:
        return None if age < want else f"age from {field} on {today.isoformat()} is not under {want}"
    return None if age >= want else f"age from {field} on {today.isoformat()} is under {want}"


def _same(value: Any, want: Any) -> bool:
    """Equality that does not let True stand for 1 (or an enum for its symbol's text by accident)."""
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, bool) or isinstance(want, bool):
        return isinstance(value, bool) and isinstance(want, bool) and value is want
    return bool(value == want)


def holds(conditions: Iterable[Condition], record: Mapping[str, Any], today: date) -> tuple[bool, str | None]:
    """Whether every condition holds for the event on ``today``; else the first failure's reason.

    The reason names the condition (``conditions[i]``), the field and the rule;
    it never contains the event's value.
    """
    for i, condition in enumerate(conditions):
        problem = _failure(condition, _lookup(record, condition.field), today)
        if problem is not None:
            return False, f"conditions[{i}] ({condition.describe()}) not met: {problem}"
    return True, None


# --------------------------------------------------------------------------- schema fit

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def _resolve(schema: Any, names: Mapping[str, Any]) -> Any:
    while True:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            schema = names[schema]
        elif (
            isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) and "logicalType" not in schema
        ) or (isinstance(schema, dict) and schema.get("type") in _PRIMITIVES and "logicalType" not in schema):
            schema = schema["type"]
        else:
            return schema


def _non_null(schema: Any, names: Mapping[str, Any]) -> tuple[list[Any], bool]:
    """The non-null branches of a (possibly union) type and whether null is allowed."""
    s = _resolve(schema, names)
    if isinstance(s, list):
        branches = [_resolve(b, names) for b in s]
        return [b for b in branches if b != "null"], "null" in branches
    return ([] if s == "null" else [s]), s == "null"


def _leaf(parsed: Any, path: str) -> tuple[list[Any], bool]:
    """The non-null types a path can hold, and whether it can be absent (itself or a record on the way)."""
    names = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    record: Any = _resolve(parsed, names)
    nullable = False
    branches: list[Any] = [record]
    for part in path.split("."):
        record = next(b for b in branches if isinstance(b, dict) and b.get("type") in ("record", "error"))
        field = next(f for f in record["fields"] if f["name"] == part)
        branches, null_here = _non_null(field["type"], names)
        nullable = nullable or null_here
    return branches, nullable


def _kind(s: Any) -> str:
    if isinstance(s, str):
        return s
    logical = s.get("logicalType")
    if logical == "date":
        return "date"
    if logical in ("timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"):
        return "timestamp"
    if logical == "uuid":
        return "string"
    if logical:
        return str(logical)
    return str(s.get("type"))


def _fits(kind: str, s: Any, v: Any) -> str | None:
    """Why value ``v`` cannot be compared with a field of this kind, or None."""
    if kind == "string":
        return None if isinstance(v, str) else f"{v!r} is not a string"
    if kind == "enum":
        symbols = list(s.get("symbols", []))
        return None if v in symbols else f"{v!r} is not one of the field's symbols {symbols}"
    if kind in ("int", "long"):
        return None if isinstance(v, int) and not isinstance(v, bool) else f"{v!r} is not a whole number"
    if kind in ("float", "double"):
        return None if isinstance(v, (int, float)) and not isinstance(v, bool) else f"{v!r} is not a number"
    if kind == "boolean":
        return None if isinstance(v, bool) else f"{v!r} is not true or false"
    raise AssertionError(kind)


_COMPARABLE = ("string", "enum", "int", "long", "float", "double", "boolean")


def schema_problem(condition: Condition, parsed_schema: Any, event_type: str) -> tuple[str, str] | None:
    """``(attribute, problem)`` when the condition does not fit the event schema, else None.

    ``attribute`` is the condition's key to point at: ``field``, ``op`` or ``value``.
    """
    try:
        check_paths(parsed_schema, [condition.field])
    except UnknownField:
        return "field", f"{condition.field!r} is not a field of the {event_type} schema"
    branches, nullable = _leaf(parsed_schema, condition.field)
    op = condition.op
    if op is Op.ABSENT and not nullable:
        return "op", f"{condition.field} is never absent in the {event_type} schema, so the condition could never hold"
    if op in _PRESENCE:
        return None
    kinds = [_kind(b) for b in branches]
    label = " or ".join(kinds) or "null"
    if op in _AGE:
        if kinds != ["date"]:
            return "op", f"{op.value} needs a date field; {condition.field} is {label} in the {event_type} schema"
        return None
    if len(kinds) != 1 or kinds[0] not in _COMPARABLE:
        return "op", (
            f"{op.value} cannot compare {condition.field} ({label} in the {event_type} schema); "
            "only strings, enums, numbers and booleans can be compared"
        )
    values: Sequence[Any] = condition.value if isinstance(condition.value, tuple) else (condition.value,)
    for v in values:
        problem = _fits(kinds[0], branches[0], v)
        if problem is not None:
            return "value", f"{problem} ({condition.field} is {label} in the {event_type} schema)"
    return None
