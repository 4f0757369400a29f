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
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from typing import Any, Protocol, cast

from sqlalchemy import BigInteger, DateTime, Integer, LargeBinary, SmallInteger, String, Table

from ledger import merkle
from ledger.leaf_codec import SCHEMA, SCHEMA_PATH, encode_entry
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
        # (one of the larger per-decision costs left in the processor's profile).
        return cls(
            disclosure_id=d.disclosure_id,
            event_id=d.event_id,
            event_type=d.event_type,
            provider=d.provider,
            recipient=d.recipient,
            agreement_id=a.id,
            agreement_version=a.version,
            purpose=a.purpose._value_,
            legal_basis=a.legal_basis,
            outcome=d.outcome._value_,
            reason=d.reason,
            fields=d.fields,
            consent_mode=a.consent_mode._value_,
            consent_version=d.consent_version,
            subject_key=d.subject_key,
            decided_at=decided_at,
            event_digest=event_digest,
            subjects=subjects,
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
        return cls(
            disclosure_id=disclosure_id,
            event_id=event_id,
            event_type=event_type,
            provider=provider,
            recipient="",
            agreement_id="",
            agreement_version=0,
            purpose="",
            legal_basis="",
            outcome=NOT_COVERED,
            reason=f"no agreement in force covers this {event_type} event from {provider}",
            fields=(),
            consent_mode="",
            consent_version=consent_version,
            subject_key=subject_key,
            decided_at=decided_at,
            event_digest=event_digest,
            subjects=subjects,
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
    return [f"return _EntryDraft({', '.join(args)})"]


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {
        "_encode": encode_entry,
        "_millis": _epoch_millis,
        "_sha256": sha256,
        "_strings": _strings,
        "_utc": _utc,
        "_EntryDraft": EntryDraft,
    }
    for name, ascii_only in ARRAY_JSON.items():
        ns[f"_json_{name}"], ns[f"_store_{name}"] = _json_list(ascii_only)
    return ns


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
