"""A precompiled writer of schemas/disclosure.avsc: the ledger leaf's bytes without fastavro.

Why: the canonical bytes are hashed for every entry appended and re-encoded for every
entry verified. fastavro.schemaless_writer walks the schema for each record (about
15 µs an entry here); this module reads the schema once, at import, and compiles it
into one Python function whose body is the record's fields in order, each encoded by
inline code for its type (about 2 µs an entry; bench/ledger_append.py). The bytes are
the same as fastavro's for every record (tests/unit/test_leaf_codec.py checks that over
random records and decodes them back with fastavro); docs/ledger.md gives them byte by
byte.

Only the types the ledger's schema uses are compiled: long, int (and the
timestamp-millis logical type, given as integer milliseconds), string, enum, fixed,
arrays of strings and unions of null with one of those. A schema change that needs
another type fails at import, naming it, rather than encoding something else.

Where the two differ is only on inputs no entry has: fastavro truncates a float given
for an int (1.5 is written as 1); this writer refuses it (TypeError). Like fastavro it
writes an Avro int as a long (no 32-bit range check), refuses a long outside 64 bits
(OverflowError), an unknown enum symbol (ValueError), a non-string string (TypeError)
and a string that is not valid Unicode (UnicodeEncodeError); it also refuses a fixed
value of the wrong size (ValueError), which fastavro would write as given.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIELD_NAMES",
    "REPEATING",
    "SCHEMA",
    "SCHEMA_PATH",
    "FieldCompiler",
    "compile_record",
    "encode_entry",
    "encode_long",
]

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "disclosure.avsc"

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1
# Varints by table, 14 bits at a time: _UV[z] is the varint of z < 2**14 (1 or 2 bytes),
# _CONT[x] the two bytes of 14 bits x followed by more (both with the high bit set).
_UV: tuple[bytes, ...] = tuple(bytes((z,)) for z in range(0x80)) + tuple(
    bytes(((z & 0x7F) | 0x80, z >> 7)) for z in range(0x80, 1 << 14)
)
_CONT: tuple[bytes, ...] = tuple(bytes(((x & 0x7F) | 0x80, (x >> 7) | 0x80)) for x in range(1 << 14))
# Zig-zag varints of 0.._SMALL-1 (zig-zag of i >= 0 is 2i): every length, and most ints.
_SMALL = 1 << 13
_ZZ: tuple[bytes, ...] = _UV[0 : 2 * _SMALL : 2]
# A fields or subjects tuple's encoding, by value: a ledger repeats a handful of them.
_ARRAYS: dict[tuple[str, ...], bytes] = {}
_ARRAYS_KEPT = 4096


def encode_long(n: int) -> bytes:
    """Avro int/long: zig-zag, then 7 bits a byte, least significant first."""
    if not isinstance(n, int):
        raise TypeError(f"an Avro int or long must be an int, not {type(n).__name__}")
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long (64 bits)")
    z = (n << 1) ^ (n >> 63)
    if z < 1 << 14:
        return _UV[z]
    if z < 1 << 28:
        return _CONT[z & 0x3FFF] + _UV[z >> 14]
    if z < 1 << 42:  # milliseconds since 1970 until the year 2248
        return b"".join((_CONT[z & 0x3FFF], _CONT[(z >> 14) & 0x3FFF], _UV[z >> 28]))
    out = []
    while z >= 1 << 14:
        out.append(_CONT[z & 0x3FFF])
        z >>= 14
    out.append(_UV[z])
    return b"".join(out)


def string_array(items: Iterable[str]) -> bytes:
    """An array of strings as one block: count, each string, then the 0 that ends it."""
    if not items:
        return b"\x00"
    keep = items.__class__ is tuple
    if keep:
        hit = _ARRAYS.get(items)  # type: ignore[call-overload]
        if hit is not None:
            return hit
    out = [encode_long(len(items))]  # type: ignore[arg-type]
    for s in items:
        b = s.encode()
        n = len(b)
        out.append(_ZZ[n] if n < _SMALL else encode_long(n))
        out.append(b)
    out.append(b"\x00")
    encoded = b"".join(out)
    if keep:
        if len(_ARRAYS) >= _ARRAYS_KEPT:
            _ARRAYS.clear()
        _ARRAYS[items] = encoded  # type: ignore[index]
    return encoded


def _enum_error(name: str, symbols: Iterable[str]) -> Callable[[Any], bytes]:
    def refuse(value: Any) -> bytes:
        raise ValueError(f"{value!r} is not a symbol of {name} ({', '.join(symbols)})")

    return refuse


class FieldCompiler:
    """Turns a record schema into the source of one function and the constants it uses.

    Each field becomes a few statements computing its parts (``prelude``) and the
    expressions of those parts; the function returns ``b"".join`` of every field's parts,
    in field order. The names it gives field i's locals are a contract: a string's UTF-8
    bytes are ``b{i}`` and their length ``n{i}`` (ledger/entry.py's write_binary_row
    reuses them for the row), the other locals end in i too, so fields never collide.
    """

    def __init__(self) -> None:
        self.constants: dict[str, Any] = {
            "_ZZ": _ZZ,
            "_UV": _UV,
            "_CONT": _CONT,
            "_SMALL": _SMALL,
            "_long": encode_long,
            "_string_array": string_array,
        }

    def constant(self, name: str, value: Any) -> str:
        self.constants[name] = value
        return name

    def field(self, i: int, arg: str, schema: Any) -> tuple[list[str], list[str]]:
        """(prelude statements, part expressions) encoding the value named ``arg``."""
        if isinstance(schema, list):
            return self.union(i, arg, schema)
        kind = schema if isinstance(schema, str) else schema.get("type")
        if kind in ("long", "int"):  # timestamp-millis too: an int of milliseconds
            if isinstance(schema, dict) and schema.get("logicalType") not in (None, "timestamp-millis"):
                raise NotImplementedError(f"logical type {schema['logicalType']!r} is not compiled")
            # Non-negative ints inline, up to 3 table pieces (seq, and milliseconds until 2039);
            # the class test sends floats (refused) and bools (as fastavro: 0, 1) to _long.
            return [
                f"if {arg}.__class__ is int and {arg} >= 0:",
                f"    if {arg} < _SMALL:",
                f"        p{i} = _ZZ[{arg}]",
                f"    elif {arg} < 134217728:  # 2**27: zig-zag below 2**28, two pieces",
                f"        p{i} = _CONT[({arg} << 1) & 16383] + _UV[{arg} >> 13]",
                f"    elif {arg} < 2199023255552:  # 2**41: three pieces",
                f"        p{i} = b''.join((_CONT[({arg} << 1) & 16383], _CONT[({arg} >> 13) & 16383], "
                f"_UV[{arg} >> 27]))",
                "    else:",
                f"        p{i} = _long({arg})",
                "else:",
                f"    p{i} = _long({arg})",
            ], [f"p{i}"]
        if kind == "string":
            return [f"b{i} = {arg}.encode()", f"n{i} = len(b{i})"], [
                f"(_ZZ[n{i}] if n{i} < _SMALL else _long(n{i}))",
                f"b{i}",
            ]
        if kind == "enum":
            symbols = list(schema["symbols"])
            table = self.constant(f"_E{i}", {s: encode_long(k) for k, s in enumerate(symbols)})
            refuse = self.constant(f"_E{i}_refuse", _enum_error(schema["name"], symbols))
            return [], [f"({table}.get({arg}) or {refuse}({arg}))"]
        if kind == "fixed":
            size = int(schema["size"])
            return [
                f"if len({arg}) != {size}:",
                f"    raise ValueError('{schema['name']} must be {size} bytes, not ' + str(len({arg})))",
            ], [arg]
        if kind == "array":
            items = schema["items"]
            if items != "string":
                raise NotImplementedError(f"arrays of {items!r} are not compiled")
            return [], [f"_string_array({arg})"]
        raise NotImplementedError(f"Avro type {schema!r} is not compiled (ledger/leaf_codec.py)")

    def union(self, i: int, arg: str, branches: list[Any]) -> tuple[list[str], list[str]]:
        """[null, T]: 00 for None, else 02 then T's encoding."""
        if len(branches) != 2 or branches[0] != "null" or branches[1] not in ("string", "long", "int"):
            raise NotImplementedError(f"union {branches!r} is not compiled: only [null, string|long|int]")
        prelude, parts = self.field(i, arg, branches[1])
        return [
            f"if {arg} is None:",
            f"    u{i} = b'\\x00'",
            "else:",
            *(f"    {line}" for line in prelude),
            f"    u{i} = b''.join((b'\\x02', {', '.join(parts)}))",
        ], [f"u{i}"]


_MEMO_KEPT = 4096  # encodings kept per memoised run of fields before its memo starts over
_INT_KINDS = ("int", "long")


def _kind(schema: Any) -> Any:
    return schema if isinstance(schema, str) else None if isinstance(schema, list) else schema.get("type")


def _run_encoder(compiler: FieldCompiler, first: int, fields: Sequence[Mapping[str, Any]]) -> Callable[..., bytes]:
    """The encoder of a run of fields on its own: ``run(key, *values)``, what a memo miss calls.

    It encodes the values and keeps the bytes under ``key`` (None: not kept, the key
    could not be hashed), so that only values that did encode are ever remembered.
    """
    args = [f"v{first + k}" for k in range(len(fields))]
    body: list[str] = []
    parts: list[str] = []
    for k, (arg, f) in enumerate(zip(args, fields, strict=True)):
        prelude, exprs = compiler.field(first + k, arg, f["type"])
        body += prelude
        parts += exprs
    cache = f"_R{first}"
    body += [
        f"encoded = b''.join(({', '.join(parts)},))",
        "if key is not None:",
        f"    if len({cache}) >= _MEMO_KEPT:",
        f"        {cache}.clear()",
        f"    {cache}[key] = encoded",
        "return encoded",
    ]
    source = f"def run(key, {', '.join(args)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = dict(compiler.constants)
    exec(compile(source, f"<leaf_codec run {first}>", "exec"), namespace)  # noqa: S102
    return namespace["run"]


def compile_record(
    schema: Mapping[str, Any], memo: Iterable[Sequence[str]] = ()
) -> tuple[Callable[..., bytes], tuple[str, ...]]:
    """(encode, field names): encode(*values in field order) is the record's Avro binary encoding.

    Values are given positionally, in the schema's field order; a timestamp-millis field
    takes integer milliseconds since the epoch.

    Each of ``memo`` names a run of consecutive fields whose values repeat together from
    record to record (a decision's context): their encoding is kept under the tuple of
    their values (up to _MEMO_KEPT per run), so a repeat costs one dictionary look-up.
    The key holds each int field's class too, so a float or a bool equal to an int never
    takes the int's bytes; a value that cannot be hashed (a list) is encoded every time.
    """
    if schema.get("type") != "record":
        raise NotImplementedError("only a record schema is compiled")
    fields = list(schema["fields"])
    names = tuple(f["name"] for f in fields)
    runs: dict[int, int] = {}  # first field index -> one past the last
    for run in memo:
        if isinstance(run, str):
            raise TypeError(f"memo takes runs of field names, [(name, ...), ...], not {run!r}")
        if not run or any(n not in names for n in run):
            raise ValueError(f"no such fields to memoise: {list(run)}")
        first = names.index(run[0])
        if list(names[first : first + len(run)]) != list(run):
            raise ValueError(f"a memoised run must be consecutive fields in schema order: {list(run)}")
        runs[first] = first + len(run)
    compiler = FieldCompiler()
    compiler.constants["_MEMO_KEPT"] = _MEMO_KEPT
    args = [f"v{i}" for i in range(len(names))]
    body: list[str] = []
    parts: list[str] = []
    i = 0
    while i < len(fields):
        if i in runs:
            end = runs[i]
            compiler.constant(f"_R{i}", {})
            run = compiler.constant(f"_run{i}", _run_encoder(compiler, i, fields[i:end]))
            key = [args[k] for k in range(i, end)]
            key += [f"{args[k]}.__class__" for k in range(i, end) if _kind(fields[k]["type"]) in _INT_KINDS]
            body += [
                f"k{i} = ({', '.join(key)},)",
                "try:",
                f"    r{i} = _R{i}.get(k{i})",
                "except TypeError:  # unhashable: encoded, not kept",
                f"    r{i} = k{i} = None",
                f"if r{i} is None:",
                f"    r{i} = {run}(k{i}, {', '.join(args[i:end])})",
            ]
            parts.append(f"r{i}")
            i = end
            continue
        prelude, exprs = compiler.field(i, args[i], fields[i]["type"])
        body.extend(prelude)
        parts.extend(exprs)
        i += 1
    body.append("return b''.join((")
    body.extend(f"    {p}," for p in parts)
    body.append("))")
    source = f"def encode({', '.join(args)}):\n" + "".join(f"    {line}\n" for line in body)
    namespace: dict[str, Any] = dict(compiler.constants)
    exec(compile(source, f"<leaf_codec {schema.get('name', 'record')}>", "exec"), namespace)  # noqa: S102
    encode = namespace["encode"]
    encode.__doc__ = f"Avro binary encoding of {schema.get('name')}({', '.join(names)})."
    encode.source = source  # type: ignore[attr-defined]  # for a reader wanting to see what was compiled
    return encode, names


def _load(path: Path) -> Mapping[str, Any]:
    with path.open(encoding="utf-8") as f:
        return json.load(f)


# A decision's context repeats from entry to entry (one agreement, a few recipients, the
# same fields); the ids, digests, subject keys and times rarely do.
REPEATING = (
    "event_type",
    "provider",
    "recipient",
    "agreement_id",
    "agreement_version",
    "purpose",
    "legal_basis",
    "outcome",
    "reason",
    "fields",
    "consent_mode",
)
SCHEMA = _load(SCHEMA_PATH)  # as read; ledger/entry.py derives the entry's fields from it
encode_entry, FIELD_NAMES = compile_record(SCHEMA, memo=[REPEATING])
