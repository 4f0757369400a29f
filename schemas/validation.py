"""Plausibility rules every event is checked against, at the publisher and again at the processor.

The schema says what shape an event has; these rules say whether its values can
be true. They fail closed on what would otherwise be silently wrong downstream:
a mistyped NHS number would look up (and miss) someone else's consent, a date
of birth in 2999 makes a child of anyone, and a 2 MB narrative is a poison record.

The rules are found from the schema, not from a hand list, so a new event type
is covered the day its folder is added to ``schemas/events/`` (they are not per
type, so the catalogue carries no ``accord.plausibility``; a record is judged
against its type's latest version, whose field names the rules look for):

- every field named ``nhs_number``, wherever it is nested: ten ASCII digits
  passing Modulus 11 when present (null or absent is fine where the schema lets
  it be; an empty string is a problem);
- every field named ``pnc_id`` or ``local_id``: the form ``schemas.subject_keys``
  gives a PNC id (``26/123456A``) or an agency's local id (printable ASCII, no
  spaces, at most 64 characters), since the subject key is made of it;
- every field named ``gestation_weeks``: 0 to 45;
- ``envelope.event_id``: a UUID in canonical lower-case form;
- every field named ``date_of_birth``: not after today anywhere on Earth (UTC+14,
  so a birth just after midnight in any zone is not "in the future") and an age
  of at most 125 completed years;
- ``envelope.occurred_at`` and ``envelope.recorded_at``: from 1900-01-01 to one day
  after ``now`` (a recorded_at before occurred_at is allowed: clocks differ);
- every string anywhere in the record: at most ``max_string_bytes`` UTF-8 bytes.

A Problem never repeats the value it is about: refusals and dead-letter reasons
end up in files and logs, and a near-miss NHS number or a narrative is personal data.
Pure: no I/O, ``now`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from schemas import nhs_number
from schemas.named_types import _join, _named_types, _resolve
from schemas.registry import load_schema
from schemas.subject_keys import identifier_problem

__all__ = [
    "CANONICAL_UUID",
    "Limits",
    "Problem",
    "event_problems",
    "size_problem",
    "MAX_AGE_YEARS",
    "EARLIEST_TIMESTAMP",
]

MAX_AGE_YEARS = 125
EARLIEST_TIMESTAMP = datetime(1900, 1, 1, tzinfo=UTC)
FUTURE_TOLERANCE = timedelta(days=1)
LATEST_ZONE = timedelta(hours=14)  # UTC+14 (Line Islands): where the calendar date is furthest ahead
ENVELOPE_TIMESTAMPS = ("envelope.occurred_at", "envelope.recorded_at")
# A UUID in canonical lower-case form: every event id, and every id the processor derives (uuid5).
CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_nhs_problem = nhs_number.problem  # one global read per NHS number, not a module attribute too


@dataclass(frozen=True)
class Limits:
    """Size bounds; the bus takes them from Settings.max_event_bytes / max_string_bytes."""

    max_event_bytes: int = 524_288
    max_string_bytes: int = 65_536


@dataclass(frozen=True)
class Problem:
    field: str  # dotted path, e.g. "mother.nhs_number", "envelope.event_id", "(record)"
    problem: str  # never contains the value itself

    def __str__(self) -> str:
        return f"{self.field}: {self.problem}"


@dataclass(frozen=True)
class _Context:
    now: datetime
    latest_birth: date  # the latest calendar date anywhere now
    today: date  # UTC, for ages
    latest_timestamp: datetime
    max_string_bytes: int


# A compiled check: (value, path, problems, context). It ignores values of a type it
# does not judge (the schema check is the serde's job), so an odd record never raises.
_Check = Callable[[Any, str, list[Problem], _Context], None]


def _age_on(dob: date, day: date) -> int:
    return day.year - dob.year - ((day.month, day.day) < (dob.month, dob.day))


def _check_string(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
    if isinstance(value, str) and len(value) * 4 > ctx.max_string_bytes:  # shorter can never be over
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > ctx.max_string_bytes:
            out.append(Problem(path, f"is {size} bytes (UTF-8), over the limit of {ctx.max_string_bytes} bytes"))


def _check_nhs_number(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
    if value is None:
        return
    why = _nhs_problem(value)
    if why is not None:
        out.append(Problem(path, why))
    if isinstance(value, str) and len(value) * 4 > ctx.max_string_bytes:  # _check_string's first test, without the call
        _check_string(value, path, out, ctx)


def _identifier_check(scheme: str) -> _Check:
    """A subject key's identifier (``pnc_id``, ``local_id``): its form, so the key it makes is one."""

    def check(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
        if isinstance(value, str):
            why = identifier_problem(scheme, value)
            if why is not None:
                out.append(Problem(path, why))

    return check


def _range_check(low: int, high: int, unit: str) -> _Check:
    """A count that cannot be outside [low, high] and be true (the schema's int allows ±2^31)."""

    def check(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
        if isinstance(value, int) and not isinstance(value, bool) and not low <= value <= high:
            out.append(Problem(path, f"is outside {low} to {high} {unit}"))

    return check


# Field name -> its rule, wherever the field is nested (as nhs_number's).
_NAMED_FIELDS: dict[str, _Check] = {
    "pnc_id": _identifier_check("pnc"),
    "local_id": _identifier_check("local"),
    "gestation_weeks": _range_check(0, 45, "weeks"),  # a pregnancy past 45 weeks is not recorded: a typo
}


def _check_event_id(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
    if isinstance(value, str) and not (len(value) == 36 and CANONICAL_UUID.fullmatch(value)):
        out.append(Problem(path, "is not a UUID in canonical lower-case form (8-4-4-4-12 hex digits)"))
    _check_string(value, path, out, ctx)


def _check_date_of_birth(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
    if not isinstance(value, date) or isinstance(value, datetime):
        return
    if value > ctx.latest_birth:
        out.append(Problem(path, "is in the future"))
    elif _age_on(value, ctx.today) > MAX_AGE_YEARS:
        out.append(Problem(path, f"implies an age over {MAX_AGE_YEARS} years"))


def _check_timestamp(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
    if not isinstance(value, datetime):
        return
    if value.tzinfo is None or value.utcoffset() is None:
        out.append(Problem(path, "has no timezone"))
    elif value < EARLIEST_TIMESTAMP:
        out.append(Problem(path, "is before 1900-01-01 (implausibly early)"))
    elif value > ctx.latest_timestamp:
        out.append(Problem(path, "is more than a day in the future"))


def _nullable(schema: Any, names: Mapping[str, Any]) -> bool:
    s = _resolve(schema, names)
    return s == "null" or (isinstance(s, list) and any(_resolve(b, names) == "null" for b in s))


def _required(check: _Check, nullable: bool) -> _Check:
    """A named rule on a field the schema does not let be null: missing is a problem too."""
    if nullable:
        return check

    def run(value: Any, path: str, out: list[Problem], ctx: _Context) -> None:
        if value is None:
            out.append(Problem(path, "is missing"))
        else:
            check(value, path, out, ctx)

    return run


def _compile(schema: Any, names: Mapping[str, Any], path: str) -> _Check | None:
    """The checks the schema at ``path`` needs, or None when nothing under it is judged."""
    s = _resolve(schema, names)
    if isinstance(s, list):
        branches = [c for c in (_compile(b, names, path) for b in s) if c is not None]
        if not branches:
            return None
        if len(branches) == 1:
            return branches[0]

        def union(value: Any, p: str, out: list[Problem], ctx: _Context) -> None:
            for check in branches:  # each branch's checks ignore values not of its type
                check(value, p, out, ctx)

        return union
    kind = s if isinstance(s, str) else s["type"]
    if kind == "string":
        return _check_string
    if kind in ("record", "error"):
        return _compile_record(s, names, path)
    if kind in ("array", "map"):
        inner = _compile(s["items"] if kind == "array" else s["values"], names, path)
        if kind == "array":

            def array(value: Any, p: str, out: list[Problem], ctx: _Context) -> None:
                if inner is not None and isinstance(value, (list, tuple)):
                    for i, item in enumerate(value):
                        inner(item, f"{p}[{i}]", out, ctx)

            return array

        def mapping(value: Any, p: str, out: list[Problem], ctx: _Context) -> None:
            if isinstance(value, Mapping):
                for key, item in value.items():
                    where = _join(p, str(key))
                    _check_string(key, where, out, ctx)
                    if inner is not None:
                        inner(item, where, out, ctx)

        return mapping
    return None


def _field_check(f: Mapping[str, Any], names: Mapping[str, Any], path: str) -> tuple[str, str, _Check | None, bool]:
    """(name, path, check, by type) of one field: a named rule, else what its type needs (by type: True)."""
    name, where = f["name"], _join(path, f["name"])
    nullable = _nullable(f["type"], names) or "default" in f
    if name == "nhs_number":
        return name, where, _required(_check_nhs_number, nullable), False
    if where == "envelope.event_id":
        return name, where, _required(_check_event_id, nullable), False
    if name == "date_of_birth":
        return name, where, _check_date_of_birth, False
    if name in _NAMED_FIELDS:
        return name, where, _NAMED_FIELDS[name], False
    if where in ENVELOPE_TIMESTAMPS:
        return name, where, _check_timestamp, False
    return name, where, _compile(f["type"], names, where), True


def _compile_record(s: Mapping[str, Any], names: Mapping[str, Any], path: str) -> _Check:
    fields: list[tuple[str, str, _Check | None]] = []
    for f in s["fields"]:
        name, where, check, _ = _field_check(f, names, path)
        if check is not None:
            fields.append((name, where, None if check is _check_string else check))

    def record(value: Any, p: str, out: list[Problem], ctx: _Context) -> None:
        if type(value) is not dict and not isinstance(value, Mapping):  # the exact type first: abc checks are slow
            return
        limit = ctx.max_string_bytes
        static = p == path  # paths are static except under arrays; rebuild only there
        for name, where, check in fields:
            item = value.get(name)
            if check is None:  # a string: _check_string's own first test, without the call
                if isinstance(item, str) and len(item) * 4 > limit:
                    _check_string(item, where if static else _join(p, name), out, ctx)
            else:
                check(item, where if static else _join(p, name), out, ctx)

    return record


def _record_checked_as_such(schema: Any, names: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The record whose ``_compile_record`` check is all ``_compile(schema)`` amounts to, if it is one."""
    s = _resolve(schema, names)
    if isinstance(s, dict) and s.get("type") in ("record", "error"):
        return s
    if isinstance(s, list):
        judged = [b for b in s if _compile(b, names, path) is not None]
        if len(judged) == 1:
            return _record_checked_as_such(judged[0], names, path)
    return None


def _generate(top: Mapping[str, Any], names: Mapping[str, Any]) -> _Check:
    """The top-level record check as straight-line code: ``_compile_record(top, names, "")`` unrolled.

    Each record level outside an array becomes inline code with its paths as
    constants; anything else (arrays, maps, unions of several kinds, the named
    rules) is called as ``_compile`` built it. The checks run in the same order
    with the same paths, so the problems are the same list.
    """
    lines: list[str] = []
    consts: dict[str, Any] = {
        "Mapping": Mapping,
        "check_string": _check_string,
        "generic": _compile_record(top, names, ""),
    }
    count = [0]

    def fresh(prefix: str) -> str:
        count[0] += 1
        return f"{prefix}{count[0]}"

    def level(s: Mapping[str, Any], path: str, src: str, ind: int) -> None:
        pad = "    " * ind
        lines.append(f"{pad}if type({src}) is dict or isinstance({src}, Mapping):")
        lines.append(f"{pad}    pass")
        for f in s["fields"]:
            name, where, check, by_type = _field_check(f, names, path)
            if check is None:
                continue
            x = fresh("v")
            lines.append(f"{pad}    {x} = {src}.get({name!r})")
            inner = _record_checked_as_such(f["type"], names, where) if by_type else None
            if check is _check_string:
                lines.append(f"{pad}    if isinstance({x}, str) and len({x}) * 4 > limit:")
                lines.append(f"{pad}        check_string({x}, {where!r}, out, ctx)")
            elif inner is not None:
                level(inner, where, x, ind + 1)
            else:
                c = fresh("c")
                consts[c] = check
                lines.append(f"{pad}    {c}({x}, {where!r}, out, ctx)")

    level(top, "", "value", 1)
    source = "\n".join(
        [
            "def check(value, p, out, ctx):",
            "    if p:",  # event_problems passes ""; any other caller gets the closures
            "        return generic(value, p, out, ctx)",
            "    limit = ctx.max_string_bytes",
            *lines,
        ]
    )
    exec(compile(source, "<validation plan>", "exec"), consts)  # noqa: S102 - our own generated code
    return cast("_Check", consts["check"])


@lru_cache(maxsize=64)
def _plan(event_type: str) -> _Check | None:
    try:
        schema = load_schema(event_type)
    except (FileNotFoundError, ValueError):
        return None
    names = _named_types(schema)
    return _generate(_resolve(schema, names), names)


def event_problems(
    event_type: str, record: Mapping[str, Any], now: datetime, limits: Limits = Limits()
) -> list[Problem]:
    """Every plausibility problem of a decoded record, in field order; [] when it is plausible.

    ``record`` is what ``Catalogue.decode`` returns (timestamps tz-aware, dates as
    date). Values of the wrong type are left to the schema check and never raise.
    """
    plan = _plan(event_type) if isinstance(event_type, str) else None
    if plan is None:
        return [Problem("(event type)", f"unknown event type {str(event_type)[:40]!r}")]
    if not isinstance(record, Mapping):
        return [Problem("(record)", f"expected a record, got {type(record).__name__}")]
    key = (now, now.tzinfo, now.fold, limits.max_string_bytes)  # equal times may differ in fold
    last_key, last_ctx = _last_context
    if last_key == key and last_ctx is not None:  # a processor judges a whole batch against one `now`
        ctx = last_ctx
    else:
        ctx = _context(now, limits)
        _remember((key, ctx))
    out: list[Problem] = []
    plan(record, "", out, ctx)
    return out


def _context(now: datetime, limits: Limits) -> _Context:
    if now.tzinfo is None or now.utcoffset() is None:
        now = now.replace(tzinfo=UTC)
    try:
        utc = now.astimezone(UTC)
    except OverflowError:  # a `now` at the very edge of the calendar (only a fuzzer passes one)
        utc = datetime.min.replace(tzinfo=UTC) if now.year < 2 else datetime.max.replace(tzinfo=UTC)
    return _Context(
        now=utc,
        latest_birth=(utc + LATEST_ZONE).date() if utc < datetime.max.replace(tzinfo=UTC) - LATEST_ZONE else date.max,
        today=utc.date(),
        latest_timestamp=utc + FUTURE_TOLERANCE
        if utc < datetime.max.replace(tzinfo=UTC) - FUTURE_TOLERANCE
        else datetime.max.replace(tzinfo=UTC),
        max_string_bytes=limits.max_string_bytes,
    )


# The context of the last (now, limits) seen: one slot, replaced whole, so threads cannot tear it.
_last_context: tuple[Any, _Context | None] = (None, None)


def _remember(entry: tuple[Any, _Context]) -> None:
    global _last_context
    _last_context = entry


def size_problem(payload: bytes, limits: Limits = Limits()) -> Problem | None:
    """A Problem when the encoded event is over ``max_event_bytes``, else None."""
    size = len(payload)
    if size > limits.max_event_bytes:
        return Problem("(record)", f"encoded event is {size} bytes, over the limit of {limits.max_event_bytes} bytes")
    return None
