"""A precompiled writer of schemas/disclosure.avsc: the ledger leaf's bytes without fastavro.

Why: the canonical bytes are hashed for every entry appended and re-encoded for every
entry verified. fastavro.schemaless_writer walks the schema for each record (about
15 µs an entry here); this module reads the schema once, at import, and compiles it
into one Python function whose body is the record's fields in order, each encoded by
inline code for its type (about 2 µs an entry; bench/ledger_append.py). The bytes are
the same as fastavro's for every record (tests/test_leaf_codec.py checks that over
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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_PATH", "FIELD_NAMES", "compile_record", "encode_entry", "encode_long"]

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


def _string_array(items: Iterable[str]) -> bytes:
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


class _Compiler:
    """Turns a record schema into the source of one function and the constants it uses.

    Each field becomes a few statements computing its parts (``prelude``) and the
    expressions of those parts; the function returns ``b"".join`` of every field's parts,
    in field order.
    """

    def __init__(self) -> None:
        self.constants: dict[str, Any] = {
            "_ZZ": _ZZ,
            "_SMALL": _SMALL,
            "_long": encode_long,
            "_string_array": _string_array,
            "_memo": _memo,
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
            # The class test keeps floats (and bools) off the table: _long refuses a float.
            return [], [f"(_ZZ[{arg}] if {arg}.__class__ is int and 0 <= {arg} < _SMALL else _long({arg}))"]
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


def _memo(cache: dict[str | None, bytes], value: str | None, encode: Callable[[Any], bytes]) -> bytes:
    encoded = encode(value)
    if len(cache) >= _MEMO_KEPT:
        cache.clear()
    cache[value] = encoded
    return encoded


_MEMO_KEPT = 4096  # encodings kept per memoised field before its memo starts over


def _single(compiler: _Compiler, i: int, schema: Any) -> Callable[[Any], bytes]:
    """One field's encoder on its own (what a memoised field calls on a miss)."""
    prelude, parts = compiler.field(i, "v", schema)
    source = "def encode(v):\n" + "".join(f"    {line}\n" for line in (*prelude, f"return b''.join(({', '.join(parts)},))"))
    namespace: dict[str, Any] = dict(compiler.constants)
    exec(compile(source, f"<leaf_codec field {i}>", "exec"), namespace)  # noqa: S102
    return namespace["encode"]


def compile_record(
    schema: Mapping[str, Any], memo: Iterable[str] = ()
) -> tuple[Callable[..., bytes], tuple[str, ...]]:
    """(encode, field names): encode(*values in field order) is the record's Avro binary encoding.

    Values are given positionally, in the schema's field order; a timestamp-millis field
    takes integer milliseconds since the epoch. The string (or [null, string]) fields named
    in ``memo`` keep their values' encodings (up to _MEMO_KEPT each): for fields that
    repeat from record to record, one dictionary look-up instead of encoding the string.
    """
    if schema.get("type") != "record":
        raise NotImplementedError("only a record schema is compiled")
    names = tuple(f["name"] for f in schema["fields"])
    memoised = set(memo)
    if memoised - set(names):
        raise ValueError(f"no such fields to memoise: {sorted(memoised - set(names))}")
    compiler = _Compiler()
    args = [f"v{i}" for i in range(len(names))]
    body: list[str] = []
    parts: list[str] = []
    for i, (arg, f) in enumerate(zip(args, schema["fields"], strict=True)):
        if f["name"] in memoised:
            if f["type"] not in ("string", ["null", "string"]):
                raise NotImplementedError(f"only string fields are memoised, not {f['name']}")
            cache = compiler.constant(f"_M{i}", {})
            single = compiler.constant(f"_S{i}", _single(compiler, i, f["type"]))
            body += [f"m{i} = {cache}.get({arg})", f"if m{i} is None:", f"    m{i} = _memo({cache}, {arg}, {single})"]
            parts.append(f"m{i}")
            continue
        prelude, exprs = compiler.field(i, arg, f["type"])
        body.extend(prelude)
        parts.extend(exprs)
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


# The decision's context repeats from entry to entry (one agreement, a few recipients);
# the ids, digests and subject keys rarely do.
_REPEATING = ("event_type", "provider", "recipient", "agreement_id", "purpose", "legal_basis", "reason", "consent_mode")
encode_entry, FIELD_NAMES = compile_record(_load(SCHEMA_PATH), memo=_REPEATING)
