"""Exporting a range of the ledger so that anyone can check it offline, from the file alone.

Every exported entry carries its leaf (the canonical bytes, base64), its leaf hash and
its RFC 9162 inclusion proof against one signed checkpoint, whose note is in the file.
:func:`verify_export` re-checks a file without the database: each leaf decodes to the
entry's columns, hashes to its leaf hash and entry hash, links to the previous entry,
and its proof leads to the root the checkpoint signs (the signature checked when the
ledger's public key is given).

Formats: ``jsonl`` (a header line, then one entry per line) and ``csv`` (one row per
entry; the checkpoint note, and the range exported as ``from`` and ``to``, in the first
row's last columns; ``fields`` and ``subjects`` as JSON lists). The check holds the
entries to the range the file states, so entries cut from either end are found; the
range itself is not signed, so the check also prints it, for the reader to compare with
the range they asked for (``verify-export --from/--to`` does that comparison).
An export holds subject keys (NHS numbers): it is personal data, for auditors.

An export of any size streams: :func:`export_rows` checks what it can at once (the
range is covered, the tree's tiles fit the signed root, the consistency proofs), and
its ``rows`` are read 1,000 entries at a time by keyset while they are rendered, each
proved from the stored tiles (ledger/tiles.py, O(log N) rows per proof, shared between
neighbours), so memory stays bounded whatever the range. A missing or changed entry
met on the way raises ledger.proofs.LedgerMismatch from the rendering loop.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import fastavro
from sqlalchemy import Engine

from ledger import merkle
from ledger.checkpoint import CheckpointBody, StoredCheckpoint, cosigned_note, latest_checkpoint, open_checkpoint
from ledger.entry import FIELDS, SCHEMA_PATH, StoredEntry
from ledger.note import NoteError, NoteVerifier, SignedNote

if TYPE_CHECKING:
    from ledger.proofs import InclusionProof

__all__ = [
    "COLUMNS",
    "EXPORT_FORMAT",
    "Export",
    "ExportCheck",
    "ExportRows",
    "export_rows",
    "render_csv",
    "render_jsonl",
    "verify_export",
]

EXPORT_FORMAT = "accord-ledger-export/2"  # /2: event_digest and subjects
# After the leaf's fields: the entry's hash, its leaf (base64), leaf hash and inclusion proof.
_AFTER_FIELDS = ("entry_hash", "leaf", "leaf_hash", "proof")
COLUMNS = (
    "seq",
    "disclosure_id",
    "event_id",
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
    "consent_version",
    "subject_key",
    "decided_at",
    "refers_to",
    "event_digest",
    "subjects",
    "prev_hash",
    *_AFTER_FIELDS,
)


def column_problem(columns: Sequence[str], fields: Sequence[str]) -> str | None:
    """Why an export's columns are not the leaf's fields, in order, then _AFTER_FIELDS; None if they are.

    The columns are written out, not derived from schemas/disclosure.avsc: they are a
    published format, which a schema change must not change silently. So a field added
    to the schema stops ``import ledger.export`` here until the columns (and
    EXPORT_FORMAT's version) say what the export does with it.
    """
    want = (*fields, *_AFTER_FIELDS)
    if tuple(columns) == want:
        return None
    missing = [c for c in want if c not in columns]
    extra = [c for c in columns if c not in want]
    if missing or extra:
        return f"export columns lack {missing} and have {extra} beyond the leaf's fields; bump EXPORT_FORMAT"
    return f"export columns are not in the leaf's order {list(want)}; bump EXPORT_FORMAT"


if (_problem := column_problem(COLUMNS, [f.name for f in FIELDS])) is not None:
    raise ImportError(f"ledger/export.py: {_problem}")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class ExportRows:
    """The exported entries as rows, read from the ledger each time they are iterated (bounded memory).

    ``len()`` is the number of entries the range holds (every seq from..to is in the
    ledger, or iterating raises LedgerMismatch).
    """

    def __init__(self, engine: Engine, from_seq: int, to_seq: int, checkpoint: StoredCheckpoint, note: str) -> None:
        self._args = (engine, from_seq, to_seq, checkpoint, note)
        self._count = to_seq - from_seq + 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from ledger.proofs import iter_range_proofs

        for e, p in iter_range_proofs(*self._args):
            yield _row(e, p)


def _row(e: StoredEntry, p: InclusionProof) -> dict[str, Any]:
    d = e.draft
    return {
        "seq": e.seq,
        "disclosure_id": d.disclosure_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "provider": d.provider,
        "recipient": d.recipient,
        "agreement_id": d.agreement_id,
        "agreement_version": d.agreement_version,
        "purpose": d.purpose,
        "legal_basis": d.legal_basis,
        "outcome": d.outcome,
        "reason": d.reason,
        "fields": list(d.fields),
        "consent_mode": d.consent_mode,
        "consent_version": d.consent_version,
        "subject_key": d.subject_key,
        "decided_at": d.decided_at.astimezone(UTC).isoformat(timespec="milliseconds"),
        "refers_to": d.refers_to,
        "event_digest": d.event_digest,
        "subjects": list(d.subjects),
        "prev_hash": _b64(e.prev_hash),
        "entry_hash": _b64(e.entry_hash),
        "leaf": _b64(p.leaf),
        "leaf_hash": _b64(p.leaf_hash),
        "proof": [_b64(h) for h in p.proof],
    }


@dataclass(frozen=True)
class Export:
    from_seq: int
    to_seq: int
    checkpoint: StoredCheckpoint
    note: str  # the checkpoint's signed note (with any cosignatures)
    rows: Iterable[dict[str, Any]]  # ExportRows: streamed from the ledger when iterated
    # From checkpoints the reader already holds to this one: proves it extends theirs.
    consistency: tuple[dict[str, Any], ...] = ()

    def header(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "from": self.from_seq,
            "to": self.to_seq,
            "tree_size": self.checkpoint.tree_size,
            "root": _b64(self.checkpoint.root),
            "checkpoint": self.note,
            "consistency": list(self.consistency),
            "leaf_schema": json.loads(SCHEMA_PATH.read_text(encoding="utf-8")),
        }


def export_rows(
    engine: Engine,
    from_seq: int,
    to_seq: int,
    checkpoint: StoredCheckpoint | None = None,
    since: Sequence[int] = (),
) -> Export:
    """Entries ``from_seq``..``to_seq`` with their leaves and inclusion proofs (newest checkpoint by default).

    ``since``: tree sizes of checkpoints the reader already holds; the export carries a
    consistency proof from each to the export's checkpoint. NotCovered (ledger.proofs)
    when no checkpoint covers ``to_seq`` yet, or a ``since`` size is not a stored
    checkpoint; LedgerMismatch when the tree cannot be made to fit the signed root.
    The rows are read when iterated (:class:`ExportRows`).
    """
    from ledger.proofs import NotCovered, iter_range_proofs, prove_consistency

    if from_seq < 1 or to_seq < from_seq:
        raise ValueError("give 1 <= --from <= --to")
    chosen = checkpoint or latest_checkpoint(engine)
    if chosen is None:
        raise NotCovered("the ledger has no checkpoint yet (`accord ledger checkpoint`)")
    note = cosigned_note(engine, chosen.tree_size) or chosen.note
    iter_range_proofs(engine, from_seq, to_seq, chosen, note)  # NotCovered, LedgerMismatch: now, not mid-stream
    consistency = tuple(prove_consistency(engine, size, chosen.tree_size).to_dict() for size in since)
    return Export(from_seq, to_seq, chosen, note, ExportRows(engine, from_seq, to_seq, chosen, note), consistency)


def render_jsonl(export: Export, *, on_progress: Callable[[int], None] | None = None) -> Iterator[str]:
    """A header line, then one line per entry; ``on_progress(1)`` after each entry's line is made."""
    yield json.dumps({"type": "header", **export.header()}, ensure_ascii=False) + "\n"
    for row in export.rows:
        if on_progress is not None:
            on_progress(1)
        yield json.dumps({"type": "entry", **row}, ensure_ascii=False) + "\n"


def render_csv(export: Export, *, on_progress: Callable[[int], None] | None = None) -> Iterator[str]:
    """One row per entry (after the column names); ``on_progress(1)`` after each entry's row is made."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow((*COLUMNS, "checkpoint", "consistency", "from", "to"))
    consistency = json.dumps(list(export.consistency), separators=(",", ":")) if export.consistency else ""
    stated = (export.note, consistency, export.from_seq, export.to_seq)
    first = True
    for row in export.rows:
        values = [row[c] for c in COLUMNS]
        for column in ("fields", "subjects"):
            values[COLUMNS.index(column)] = json.dumps(row[column], separators=(",", ":"))
        values[COLUMNS.index("proof")] = " ".join(row["proof"])
        writer.writerow((*("" if v is None else v for v in values), *(stated if first else ("",) * len(stated))))
        first = False
        if on_progress is not None:
            on_progress(1)
        yield buf.getvalue()
        buf.seek(0)
        buf.truncate()
    if first:
        yield buf.getvalue()


# --------------------------------------------------------------------------- offline check


@dataclass
class ExportCheck:
    ok: bool
    entries: int
    tree_size: int | None
    signature_checked: bool
    problems: list[str] = field(default_factory=list)
    consistent_with: list[int] = field(default_factory=list)  # older checkpoints it was proved to extend
    first: int | None = None  # the seqs of the first and last entries checked
    last: int | None = None
    range_stated: bool = True  # False: a csv export from before the range was written into it

    def describe(self) -> str:
        if not self.ok:
            return "export BROKEN: " + "; ".join(self.problems[:5])
        signed = "signature verified" if self.signature_checked else "signature NOT checked (no public key given)"
        held = (
            f"entries {self.first:,} to {self.last:,}"
            if self.first is not None and self.last is not None
            else "no entries"
        )
        if not self.range_stated:
            held += " (the file does not state the range it was exported for)"
        extends = (
            f"; it extends checkpoint(s) {', '.join(f'{n:,}' for n in self.consistent_with)}"
            if self.consistent_with
            else ""
        )
        return (
            f"export OK: {self.entries:,} entries, {held}, each proven in the tree of {self.tree_size:,} entries "
            f"the checkpoint commits to ({signed}){extends}"
        )


def _note_body(note: str, verifier: NoteVerifier | None, origin: str | None) -> CheckpointBody:
    if verifier is not None:
        return open_checkpoint(note, verifier, origin)
    return CheckpointBody.parse(SignedNote.parse(note).text)


def _consistency_problem(
    c: dict[str, Any], body: CheckpointBody, verifier: NoteVerifier | None, origin: str | None
) -> str | None:
    """Why a carried consistency proof fails (None when it holds): signed old note, new root, RFC 9162 2.1.4.2."""
    try:
        old = _note_body(c["old_checkpoint"], verifier, origin)
        proof = [base64.b64decode(p, validate=True) for p in c["proof"]]
    except (NoteError, KeyError, ValueError) as exc:
        return f"unreadable ({exc})"
    if (old.tree_size, old.root) != (int(c["old_size"]), base64.b64decode(c["old_root"])):
        return "its old size and root are not the old checkpoint's"
    if (int(c["new_size"]), base64.b64decode(c["new_root"])) != (body.tree_size, body.root):
        return "it does not end at the export's checkpoint"
    if not merkle.verify_consistency(old.tree_size, body.tree_size, old.root, body.root, proof):
        return "the proof does not show the export's tree extends it"
    return None


@dataclass(frozen=True)
class _Records:
    note: str | None  # the checkpoint's signed note
    consistency: list[dict[str, Any]]
    stated: tuple[int, int] | None  # the range the file says it holds (None: an older csv)
    entries: Iterator[dict[str, Any]]  # with typed values, read lazily


def _stated_range(values: Mapping[str, Any]) -> tuple[int, int] | None:
    if values.get("from") in (None, "") and values.get("to") in (None, ""):
        return None
    return int(values["from"]), int(values["to"])


def _records(lines: Iterator[str]) -> _Records:
    """The checkpoint note, consistency proofs, stated range and entries of a jsonl or csv export.

    Reads the header (jsonl) or first row (csv) now and the entries lazily, so a file of
    any size is checked in bounded memory. KeyError, ValueError or TypeError (now or
    while iterating) for a missing column or a line that does not parse.
    """
    first = next(lines, "")
    if first.startswith("{"):
        header = json.loads(first)
        if header.get("type") != "header":  # the header line comes first, as render_jsonl writes it
            return _Records(None, [], None, _jsonl_entries(itertools.chain([first], lines)))
        stated = int(header["from"]), int(header["to"])  # every jsonl header states it (KeyError: a finding)
        return _Records(header["checkpoint"], header.get("consistency") or [], stated, _jsonl_entries(lines))
    reader = csv.DictReader(itertools.chain([first], lines))
    head = next(reader, None)
    if head is None:
        return _Records(None, [], None, iter(()))
    consistency = json.loads(head["consistency"]) if head.get("consistency") else []
    entries = map(_csv_entry, itertools.chain([head], reader))
    return _Records(head.get("checkpoint") or None, consistency, _stated_range(head), entries)


def _jsonl_entries(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if not line.strip():
            continue
        obj = json.loads(line)
        if obj.get("type") == "entry":
            missing = [c for c in COLUMNS if c not in obj]
            if missing:
                raise KeyError(missing[0])
            yield obj


def _csv_entry(rec: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {c: rec[c] for c in COLUMNS}
    for c in ("seq", "agreement_version", "consent_version"):
        row[c] = int(row[c])
    for c in ("reason", "refers_to"):
        row[c] = row[c] or None
    row["fields"] = json.loads(row["fields"])
    row["subjects"] = json.loads(row["subjects"])
    row["proof"] = row["proof"].split() if row["proof"] else []
    return row


@lru_cache(maxsize=1)
def _leaf_schema() -> Any:
    return fastavro.parse_schema(json.loads(SCHEMA_PATH.read_text(encoding="utf-8")))


def _decoded_matches(row: dict[str, Any], leaf: bytes) -> str | None:
    try:
        record = fastavro.schemaless_reader(io.BytesIO(leaf), _leaf_schema())
    except Exception as exc:  # noqa: BLE001 - a damaged leaf is a finding, not a crash
        return f"the leaf does not decode ({type(exc).__name__})"
    if not isinstance(record, dict):  # the leaf schema is a record: narrows fastavro's any-datum type
        return "the leaf does not decode to a record"
    decided = record["decided_at"]
    if isinstance(decided, datetime):
        decided = decided.astimezone(UTC).isoformat(timespec="milliseconds")
    expected = {
        **{k: row[k] for k in COLUMNS if k in record and k not in ("prev_hash", "decided_at")},
        "decided_at": row["decided_at"],
    }
    got = {**{k: record[k] for k in expected if k != "decided_at"}, "decided_at": decided}
    if got != expected:
        wrong = sorted(k for k in expected if got.get(k) != expected[k])
        return f"columns {', '.join(wrong)} differ from the entry's leaf"
    if _b64(record["prev_hash"]) != row["prev_hash"]:
        return "prev_hash differs from the entry's leaf"
    return None


def verify_export(
    source: str | Iterable[str],
    verifier: NoteVerifier | None = None,
    origin: str | None = None,
    expected: tuple[int, int] | None = None,
) -> ExportCheck:
    """Re-check an export from its text alone (no database).

    ``source``: the file's text, or its lines (an open text file, read with
    ``newline=""`` for csv): then it is checked as it is read, in bounded memory.
    ``expected``: the (from, to) range the reader asked for; the file must hold exactly it.
    """
    lines = iter(io.StringIO(source, newline="") if isinstance(source, str) else source)
    try:
        return _verify(lines, verifier, origin, expected)
    except (KeyError, ValueError, TypeError) as exc:  # a missing column, a damaged line: a finding
        what = (
            f"column {exc} is missing" if isinstance(exc, KeyError) else f"a line does not parse ({type(exc).__name__})"
        )
        return ExportCheck(False, 0, None, verifier is not None, [f"not an {EXPORT_FORMAT} file: {what}"])


def _verify(
    lines: Iterator[str], verifier: NoteVerifier | None, origin: str | None, expected: tuple[int, int] | None
) -> ExportCheck:
    """The checks docs/ledger.md lists for ``verify-export``, in three passes.

    1. the checkpoint note (signature, size, root), then each consistency proof;
    2. each entry as it is read: leaf, hashes, chain, seq order, inclusion proof;
    3. the entries are exactly the range the file states (and the reader expected).
    """
    records = _records(lines)
    note, consistency, rows = records.note, records.consistency, records.entries
    check = ExportCheck(False, 0, None, verifier is not None, range_stated=records.stated is not None)
    # 1.
    if note is None:
        check.entries = sum(1 for _ in rows)
        check.problems.append("no checkpoint note in the export")
        return check
    try:
        body = _note_body(note, verifier, origin)
    except NoteError as exc:
        check.entries = sum(1 for _ in rows)
        check.problems.append(f"checkpoint: {exc}")
        return check
    check.tree_size = body.tree_size
    for c in consistency:
        problem = _consistency_problem(c, body, verifier, origin)
        if problem:
            check.problems.append(f"consistency from checkpoint {c.get('old_size')}: {problem}")
        else:
            check.consistent_with.append(int(c["old_size"]))
    # 2.
    prev_seq, prev_hash = None, None
    for row in rows:
        check.entries += 1
        seq = row["seq"]
        check.first = seq if check.first is None else check.first
        check.last = seq
        where = f"entry {seq:,}"
        try:
            leaf = base64.b64decode(row["leaf"], validate=True)
        except ValueError:
            check.problems.append(f"{where}: the leaf is not base64")
            prev_seq, prev_hash = seq, row["entry_hash"]
            continue
        if prev_seq is not None and seq != prev_seq + 1:
            check.problems.append(f"{where}: seq does not follow {prev_seq:,} (entries missing or reordered)")
        problem = _decoded_matches(row, leaf)
        if problem:
            check.problems.append(f"{where}: {problem}")
        if _b64(hashlib.sha256(leaf).digest()) != row["entry_hash"]:
            check.problems.append(f"{where}: entry_hash is not SHA-256 of the leaf")
        if prev_hash is not None and row["prev_hash"] != prev_hash:
            check.problems.append(f"{where}: prev_hash does not link to the previous entry")
        lh = merkle.leaf_hash(leaf)
        if _b64(lh) != row["leaf_hash"]:
            check.problems.append(f"{where}: leaf_hash is not the RFC 9162 hash of the leaf")
        try:
            proof = [base64.b64decode(p, validate=True) for p in row["proof"]]
        except ValueError:
            proof = []
        if not merkle.verify_inclusion(lh, seq - 1, body.tree_size, proof, body.root):
            check.problems.append(f"{where}: inclusion proof does not lead to the checkpoint's root")
        prev_seq, prev_hash = seq, row["entry_hash"]
    # 3. Entries cut from either end leave a file whose chain and proofs still hold.
    held = (check.first, check.last) if check.first is not None and check.last is not None else None
    for what, wanted in (("the file states", records.stated), ("you asked for", expected)):
        if wanted is not None and held != wanted:
            holds = f"holds entries {held[0]:,} to {held[1]:,}" if held else "holds no entries"
            check.problems.append(f"{what} entries {wanted[0]:,} to {wanted[1]:,} but it {holds}")
    if records.stated is not None and records.stated[1] > body.tree_size:
        check.problems.append(
            f"it states entries up to {records.stated[1]:,}, past the checkpoint's {body.tree_size:,}"
        )
    check.ok = not check.problems
    return check
