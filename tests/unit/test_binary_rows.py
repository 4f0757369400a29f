"""ledger/_binary_rows.c writes the bytes write_binary_rows writes, or declines and leaves them to it.

append COPYs what ledger/entry.py's binary_rows returns: the C writer's rows where it is
sure of a batch, write_binary_rows' otherwise. So for any batch the two must be the same
bytes and the same last entry hash; the C writer must take every ordinary batch (or it
would be built for nothing) and decline, never mis-write, one with a value of another
class or range, leaving write_binary_rows to write it or raise. Pure unit tests.
"""

from __future__ import annotations

import struct
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import GENESIS_HASH, EntryDraft, entry
from ledger.entry import NOT_COVERED, binary_rows, write_binary_rows
from tests.unit.test_leaf_copy_rows import drafts, sample


def python_rows(ds: list[EntryDraft], seq: int = 0, prev: bytes = GENESIS_HASH) -> tuple[bytes, bytes]:
    out: list[bytes] = []
    last = write_binary_rows(out.append, ds, seq, prev)
    return b"".join(out), last


def native(ds: list[EntryDraft], seq: int = 0, prev: bytes = GENESIS_HASH) -> tuple[bytes, bytes] | None:
    assert entry._NATIVE is not None
    return entry._NATIVE(ds, seq, prev)


def test_the_install_built_the_c_writer() -> None:
    """pip install -e . compiles it (setup.py); without it append writes the same rows at half the speed."""
    assert entry.NATIVE_ROWS, "ledger/_binary_rows.c was not built: is there a C compiler and OpenSSL's headers?"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(drafts, min_size=1, max_size=4), st.integers(0, (1 << 62)), st.binary(min_size=32, max_size=32))
def test_any_ordinary_batch_is_written_in_c_as_python_writes_it(ds: list[EntryDraft], seq: int, prev: bytes) -> None:
    assert native(ds, seq, prev) == python_rows(ds, seq, prev)


def test_a_batch_of_one_events_decisions_shares_its_context_and_time() -> None:
    """The processor's shape: several decisions of an event, one decided_at object, NOT_COVERED among them."""
    at = datetime(2026, 5, 6, 7, 8, 9, 123_000, tzinfo=UTC)
    ds = [sample(i, decided_at=at) for i in range(1, 200)]
    ds[7] = replace(ds[7], outcome=NOT_COVERED, recipient="", agreement_id="", agreement_version=0, fields=())
    ds[8] = replace(ds[8], decided_at=at + timedelta(microseconds=999))  # the same millisecond
    ds[9] = replace(ds[9], decided_at=datetime(2026, 5, 6, 9, 8, 9, 123_456, tzinfo=timezone(timedelta(hours=2))))
    ds[10] = replace(ds[10], fields=["subject.nhs_number"], reason="consent denied", refers_to="d-1")  # type: ignore[arg-type]
    assert native(ds, 41, bytes(range(32))) == python_rows(ds, 41, bytes(range(32)))


@pytest.mark.parametrize(
    "change",
    [
        {"agreement_version": True},  # a bool: Python writes it as 1
        {"consent_version": 1 << 63},  # past int64: Python refuses it
        {"agreement_version": 1 << 31},  # past the int4 column: Python refuses it
        {"subject_key": "nhs:\ud800"},  # a lone surrogate: not UTF-8
        {"decided_at": datetime(2026, 1, 1)},  # naive
        {"event_digest": "AB" * 32},  # check_draft refuses it
        {"outcome": "LEAKED"},
        {"disclosure_id": ""},
        {"outcome": NOT_COVERED},  # with a recipient: refused
        {"fields": ("a", 1)},  # not strings
    ],
)
def test_an_unusual_value_is_declined_and_python_decides(change: dict[str, object]) -> None:
    ds = [sample(i) for i in range(1, 6)]
    ds[3] = replace(ds[3], **change)  # type: ignore[arg-type]
    assert native(ds) is None
    try:
        expected: tuple[bytes, bytes] | type[BaseException] = python_rows(ds)
    except (
        ValueError,
        TypeError,
        AttributeError,
        OverflowError,
        struct.error,
    ) as exc:  # UnicodeEncodeError is a ValueError
        expected = type(exc)
    if isinstance(expected, tuple):
        assert binary_rows(ds, 0, GENESIS_HASH) == expected
    else:
        with pytest.raises(expected):
            binary_rows(ds, 0, GENESIS_HASH)


def test_a_chain_across_chunks_is_one_chain() -> None:
    """append sends a batch in chunks, each chained from the last's hash."""
    ds = [sample(i) for i in range(1, 130)]
    whole = python_rows(ds, 5)
    first = binary_rows(ds[:64], 5, GENESIS_HASH)
    second = binary_rows(ds[64:], 5 + 64, first[1])
    assert (first[0] + second[0], second[1]) == whole


def test_writing_and_declining_keep_no_memory() -> None:
    """A reference the C writer forgot to drop is kept once a call: a value's count grows, or 4,000 calls hold 100 KB."""
    ds = [sample(i) for i in range(1, 65)]
    ds[5] = replace(ds[5], outcome=NOT_COVERED, recipient="", agreement_id="", agreement_version=0, fields=())
    ds[6] = replace(ds[6], reason="r\u00e9", refers_to="d-1", fields=["a", "b"])  # type: ignore[arg-type]
    declined = list(ds)
    declined[40] = replace(declined[40], agreement_version=True)  # type: ignore[arg-type]

    def calls(n: int) -> None:
        for _ in range(n):
            assert native(ds, 5) is not None
            assert native(declined, 5) is None

    calls(50)
    drafts_values = (getattr(d, f) for d in (ds[0], ds[5], ds[6], declined[40]) for f in d.__dataclass_fields__)
    values = [v for v in drafts_values if isinstance(v, str | tuple | datetime)]  # not None, a bool or a small int
    counts = [sys.getrefcount(v) for v in values]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        calls(2000)
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 20_000, f"{kept:,} bytes kept by 4,000 calls"
    assert [sys.getrefcount(v) for v in values] == counts  # no reference to a draft's value taken and kept


class _Draft:
    """A duck-typed draft: EntryDraft's values, with a hook run when one attribute is read."""

    def __init__(self, base: EntryDraft, hooked: str, hook: Callable[[], object]) -> None:
        self._base, self._hooked, self._hook = base, hooked, hook

    def __getattr__(self, name: str) -> object:
        value = getattr(self._base, name)
        if name == self._hooked:
            replaced = self._hook()
            return value if replaced is None else replaced
        return value


def test_drafts_changed_by_python_code_it_calls_are_neither_freed_nor_reread() -> None:
    """The list is emptied by a property the writer reads: it works on its own tuple of the drafts."""
    base = [sample(i) for i in range(1, 9)]
    expected = python_rows(base)
    held = list(base)
    held[2] = _Draft(base[2], "event_id", lambda: held.clear())  # type: ignore[call-overload]
    assert native(held) == expected  # what was passed, whole; no crash (a use-after-free before)


def test_each_value_is_read_once_as_python_reads_it() -> None:
    """A value that changes from read to read: checked and written as first read, in both paths."""
    reads = iter(range(1000))
    ds = [sample(i) for i in range(1, 4)]
    ds[1] = _Draft(ds[1], "disclosure_id", lambda: f"d-{next(reads)}")  # type: ignore[call-overload]
    c = native(ds)
    reads = iter(range(1000))
    assert c is not None and c == python_rows(ds)


def test_a_seq_past_int64_is_declined_and_refused() -> None:
    ds = [sample(1), sample(2)]
    assert native(ds, (1 << 63) - 2) is None
    with pytest.raises((OverflowError, struct.error)):
        binary_rows(ds, (1 << 63) - 2, GENESIS_HASH)


def test_an_interrupt_is_not_swallowed() -> None:
    def interrupt() -> None:
        raise KeyboardInterrupt

    ds = [sample(1), _Draft(sample(2), "subject_key", interrupt)]
    with pytest.raises(KeyboardInterrupt):
        native(ds)  # type: ignore[arg-type]


class _Shouting(str):
    def encode(self, *args: object, **kwargs: object) -> bytes:  # type: ignore[override]
        return super().upper().encode()


@pytest.mark.parametrize("field", ["event_id", "disclosure_id", "subject_key", "reason", "outcome"])
def test_a_str_subclass_is_declined(field: str) -> None:
    ds = [sample(i, reason="why") for i in range(1, 4)]
    ds[1] = replace(ds[1], **{field: _Shouting(getattr(ds[1], field))})  # type: ignore[arg-type]
    assert native(ds) is None
    assert binary_rows(ds, 0, GENESIS_HASH) == python_rows(ds)


def test_only_a_list_or_tuple_and_32_bytes_of_prev_hash() -> None:
    ds = [sample(i) for i in range(1, 4)]
    assert native(iter(ds)) is None  # type: ignore[arg-type]  # a try that declines would use it up
    assert native(ds, 0, memoryview(bytes(32)).cast("I")) is None  # type: ignore[arg-type]
    assert native(ds, 0, bytearray(32)) is None  # type: ignore[arg-type]


def test_the_hour_a_clock_turns_back_is_stored_twice_not_once() -> None:
    """01:30 in London on 2026-10-25 happens twice (fold 0, then 1): equal within the zone, an hour apart."""
    london = ZoneInfo("Europe/London")
    first = datetime(2026, 10, 25, 1, 30, tzinfo=london)
    second = first.replace(fold=1)
    assert first == second and first.astimezone(UTC) != second.astimezone(UTC)
    ds = [sample(1, decided_at=first), sample(2, decided_at=second)]
    one_by_one = python_rows(ds[:1])[0] + python_rows(ds[1:], 1, python_rows(ds[:1])[1])[0]
    assert python_rows(ds)[0] == one_by_one
    assert native(ds) == python_rows(ds)


def test_configured_again_it_writes_the_same() -> None:
    """importlib.reload(ledger.entry) configures the module once more."""
    again = entry._native_rows()
    ds = [sample(i) for i in range(1, 6)]
    assert again is not None and again(ds, 0, GENESIS_HASH) == python_rows(ds)
