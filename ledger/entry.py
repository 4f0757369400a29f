"""The ledger entry, its fields defined once: by schemas/disclosure.avsc, read here.

Why: an entry is a draft (EntryDraft), a stored entry read back (StoredEntry), a row
of ledger_entries (ledger/tables.py; append's COPY and INSERT) and a leaf, the Avro
encoding of the schema that is hashed (ledger/leaf_codec.py). The schema is the one
list of its fields, in order, with their types; FIELDS is read from it, and

- the code turning one representation into another is compiled from FIELDS at
  import, as leaf_codec compiles the encoder: a draft's leaf bytes (canonical_bytes),
  its row with its hashes (write_row, append's hot path), a row's draft
  (stored_entry). Nothing names the fields one by one, so none can be left out;
- what is written out for its types, defaults, indexes and docs (EntryDraft,
  StoredEntry, the table's columns) is checked against FIELDS at import
  (agreement_problems): a field in one and not the others, or out of order, or of
  another type, stops ``import ledger`` naming it, before any entry is written.

The leaf's fields a draft lacks, seq and prev_hash, are ASSIGNED by append; the row
stores the leaf's two hashes after them (HASH_COLUMNS). A row stores an array field as
a JSON list (ARRAY_JSON says how) and the timestamp as a UTC datetime; the leaf has the
list and the timestamp's milliseconds.

The leaf bytes, hashes and chain are those the ledger always wrote (tests/integration/test_ledger.py
checks a ledger written by the fastavro code that preceded leaf_codec).
"""

from __future__ import annotations

import json
import re
import struct
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any, Protocol, cast

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, SmallInteger, String, Table

from ledger import merkle
from ledger.leaf_codec import REPEATING, SCHEMA, SCHEMA_PATH, FieldCompiler, encode_entry, encode_long, string_array
from ledger.tables import LedgerEntry

__all__ = [
    "ARRAY_JSON",
    "ASSIGNED",
    "COLUMNS",
    "DIGEST",
    "DRAFT_FIELDS",
    "FIELDS",
    "GENESIS_HASH",
    "HASH_COLUMNS",
    "NOT_COVERED",
    "OUTCOMES",
    "SCHEMA_PATH",
    "EntryDraft",
    "LeafField",
    "StoredEntry",
    "agreement_problems",
    "canonical_bytes",
    "check_draft",
    "entry_hash",
    "entry_hashes",
    "leaf_fields",
    "stored_entry",
    "to_millis",
    "write_row",
    "COPY_BINARY_HEADER",
    "COPY_BINARY_TRAILER",
    "PG_COPY_TYPES",
    "binary_timestamp",
    "pg_copy_type",
    "write_binary_row",
    "write_binary_rows",
]

# --------------------------------------------------------------------------- the definition

# The leaf's fields a draft does not carry: append numbers and chains the entry.
ASSIGNED = ("seq", "prev_hash")
# Stored after the leaf's fields: SHA-256 of the leaf (the chain link) and its RFC 9162 leaf hash.
HASH_COLUMNS = ("entry_hash", "leaf_hash")
# How a row stores each array field: a JSON list, ASCII-escaped (True) or as written
# (False: subject keys, so SQL LIKE finds them). A new array field must be given here.
ARRAY_JSON: Mapping[str, bool] = {"fields": True, "subjects": False}

GENESIS_HASH = bytes(32)  # prev_hash of seq 1
NOT_COVERED = "NOT_COVERED"  # an event no agreement in force covers, recorded with no recipient (I2)
DIGEST = re.compile("[0-9a-f]{64}")  # an event digest: hex SHA-256

# The kinds of field the schema's types come down to, and the Python type of each.
_PYTHON_TYPE: Mapping[str, Any] = {
    "long": int,
    "int": int,
    "string": str,
    "enum": str,
    "array": tuple[str, ...],
    "timestamp": datetime,
    "fixed": bytes,
}


@dataclass(frozen=True)
class LeafField:
    """One field of schemas/disclosure.avsc as the ledger uses it."""

    name: str
    kind: str  # a key of _PYTHON_TYPE: long, int, string, enum, array (of strings), timestamp (millis), fixed
    nullable: bool  # a union with null
    symbols: tuple[str, ...] = ()  # an enum's
    size: int = 0  # a fixed's

    @property
    def python_type(self) -> Any:
        t = _PYTHON_TYPE[self.kind]
        return t | None if self.nullable else t


def _field(f: Mapping[str, Any]) -> LeafField:
    name, avro, nullable = f["name"], f["type"], False
    if isinstance(avro, list):
        if len(avro) != 2 or avro[0] != "null":
            raise NotImplementedError(f"field {name}: only a union [null, T] is understood, not {avro!r}")
        nullable, avro = True, avro[1]
    if isinstance(avro, str) and avro in ("long", "int", "string"):
        return LeafField(name, avro, nullable)
    if isinstance(avro, dict):
        t = avro.get("type")
        if t == "long" and avro.get("logicalType") == "timestamp-millis":
            return LeafField(name, "timestamp", nullable)
        if t == "enum":
            return LeafField(name, "enum", nullable, symbols=tuple(avro["symbols"]))
        if t == "fixed":
            return LeafField(name, "fixed", nullable, size=int(avro["size"]))
        if t == "array" and avro.get("items") == "string":
            return LeafField(name, "array", nullable)
    raise NotImplementedError(f"field {name}: Avro type {avro!r} is not one the ledger stores (ledger/entry.py)")


def leaf_fields(schema: Mapping[str, Any]) -> tuple[LeafField, ...]:
    """The fields of a leaf schema, in order (NotImplementedError for a type the ledger does not store)."""
    return tuple(_field(f) for f in schema["fields"])


FIELDS = leaf_fields(SCHEMA)
DRAFT_FIELDS = tuple(f for f in FIELDS if f.name not in ASSIGNED)
# ledger_entries' columns, in order: the leaf's fields, then its hashes.
COLUMNS = (*(f.name for f in FIELDS), *HASH_COLUMNS)
OUTCOMES = frozenset(next(f.symbols for f in FIELDS if f.name == "outcome"))


# --------------------------------------------------------------------------- the entry


class _Symbol(Protocol):
    """An enum member: the entry stores its value (``_value_``, a plain attribute; ``.value`` is a property)."""

    _value_: Any


class AgreementTerms(Protocol):
    """What an entry records of the agreement a decision applied (agreements.model.Agreement)."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def purpose(self) -> _Symbol: ...
    @property
    def legal_basis(self) -> str: ...
    @property
    def consent_mode(self) -> _Symbol: ...


class DecisionParts(Protocol):
    """A sharing decision as an entry records it (accord.sharing.decide.Decision)."""

    @property
    def disclosure_id(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def event_type(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def recipient(self) -> str: ...
    @property
    def agreement(self) -> AgreementTerms: ...
    @property
    def outcome(self) -> _Symbol: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def fields(self) -> tuple[str, ...]: ...
    @property
    def consent_version(self) -> int: ...
    @property
    def subject_key(self) -> str: ...


@dataclass(frozen=True)
class EntryDraft:
    """A decision to record; the ledger assigns seq and the hashes.

    Its fields are the schema's but seq and prev_hash, in the schema's order (checked at
    import), so they may be given positionally.
    """

    disclosure_id: str
    event_id: str
    event_type: str
    provider: str
    recipient: str
    agreement_id: str
    agreement_version: int
    purpose: str
    legal_basis: str
    outcome: str
    reason: str | None
    fields: tuple[str, ...]
    consent_mode: str
    consent_version: int
    subject_key: str
    decided_at: datetime  # tz-aware; stored and hashed at millisecond precision, in UTC
    refers_to: str | None = None  # the disclosure a retraction (or receipt) is about
    # Hex SHA-256 of the event's bytes as received (the Kafka record value), so a replay
    # tells the same event from a different one reusing its id; "" when not from an event.
    event_digest: str = ""
    subjects: tuple[str, ...] = ()  # the event's other subject keys besides subject_key

    @classmethod
    def of_decision(
        cls, d: DecisionParts, decided_at: datetime, event_digest: str = "", subjects: tuple[str, ...] = ()
    ) -> EntryDraft:
        """The entry recording a sharing decision, decided at ``decided_at`` about an event
        with that digest and those other subjects."""
        a = d.agreement
        # ``_value_`` is the enum member's plain attribute; ``.value`` goes through a property
        # (one of the larger per-decision costs left in the processor's profile). _new_draft is
        # __init__ without its 19 object.__setattr__ calls (see there), given its arguments by
        # position, in field order: 18 keywords cost another microsecond. A subclass gets its own __init__.
        return (_new_draft if cls is EntryDraft else cls)(
            d.disclosure_id,
            d.event_id,
            d.event_type,
            d.provider,
            d.recipient,
            a.id,  # agreement_id
            a.version,  # agreement_version
            a.purpose._value_,  # purpose
            a.legal_basis,
            d.outcome._value_,  # outcome
            d.reason,
            d.fields,
            a.consent_mode._value_,  # consent_mode
            d.consent_version,
            d.subject_key,
            decided_at,
            None,  # refers_to
            event_digest,
            subjects,
        )

    @classmethod
    def not_covered(
        cls,
        disclosure_id: str,
        event_id: str,
        event_type: str,
        provider: str,
        subject_key: str,
        consent_version: int,
        decided_at: datetime,
        event_digest: str = "",
        subjects: tuple[str, ...] = (),
    ) -> EntryDraft:
        """The entry of an event no agreement in force covers: no recipient, agreement or fields (I2)."""
        return (_new_draft if cls is EntryDraft else cls)(  # by position, in field order, as in of_decision
            disclosure_id,
            event_id,
            event_type,
            provider,
            "",  # recipient
            "",  # agreement_id
            0,  # agreement_version
            "",  # purpose
            "",  # legal_basis
            NOT_COVERED,  # outcome
            f"no agreement in force covers this {event_type} event from {provider}",  # reason
            (),  # fields
            "",  # consent_mode
            consent_version,
            subject_key,
            decided_at,
            None,  # refers_to
            event_digest,
            subjects,
        )


@dataclass(frozen=True)
class StoredEntry:
    """A ledger row read back: the draft as stored, its seq and its hashes."""

    seq: int
    draft: EntryDraft
    prev_hash: bytes
    entry_hash: bytes
    leaf_hash: bytes = b""  # RFC 9162 leaf hash as stored (ledger/merkle.py)


def check_draft(draft: EntryDraft) -> None:
    """Refuse a draft the ledger must not hold (ValueError; append then writes nothing of its batch)."""
    if draft.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {sorted(OUTCOMES)}, not {draft.outcome!r}")
    if not draft.disclosure_id or len(draft.disclosure_id) > 64:
        raise ValueError("disclosure_id must be 1 to 64 characters")
    if draft.event_digest and DIGEST.fullmatch(draft.event_digest) is None:
        raise ValueError("event_digest must be 64 lower-case hex digits (SHA-256) or empty")
    if draft.outcome == NOT_COVERED and (
        draft.recipient or draft.agreement_id or draft.agreement_version or draft.fields
    ):
        raise ValueError("a NOT_COVERED entry has no recipient, agreement or fields")
    decided_at = draft.decided_at
    if decided_at.tzinfo is None or decided_at.utcoffset() is None:
        raise ValueError("decided_at must be timezone-aware")


# --------------------------------------------------------------------------- checked against the definition


def _column_problem(f: LeafField, column: Any) -> str | None:
    """Why a column cannot hold a field as the ledger stores it (None when it can)."""
    t = column.type
    if column.nullable != f.nullable:
        return f"column {f.name} is {'' if column.nullable else 'not '}nullable, field {f.name} is" + (
            "" if f.nullable else " not"
        )
    if f.kind == "long":
        ok = isinstance(t, BigInteger)
    elif f.kind == "int":
        ok = isinstance(t, Integer) and not isinstance(t, (BigInteger, SmallInteger))
    elif f.kind == "string":
        ok = isinstance(t, String)
    elif f.kind == "enum":
        ok = isinstance(t, String) and (t.length is None or t.length >= max(map(len, f.symbols)))
    elif f.kind == "array":  # a JSON list, of any length
        ok = isinstance(t, String) and t.length is None
    elif f.kind == "timestamp":
        ok = isinstance(t, DateTime) and bool(t.timezone)
    else:  # fixed
        ok = isinstance(t, LargeBinary) and t.length == f.size
    return None if ok else f"column {f.name} is {t!r}, which cannot store a field of kind {f.kind}"


def _differ(have: Sequence[str], want: Sequence[str]) -> str:
    """How a list of names differs from the one wanted ("" when it does not)."""
    if list(have) == list(want):
        return ""
    missing = [n for n in want if n not in have]
    extra = [n for n in have if n not in want]
    parts = [f"no {', '.join(missing)}"] if missing else []
    parts += [f"{', '.join(extra)} not in the schema"] if extra else []
    return "; ".join(parts) or f"{', '.join(have)} out of order (want {', '.join(want)})"


def agreement_problems(
    schema: Mapping[str, Any], draft: type = EntryDraft, stored: type = StoredEntry, table: Table | None = None
) -> list[str]:
    """What in EntryDraft, StoredEntry and the ledger_entries table disagrees with the leaf schema.

    Each must have the schema's fields (the draft all but ASSIGNED), in its order, of its
    types (the draft's annotations, the table's column types and nullability). Empty
    when they agree.
    """
    problems: list[str] = []
    try:
        leaf = leaf_fields(schema)
    except NotImplementedError as exc:
        return [str(exc)]
    if missing := [n for n in ASSIGNED if n not in {f.name for f in leaf}]:
        problems.append(f"the schema has no {', '.join(missing)} field (ASSIGNED)")
    names = [f.name for f in leaf]
    if len(set(names)) != len(names):
        problems.append("the schema names a field twice")
    if unknown := sorted(set(ARRAY_JSON) ^ {f.name for f in leaf if f.kind == "array"}):
        problems.append(f"ARRAY_JSON and the schema's array fields differ: {', '.join(unknown)}")
    if bad := [f.name for f in leaf if f.nullable and f.kind in ("array", "timestamp", "fixed")]:
        problems.append(f"a nullable {', '.join(bad)} is not stored (ledger/entry.py)")
    if sum(f.kind == "timestamp" for f in leaf) > 1:  # write_row takes one timestamp's (utc, ms)
        problems.append("more than one timestamp field: ledger/append.py _rows converts one")

    # EntryDraft: the schema's fields but ASSIGNED, in order, of their types
    want = [f for f in leaf if f.name not in ASSIGNED]
    have = dataclass_fields(draft)
    if difference := _differ([f.name for f in have], [f.name for f in want]):
        problems.append(
            f"{draft.__name__}'s fields are not the schema's (other than {', '.join(ASSIGNED)}): {difference}"
        )
    else:
        hints = typing.get_type_hints(draft)
        for f in want:
            if hints[f.name] != f.python_type:
                problems.append(f"{draft.__name__}.{f.name} is {hints[f.name]}, the schema's field is {f.python_type}")

    # StoredEntry: seq, the draft, prev_hash and the hashes
    stored_names = [f.name for f in dataclass_fields(stored)]
    expected = [*(n for n in names if n in ASSIGNED), *HASH_COLUMNS]
    if difference := _differ([n for n in stored_names if n != "draft"], expected):
        problems.append(f"{stored.__name__}'s fields are not draft, {', '.join(expected)}: {difference}")
    elif "draft" not in stored_names:
        problems.append(f"{stored.__name__} has no draft field")

    # the table: the schema's fields then the hashes, each column able to hold its field
    columns = list((table if table is not None else cast(Table, LedgerEntry.__table__)).columns)
    if difference := _differ([c.name for c in columns], [*names, *HASH_COLUMNS]):
        problems.append(f"the table's columns are not the schema's fields then {', '.join(HASH_COLUMNS)}: {difference}")
    else:
        for f, c in zip(leaf, columns, strict=False):
            if problem := _column_problem(f, c):
                problems.append(problem)
        for c in columns[len(leaf) :]:
            if not isinstance(c.type, LargeBinary) or c.type.length != 32 or c.nullable:
                problems.append(f"column {c.name} must be LargeBinary(32), not nullable")
    return problems


if _problems := agreement_problems(SCHEMA):
    raise RuntimeError(f"the ledger entry disagrees with {SCHEMA_PATH.name}: " + "; ".join(_problems))


# --------------------------------------------------------------------------- compiled from the definition

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_JSON_KEPT = 4096  # stored JSON lists kept per array field, by value, before a cache starts over


def to_millis(dt: datetime) -> datetime:
    """dt in UTC, truncated to whole milliseconds (what the ledger stores and hashes)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError("decided_at must be timezone-aware")
    dt = dt.astimezone(UTC)
    return dt.replace(microsecond=dt.microsecond - dt.microsecond % 1000)


def _epoch_millis(dt: datetime) -> int:
    # Integer arithmetic; never a float, never a naive datetime (local time).
    return (to_millis(dt) - _EPOCH) // _MS


def _json_list(ascii_only: bool) -> tuple[dict[tuple[str, ...], str], Callable[[Sequence[str]], str]]:
    """(cache, store): a stored JSON list of strings, kept by value (a batch repeats a handful)."""
    cache: dict[tuple[str, ...], str] = {}

    def store(values: Sequence[str]) -> str:
        stored = json.dumps(list(values), separators=(",", ":"), ensure_ascii=ascii_only)
        if isinstance(values, tuple):
            if len(cache) >= _JSON_KEPT:
                cache.clear()
            cache[values] = stored
        return stored

    return cache, store


def _strings(stored: str, column: str) -> tuple[str, ...]:
    values = json.loads(stored)
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{column} is not a JSON list of strings")
    return tuple(values)


def _utc(stored: datetime) -> datetime:
    if stored.tzinfo is None:  # SQLite keeps no offset; the ledger stores UTC
        stored = stored.replace(tzinfo=UTC)
    return stored.astimezone(UTC)


def _compile(name: str, params: Sequence[str], body: Sequence[str], namespace: dict[str, Any], doc: str) -> Any:
    """A function made from its source lines; ``.source`` keeps them for a reader."""
    source = f"def {name}({', '.join(params)}):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, f"<ledger.entry {name}>", "exec"), namespace)  # noqa: S102
    function = namespace[name]
    function.__doc__ = doc
    function.source = source
    return function


def _canonical_bytes_source(leaf: Sequence[LeafField]) -> list[str]:
    body = []
    for f in leaf:
        if f.name in ASSIGNED and f.kind == "fixed":
            body += [f"if len({f.name}) != {f.size}:", f"    raise ValueError('{f.name} must be {f.size} bytes')"]
    args = []
    for f in leaf:
        if f.name in ASSIGNED:
            args.append(f"bytes({f.name})" if f.kind == "fixed" else f.name)
        else:
            args.append(f"_millis(draft.{f.name})" if f.kind == "timestamp" else f"draft.{f.name}")
    return [*body, f"return _encode({', '.join(args)})"]


def _write_row_source(leaf: Sequence[LeafField]) -> tuple[list[str], list[str]]:
    """(params, body) of write_row: the leaf, its hashes and the row, arrays' JSON from their caches."""
    params = ["write", "draft", *(f.name for f in leaf if f.name in ASSIGNED)]
    params += [p for f in leaf if f.kind == "timestamp" for p in (f"{f.name}_utc", f"{f.name}_ms")]
    body: list[str] = []
    leaf_args, row = [], []
    for f in leaf:
        v = f.name if f.name in ASSIGNED else f"draft.{f.name}"
        if f.kind == "timestamp":
            leaf_args.append(f"{f.name}_ms")
            row.append(f"{f.name}_utc")
        elif f.kind == "array":
            v = f"v_{f.name}"
            body += [
                f"{v} = draft.{f.name}",
                f"j_{f.name} = _json_{f.name}.get({v}) if {v}.__class__ is tuple else None",
                f"if j_{f.name} is None:",
                f"    j_{f.name} = _store_{f.name}({v})",
            ]
            leaf_args.append(v)
            row.append(f"j_{f.name}")
        else:
            leaf_args.append(v)
            row.append(v)
    body += [
        f"leaf = _encode({', '.join(leaf_args)})",
        "entry_hash = _sha256(leaf).digest()",
        f"write(({', '.join(row)}, entry_hash, _sha256(b'\\x00' + leaf).digest()))",
        "return entry_hash",
    ]
    return params, body


# PostgreSQL's binary COPY (https://www.postgresql.org/docs/current/sql-copy.html, "Binary
# Format"): a signature and header, then per row its field count (int16) and per field
# its length (int32, -1 for NULL) and bytes in the column type's binary form, then -1
# (int16). Forms used: int8 and int4 big-endian; text and varchar the UTF-8 bytes (the
# server checks the encoding and a varchar's length); bytea the bytes; timestamptz
# int64 microseconds since 2000-01-01 UTC.
COPY_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags 0, no header extension
COPY_BINARY_TRAILER = b"\xff\xff"
_PG_EPOCH_MS = 946_684_800_000  # 2000-01-01T00:00:00Z in milliseconds since 1970
_PK_I = struct.Struct(">i").pack
_PK_II = struct.Struct(">ii").pack
_PK_IQ = struct.Struct(">iq").pack
_LEN4: tuple[bytes, ...] = tuple(_PK_I(n) for n in range(4096))  # the length word of a short value
_NULL = _PK_I(-1)


def pg_copy_type(column: Any) -> str:
    """The PostgreSQL type whose binary form a ledger column takes in COPY (by its SQLAlchemy type)."""
    t = column.type
    if isinstance(t, BigInteger):
        return "int8"
    if isinstance(t, Integer):
        return "int4"
    if isinstance(t, DateTime):
        return "timestamptz" if t.timezone else "timestamp"
    if isinstance(t, LargeBinary):
        return "bytea"
    if isinstance(t, String):  # Text too; varchar(n) has text's binary form, its length checked on receipt
        return "text"
    raise TypeError(f"no COPY type for ledger column {column.name} ({t!r})")


def binary_timestamp(ms: int) -> bytes:
    """A timestamptz field of binary COPY (its length word and value) for milliseconds since 1970."""
    return _PK_IQ(8, (ms - _PG_EPOCH_MS) * 1000)


def _stamp(at: datetime) -> tuple[bytes, bytes]:
    """A timestamp's (leaf bytes, binary COPY field): write_binary_rows' and the C writer's one
    conversion, once a run of equal times (refuses a naive one)."""
    utc = at if at.tzinfo is UTC and not at.microsecond % 1000 else to_millis(at)
    ms = (utc - _EPOCH) // _MS
    return encode_long(ms), binary_timestamp(ms)


def _binary_json_list(ascii_only: bool) -> tuple[dict[tuple[str, ...], bytes], Callable[[Sequence[str]], bytes]]:
    """(cache, store): a JSON list of strings as a text field of binary COPY, kept by value."""
    cache: dict[tuple[str, ...], bytes] = {}

    def store(values: Sequence[str]) -> bytes:
        data = json.dumps(list(values), separators=(",", ":"), ensure_ascii=ascii_only).encode()
        stored = _PK_I(len(data)) + data
        if isinstance(values, tuple):
            if len(cache) >= _JSON_KEPT:
                cache.clear()
            cache[values] = stored
        return stored

    return cache, store


def _row_field(i: int, f: LeafField, pg_type: str) -> tuple[list[str], list[str]]:
    """(statements, parts) of field ``f``'s binary COPY field, from the local ``v{i}``.

    Run after the leaf's code for the same value, whose locals it reuses: a string's
    UTF-8 bytes ``b{i}`` and their length ``n{i}`` (FieldCompiler.field's names).
    """
    v = f"v{i}"
    length = f"(_LEN4[n{i}] if n{i} < 4096 else _PK_I(n{i}))"
    if f.kind == "timestamp" and pg_type == "timestamptz":
        return [], [f"{f.name}_bin"]  # given, as the batch's drafts share it
    if f.kind == "array" and pg_type == "text":
        return [
            f"c{i} = _jbin_{f.name}.get({v}) if {v}.__class__ is tuple else None",
            f"if c{i} is None:",
            f"    c{i} = _jbin_store_{f.name}({v})",
        ], [f"c{i}"]
    if f.kind in ("long", "int") and pg_type in ("int8", "int4") and not f.nullable:
        return [], [f"_PK_IQ(8, {v})" if pg_type == "int8" else f"_PK_II(4, {v})"]
    if f.kind == "string" and pg_type == "text":
        if not f.nullable:
            return [], [length, f"b{i}"]
        return [f"c{i} = _NULL if {v} is None else {length} + b{i}"], [f"c{i}"]
    if f.kind == "enum" and pg_type == "text" and not f.nullable:
        return [f"b{i} = {v}.encode()", f"n{i} = len(b{i})"], [length, f"b{i}"]
    if f.kind == "fixed" and pg_type == "bytea" and not f.nullable:
        return [], [f"_LEN4[{f.size}]", v]  # its size checked by the leaf's code
    raise TypeError(f"no binary COPY form compiled for field {f.name} ({f.kind}) as {pg_type}")


def _arrays(name: str, ascii_only: bool) -> tuple[dict[tuple[str, ...], tuple[bytes, bytes]], Callable[[Any], Any]]:
    """(cache, store): an array field's (leaf bytes, binary COPY field), kept by value (a batch repeats a handful)."""
    cache: dict[tuple[str, ...], tuple[bytes, bytes]] = {}
    _, row = _binary_json_list(ascii_only)

    def store(values: Any) -> tuple[bytes, bytes]:
        encoded = (string_array(values), row(values))
        if values.__class__ is tuple:
            if len(cache) >= _JSON_KEPT:
                cache.clear()
            cache[values] = encoded
        return encoded

    return cache, store


def _binary_row_source(
    leaf: Sequence[LeafField], pg_types: Sequence[str], run: Sequence[str], fc: FieldCompiler
) -> tuple[list[str], list[str], list[str]]:
    """(params, body, memo miss body) of write_binary_row: the leaf, its hashes and its row
    as binary COPY bytes, in one pass over the draft's fields.

    Each field is read once into a local ``v{i}`` and encoded for the leaf by the code
    leaf_codec compiles (FieldCompiler: the very code of encode_entry), then for the row,
    reusing a string's UTF-8 bytes. The fields of ``run`` (consecutive in the schema: the
    decision's context, which repeats from entry to entry, as encode_entry's memo
    assumes) are encoded once per distinct value: their (leaf bytes, row bytes) are kept
    under the tuple of their values and their int fields' classes, so that a float or a
    bool equal to an int never takes its bytes; a key that cannot be hashed is encoded
    every time. The leaf's code runs before the row's, so a value the leaf refuses is
    refused as encode_entry refuses it.
    """
    params = ["write", "draft", *(f.name for f in leaf if f.name in ASSIGNED)]
    params += [p for f in leaf if f.kind == "timestamp" for p in (f"{f.name}_bin", f"{f.name}_ms")]
    names = [f.name for f in leaf]
    first = names.index(run[0]) if run else len(leaf)
    end = first + len(run)
    if list(names[first:end]) != list(run):
        raise ValueError(f"the memoised run is not consecutive fields of the schema: {list(run)}")
    avro = SCHEMA["fields"]
    body: list[str] = []
    for i, f in enumerate(leaf):
        if f.name in ASSIGNED:
            body.append(f"v{i} = {f.name}")
        elif f.kind == "timestamp":
            body.append(f"{f.name}_avro = _long({f.name}_ms)")  # write_binary_rows: once a run of equal times
        else:
            body.append(f"v{i} = draft.{f.name}")
    leaf_parts: list[str] = []
    row_code: list[str] = []
    row_parts: list[str] = []
    for i, (f, pg_type) in enumerate(zip(leaf, pg_types, strict=False)):
        if first < i < end:
            continue
        if f.kind == "timestamp":  # the batch's drafts share it: its leaf piece is made once a run
            leaf_parts.append(f"{f.name}_avro")
            row_parts.append(f"{f.name}_bin")
            continue
        if f.kind == "array":  # a handful of values: (leaf bytes, row bytes) kept by value
            body += [
                f"s{i} = _arrays_{f.name}.get(v{i}) if v{i}.__class__ is tuple else None",
                f"if s{i} is None:",
                f"    s{i} = _arrays_store_{f.name}(v{i})",
            ]
            leaf_parts.append(f"s{i}[0]")
            row_parts.append(f"s{i}[1]")
            continue
        if i == first:
            key = [f"v{k}" for k in range(first, end)]
            key += [f"v{k}.__class__" for k in range(first, end) if leaf[k].kind in ("int", "long")]
            body += [
                f"k{i} = ({', '.join(key)},)",
                "try:",
                f"    m{i} = _ROW_RUN.get(k{i})",
                "except TypeError:  # unhashable: encoded, not kept",
                f"    m{i} = k{i} = None",
                f"if m{i} is None:",
                f"    m{i} = _row_run(k{i}, {', '.join(f'v{k}' for k in range(first, end))})",
            ]
            leaf_parts.append(f"m{i}[0]")
            row_parts.append(f"m{i}[1]")
            continue
        prelude, parts = fc.field(i, f"v{i}", avro[i]["type"])
        body += prelude
        leaf_parts += parts
        code, parts = _row_field(i, f, pg_type)
        row_code += code
        row_parts += parts
    body += [
        f"leaf = b''.join(({', '.join(leaf_parts)},))",
        "entry_hash = _sha256(leaf).digest()",
        *row_code,
        f"write(b''.join((_PK_NFIELDS, {', '.join(row_parts)}, _LEN4[32], entry_hash, _LEN4[32], "
        "_sha256(b'\\x00' + leaf).digest())))",  # HASH_COLUMNS: bytea, SHA-256
        "return entry_hash",
    ]
    # The memo's miss: the run's leaf bytes and row bytes, kept under the key.
    miss: list[str] = []
    miss_leaf: list[str] = []
    miss_code: list[str] = []
    miss_row: list[str] = []
    for i in range(first, end):
        prelude, parts = fc.field(i, f"v{i}", avro[i]["type"])
        miss += prelude
        miss_leaf += parts
        code, parts = _row_field(i, leaf[i], pg_types[i])
        miss_code += code
        miss_row += parts
    miss += [
        f"leaf = b''.join(({', '.join(miss_leaf)},))",
        *miss_code,
        f"encoded = (leaf, b''.join(({', '.join(miss_row)},)))",
        "if key is not None:",
        "    if len(_ROW_RUN) >= _JSON_KEPT:",
        "        _ROW_RUN.clear()",
        "    _ROW_RUN[key] = encoded",
        "return encoded",
    ]
    return params, body, miss


def _draft_of_source(leaf: Sequence[LeafField]) -> list[str]:
    args = []
    for f in leaf:
        if f.name in ASSIGNED:
            continue
        if f.kind == "array":
            args.append(f"_strings(row.{f.name}, '{f.name}')")
        elif f.kind == "timestamp":
            args.append(f"_utc(row.{f.name})")
        else:
            args.append(f"row.{f.name}")
    return [f"return _new_draft({', '.join(args)})"]


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {
        "_encode": encode_entry,
        "_millis": _epoch_millis,
        "_sha256": sha256,
        "_strings": _strings,
        "_utc": _utc,
    }
    for name, ascii_only in ARRAY_JSON.items():
        ns[f"_json_{name}"], ns[f"_store_{name}"] = _json_list(ascii_only)
        ns[f"_jbin_{name}"], ns[f"_jbin_store_{name}"] = _binary_json_list(ascii_only)
        ns[f"_arrays_{name}"], ns[f"_arrays_store_{name}"] = _arrays(name, ascii_only)
    ns.update(
        _PK_I=_PK_I, _PK_II=_PK_II, _PK_IQ=_PK_IQ, _LEN4=_LEN4, _NULL=_NULL, _ROW_RUN=_ROW_RUN, _JSON_KEPT=_JSON_KEPT
    )
    ns["_PK_NFIELDS"] = struct.pack(">h", len(COLUMNS))
    ns.update(
        _OUTCOMES=OUTCOMES,
        _NOT_COVERED=NOT_COVERED,
        _DIGEST=DIGEST,
        _check_draft=check_draft,
        _stamp=_stamp,
    )
    return ns


_ROW_RUN: dict[Any, bytes] = {}  # write_binary_row's memo: the run's row bytes by its values
_NS = _namespace()

canonical_bytes: Callable[[int, EntryDraft, bytes], bytes] = _compile(
    "canonical_bytes",
    ["seq", "draft", "prev_hash"],
    _canonical_bytes_source(FIELDS),
    _NS,
    """The Avro binary encoding of the entry (schemas/disclosure.avsc): what is hashed.

    Encoded by the writer ledger/leaf_codec.py compiles from the schema: the same bytes
    as fastavro.schemaless_writer (tests/unit/test_leaf_codec.py). decided_at is hashed as
    its UTC milliseconds.
    """,
)

_write_params, _write_body = _write_row_source(FIELDS)
write_row: Callable[..., bytes] = _compile(
    "write_row",
    _write_params,
    _write_body,
    _NS,
    f"""The row of a numbered, chained draft to ``write``, in COLUMNS order; returns its entry_hash.

    ``write_row({", ".join(_write_params)})``: the timestamp given as its stored UTC
    datetime (to_millis) and its milliseconds, which a batch's drafts share, so its
    caller converts each once. Arrays are stored as JSON (ARRAY_JSON), kept by value.
    The draft is not checked (check_draft).
    """,
)

# The binary form of each column, in COLUMNS order (the table's order, checked above).
PG_COPY_TYPES: tuple[str, ...] = tuple(pg_copy_type(c) for c in cast(Table, LedgerEntry.__table__).columns)
_fc = FieldCompiler()
_binary_params, _binary_body, _miss_body = _binary_row_source(FIELDS, PG_COPY_TYPES, REPEATING, _fc)
_NS.update(_fc.constants)
_NS["_row_run"] = _compile(
    "row_run",
    ["key", *(f"v{FIELDS.index(f)}" for f in FIELDS if f.name in REPEATING)],
    _miss_body,
    _NS,
    "write_binary_row's memo miss: (leaf bytes, row bytes) of the repeating run, kept under key.",
)
write_binary_row: Callable[..., bytes] = _compile(
    "write_binary_row",
    _binary_params,
    _binary_body,
    _NS,
    f"""write_row's row as one row of binary COPY (PostgreSQL's binary form of each column); returns its entry_hash.

    ``write_binary_row({", ".join(_binary_params)})``: the same leaf and hashes as
    write_row, and the same stored values, as bytes ready for COPY ... (FORMAT BINARY)
    after COPY_BINARY_HEADER: what psycopg's write_row sends for write_row's tuple
    (tests/unit/test_entry_fields.py compares the two), built without a dumper call per
    column. The timestamp is given as its field's bytes (binary_timestamp) and its
    milliseconds, which a batch's drafts share. Text is encoded as UTF-8, so a
    connection must use that client encoding (ledger/append.py checks). The draft is not
    checked (check_draft).
    """,
)


def _binary_rows_source(leaf: Sequence[LeafField], body: Sequence[str]) -> list[str]:
    """write_binary_rows: check_draft's rules, the timestamp's conversion and write_binary_row's
    body in one loop over a batch (a call per entry costs more than its checks)."""
    (stamp,) = (f.name for f in leaf if f.kind == "timestamp")
    names = [f.name for f in leaf]
    did, outcome, digest = (f"v{names.index(n)}" for n in ("disclosure_id", "outcome", "event_digest"))
    entry = [line for line in body if line != "return entry_hash"]
    # The fields the checks read are read once, for them and for the entry.
    checked = {
        f"{v} = draft.{name}" for v, name in ((did, "disclosure_id"), (outcome, "outcome"), (digest, "event_digest"))
    }
    return [
        "checked_digest = ''",
        "cached = None",
        f"{stamp}_bin = {stamp}_avro = None",
        "for draft in drafts:",
        f"    {did} = draft.disclosure_id",
        f"    {outcome} = draft.outcome",
        f"    {digest} = draft.event_digest",
        f"    if {outcome} not in _OUTCOMES or not {did} or len({did}) > 64 or {outcome} == _NOT_COVERED:",
        "        _check_draft(draft)  # raises, or passes a valid NOT_COVERED",
        f"    if {digest} != checked_digest:  # one event's decisions share it: checked once a run",
        f"        if {digest} and _DIGEST.fullmatch({digest}) is None:",
        "            _check_draft(draft)",
        f"        checked_digest = {digest}",
        f"    at = draft.{stamp}",
        # Equal instants share a stored value; an equal one of another fold (an hour of a
        # clock turned back, compared within its zone as equal) does not.
        "    if at is not cached and (at != cached or at.fold != cached.fold):",
        "        cached = at",
        f"        {stamp}_avro, {stamp}_bin = _stamp(at)  # refuses a naive one",
        "    seq += 1",
        *(f"    {line}" for line in entry if line not in checked and not line.startswith(f"{stamp}_avro = ")),
        "    prev_hash = entry_hash",
        "return prev_hash",
    ]


write_binary_rows: Callable[..., bytes] = _compile(
    "write_binary_rows",
    ["write", "drafts", "seq", "prev_hash"],
    _binary_rows_source(FIELDS, _binary_body),
    _NS,
    """The binary COPY rows of drafts numbered seq + 1, seq + 2, ... and chained from prev_hash, each to ``write``; returns the last entry_hash.

    Each draft is checked as ledger/append.py's _rows checks it (check_draft raises
    ValueError for a draft the ledger must not hold; the batch must then not be
    written) and written as write_binary_row writes it. Every draft is written: a
    repeated disclosure_id is left to UNIQUE(disclosure_id) to refuse.
    """,
)


def _new_draft_source(cls: type) -> tuple[list[str], list[str], dict[str, Any]]:
    """(params, body, defaults) of a function making ``cls`` as its dataclass __init__ does, but cheaper.

    A frozen dataclass's __init__ stores each field through object.__setattr__ (frozen
    makes self.x = ... raise): 2.6 µs for EntryDraft's 19, against 0.5 µs to store them
    straight into a new instance's __dict__, in field order (so it stays a key-sharing
    dict, the size __init__'s is). The instance is the same: same fields and values,
    still frozen (its __setattr__ is untouched), equal, hashed and shown alike. Made from
    the dataclass's fields, so none can be left out; a __post_init__ would still run.
    """
    params, body, defaults = [], ["self = _new(_cls)", "d = self.__dict__"], {}
    for f in dataclass_fields(cls):
        if f.default_factory is not MISSING or not f.init:
            raise NotImplementedError(f"{cls.__name__}.{f.name}: a default_factory or init=False field is not built")
        if f.default is MISSING:
            params.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"d[{f.name!r}] = {f.name}")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    return params, [*body, "return self"], {"_new": object.__new__, "_cls": cls, **defaults}


_new_params, _new_body, _new_ns = _new_draft_source(EntryDraft)
# The drafts the processor makes (of_decision, not_covered) and reads back (_draft_of) are
# built by this: EntryDraft(...) cost 9.7% of its CPU with Decision(...) (py-spy).
_new_draft: Callable[..., EntryDraft] = _compile(
    "new_draft",
    _new_params,
    _new_body,
    _new_ns,
    "EntryDraft(...) with the same arguments, without __init__'s per-field object.__setattr__.",
)
_NS["_new_draft"] = _new_draft

_draft_of: Callable[[Any], EntryDraft] = _compile(
    "draft_of", ["row"], _draft_of_source(FIELDS), _NS, "The EntryDraft a ledger_entries row stores."
)


def entry_hash(seq: int, draft: EntryDraft, prev_hash: bytes) -> bytes:
    return sha256(canonical_bytes(seq, draft, prev_hash)).digest()


def entry_hashes(seq: int, draft: EntryDraft, prev_hash: bytes) -> tuple[bytes, bytes]:
    """(entry_hash, leaf_hash) from one encoding: the chain link and the Merkle leaf hash."""
    leaf = canonical_bytes(seq, draft, prev_hash)
    return sha256(leaf).digest(), merkle.leaf_hash(leaf)


def stored_entry(row: Any) -> StoredEntry:
    """A ledger_entries row (any object with the column attributes) as a StoredEntry.

    Raises ValueError when the row cannot be decoded (e.g. fields is not a JSON list).
    """
    leaf = getattr(row, "leaf_hash", None)
    return StoredEntry(
        row.seq, _draft_of(row), bytes(row.prev_hash), bytes(row.entry_hash), bytes(leaf) if leaf else b""
    )


# --------------------------------------------------------------------------- the rows in C

# ledger/_binary_rows.c's kinds of field (the names of its constants), by (leaf kind,
# nullable, COPY type, ASSIGNED).
_NATIVE_KINDS: Mapping[tuple[str, bool, str, bool], str] = {
    ("long", False, "int8", True): "SEQ",
    ("fixed", False, "bytea", True): "PREV",  # 32 bytes
    ("string", False, "text", False): "STRING",
    ("string", True, "text", False): "NSTRING",
    ("long", False, "int8", False): "LONG8",
    ("int", False, "int8", False): "LONG8",
    ("int", False, "int4", False): "INT4",
    ("enum", False, "text", False): "ENUM",
    ("array", False, "text", False): "ARRAY",
    ("timestamp", False, "timestamptz", False): "STAMP",
}


def _native_plan(
    leaf: Sequence[LeafField], pg_types: Sequence[str], kinds: Mapping[str, int]
) -> tuple[tuple[Any, ...], ...] | None:
    """The schema as ledger/_binary_rows.c takes it: (kind, attribute, table, store) per field, in
    order, ``kinds`` its constants by name; None if a field is of a kind it does not write (then
    the rows are written in Python)."""
    if HASH_COLUMNS != ("entry_hash", "leaf_hash"):  # the C writer ends a row with these two
        return None
    plan: list[tuple[int, str | None, Any, Any]] = []
    for i, (f, pg_type) in enumerate(zip(leaf, pg_types, strict=False)):
        name = _NATIVE_KINDS.get((f.kind, f.nullable, pg_type, f.name in ASSIGNED))
        if name is None or (name == "PREV" and f.size != 32):
            return None
        if name == "ENUM":  # symbol -> leaf bytes: leaf_codec's table for field i
            plan.append((kinds[name], f.name, _NS[f"_E{i}"], None))
        elif name == "ARRAY":  # values -> (leaf bytes, row bytes), kept by value
            plan.append((kinds[name], f.name, _NS[f"_arrays_{f.name}"], _NS[f"_arrays_store_{f.name}"]))
        else:  # the arguments (seq, prev_hash) and the batch's timestamp are given, not read
            plan.append((kinds[name], None if name in ("SEQ", "PREV", "STAMP") else f.name, None, None))
    return tuple(plan)


def _native_rows() -> Callable[[Sequence[EntryDraft], int, bytes], tuple[bytes, bytes] | None] | None:
    try:
        from ledger import _binary_rows  # type: ignore[attr-defined]  # built by setup.py where a compiler is
    except ImportError:
        return None
    try:
        kinds = {n: getattr(_binary_rows, n) for n in set(_NATIVE_KINDS.values())}
    except AttributeError:  # a module built from an older ledger/_binary_rows.c: rebuild (pip install -e .)
        return None
    plan = _native_plan(FIELDS, PG_COPY_TYPES, kinds)
    if plan is None:
        return None
    (stamp,) = (f.name for f in FIELDS if f.kind == "timestamp")
    _binary_rows.configure(
        plan, check_draft, OUTCOMES, NOT_COVERED, _stamp, ("disclosure_id", "outcome", "event_digest", stamp)
    )
    return cast(Callable[[Sequence[EntryDraft], int, bytes], "tuple[bytes, bytes] | None"], _binary_rows.rows)


_NATIVE = _native_rows()
NATIVE_ROWS = _NATIVE is not None  # whether binary_rows writes in C here


def binary_rows(drafts: Sequence[EntryDraft], seq: int, prev_hash: bytes) -> tuple[bytes, bytes]:
    """write_binary_rows' rows as one bytes, and the last entry_hash: in C where it was built.

    The C writer (ledger/_binary_rows.c) writes the same bytes for the drafts it is sure
    of and declines the rest (a value of an unusual class or range, a draft check_draft
    must look at and refuses); write_binary_rows then writes the batch, or raises, as
    it always has.
    """
    if _NATIVE is not None:
        done = _NATIVE(drafts, seq, prev_hash)
        if done is not None:
            return done
    rows: list[bytes] = []
    last = write_binary_rows(rows.append, drafts, seq, prev_hash)
    return b"".join(rows), last
