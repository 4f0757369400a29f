"""Signed checkpoints of the ledger's Merkle tree, in the C2SP tlog-checkpoint format.

A checkpoint commits to the first ``tree_size`` entries: its note text is the origin,
the tree size in decimal and the base64 RFC 9162 root, one per line, signed with the
ledger's Ed25519 key as a C2SP signed note (ledger/note.py). Partners and auditors keep
copies (the processor publishes each to ``accord.ledger.checkpoints``), so the ledger
cannot later drop or rewrite what a checkpoint covers without disagreeing with a
signature it cannot forge; ``accord ledger verify`` checks exactly that.

A new checkpoint extends the previous one's stored frontier, re-checking only the
entries added since (chain links, entry and leaf hashes), so making one costs the new
entries, not the whole ledger. The ledger never signs a tree that does not extend its
newest checkpoint: if the stored history disagrees, :class:`CheckpointRefused` names
the entry.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError

from bus.settings import Settings
from ledger import merkle, tiles
from ledger.entry import GENESIS_HASH, entry_hashes, stored_entry
from ledger.note import NoteError, NoteSignature, NoteSigner, NoteVerifier, SignedNote, sign_note
from ledger.tables import LedgerCheckpoint, LedgerCosignature, LedgerEntry

__all__ = [
    "KEY_FILE_NAME",
    "CheckpointBody",
    "CheckpointRefused",
    "Cosignature",
    "StoredCheckpoint",
    "add_cosignature",
    "checkpoint_at",
    "checkpoints",
    "cosignatures",
    "cosigned_note",
    "generate_key_file",
    "latest_checkpoint",
    "ledger_size",
    "load_signer",
    "make_checkpoint",
    "open_checkpoint",
]

KEY_FILE_NAME = "ledger-signing.key"
_BATCH = 1000


class CheckpointRefused(RuntimeError):
    """The ledger's stored history does not extend its newest checkpoint: nothing is signed."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.seq = seq


@dataclass(frozen=True)
class CheckpointBody:
    """The note text of a checkpoint: origin, tree size, root hash."""

    origin: str
    tree_size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.tree_size}\n{base64.b64encode(self.root).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> CheckpointBody:
        """Read a checkpoint's note text; extension lines (none are written here) are refused."""
        lines = text.split("\n")
        if len(lines) != 4 or lines[3] != "":
            raise NoteError("a checkpoint's text is exactly three lines: origin, tree size, root hash")
        origin, size, root_b64 = lines[:3]
        if not origin:
            raise NoteError("a checkpoint's origin is not empty")
        if not size.isascii() or not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError("a checkpoint's tree size is a decimal number without leading zeros")
        try:
            root = base64.b64decode(root_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise NoteError("a checkpoint's root hash is base64") from exc
        if len(root) != merkle.HASH_SIZE:
            raise NoteError("a checkpoint's root hash is 32 bytes")
        return cls(origin, int(size), root)


def open_checkpoint(note: str, verifier: NoteVerifier, origin: str | None = None) -> CheckpointBody:
    """The checkpoint a note carries, once its signature by ``verifier`` has verified.

    NoteError if the note is malformed, not signed by that key, wrongly signed, or (when
    ``origin`` is given) from another log.
    """
    body = CheckpointBody.parse(SignedNote.parse(note).open(verifier))
    if origin is not None and body.origin != origin:
        raise NoteError(f"the checkpoint is from origin {body.origin!r}, not {origin!r}")
    return body


@dataclass(frozen=True)
class StoredCheckpoint:
    tree_size: int
    root: bytes
    note: str
    created_at: datetime
    frontier: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        return {
            "tree_size": self.tree_size,
            "root": base64.b64encode(self.root).decode(),
            "note": self.note,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class Cosignature:
    tree_size: int
    cosigner: str
    key_id: str
    vkey: str
    signature_line: str
    created_at: datetime


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)  # SQLite keeps no offset


def _stored(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.tree_size, bytes(row.root), row.note, _utc(row.created_at), bytes(row.frontier))


def checkpoints(engine: Engine) -> list[StoredCheckpoint]:
    """Every stored checkpoint, smallest tree first."""
    with engine.connect() as conn:
        rows = conn.execute(select(LedgerCheckpoint.__table__).order_by(LedgerCheckpoint.tree_size))
        return [_stored(r) for r in rows]


def _latest(conn: Connection) -> StoredCheckpoint | None:
    row = conn.execute(select(LedgerCheckpoint.__table__).order_by(LedgerCheckpoint.tree_size.desc()).limit(1)).first()
    return _stored(row) if row else None


def latest_checkpoint(engine: Engine) -> StoredCheckpoint | None:
    """The checkpoint of the largest tree, or None before the first."""
    with engine.connect() as conn:
        return _latest(conn)


def checkpoint_at(engine: Engine, tree_size: int) -> StoredCheckpoint | None:
    with engine.connect() as conn:
        row = conn.execute(select(LedgerCheckpoint.__table__).where(LedgerCheckpoint.tree_size == tree_size)).first()
        return _stored(row) if row else None


def ledger_size(engine: Engine) -> int:
    """The newest entry's seq (the tree size a checkpoint made now would have)."""
    with engine.connect() as conn:
        return conn.execute(select(LedgerEntry.seq).order_by(LedgerEntry.seq.desc()).limit(1)).scalar() or 0


def _rows_after(conn: Connection, after: int) -> Iterator[Any]:
    result = conn.execute(  # per statement: Connection.execution_options would stream the tile INSERTs too
        select(LedgerEntry.__table__).where(LedgerEntry.seq > after).order_by(LedgerEntry.seq),
        execution_options={"yield_per": _BATCH},
    )
    try:
        for partition in result.partitions():
            yield from partition
    finally:
        result.close()


def _recheck(row: Any, expected_seq: int, prev: bytes) -> tuple[bytes, bytes, tuple[str, ...]]:
    """(entry_hash, leaf_hash, subjects) of a row after checking it links and hashes as stored."""
    if row.seq != expected_seq:
        raise CheckpointRefused(f"entry {expected_seq:,} is missing (seq jumps to {row.seq:,})", expected_seq)
    if bytes(row.prev_hash) != prev:
        raise CheckpointRefused(f"entry {row.seq:,} does not link to the entry before it", row.seq)
    try:
        draft = stored_entry(row).draft
        h, leaf = entry_hashes(row.seq, draft, prev)
    except Exception as exc:  # undecodable contents were changed
        raise CheckpointRefused(f"entry {row.seq:,} cannot be encoded ({type(exc).__name__})", row.seq) from exc
    if h != bytes(row.entry_hash) or leaf != bytes(row.leaf_hash):
        raise CheckpointRefused(f"entry {row.seq:,} does not hash to its stored hashes", row.seq)
    return h, leaf, draft.subjects


def make_checkpoint(
    engine: Engine, signer: NoteSigner, origin: str, *, now: datetime | None = None
) -> StoredCheckpoint | None:
    """Sign and store a checkpoint of the whole ledger now; None if it has not grown.

    Continues from the newest checkpoint (whose note must verify with ``signer``'s key
    and whose frontier must fold to its root), re-checking only the entries after it.
    Two makers at once store one checkpoint per size (Ed25519 signing is deterministic).
    """
    verifier = signer.verifier
    with engine.connect() as conn:
        last = _latest(conn)  # 1.
        if last is None:
            frontier, prev = merkle.Frontier(), GENESIS_HASH
            builder: tiles.TileBuilder | None = tiles.TileBuilder()
        else:
            frontier, prev = _continue_from(conn, last, verifier, origin)
            builder = tiles.TileBuilder.resume(conn, last.tree_size, last.root)  # 2.
        for row in _rows_after(conn, frontier.size):  # 3.
            prev, leaf, subjects = _recheck(row, frontier.size + 1, prev)
            frontier.append(leaf)
            if builder is not None:
                builder.append(leaf)
                builder.note_subjects(row.seq, subjects)
                builder.flush(conn)
        if builder is not None and frontier.size != (last.tree_size if last else 0):
            builder.flush(conn, final=True)
            conn.commit()
    if frontier.size == (last.tree_size if last else 0):
        return None
    body = CheckpointBody(origin, frontier.size, frontier.root())
    stored = StoredCheckpoint(  # 4.
        body.tree_size, body.root, sign_note(body.text(), signer), now or datetime.now(UTC), frontier.to_bytes()
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(LedgerCheckpoint),
                {
                    "tree_size": stored.tree_size,
                    "root": stored.root,
                    "note": stored.note,
                    "frontier": stored.frontier,
                    "created_at": stored.created_at,
                },
            )
    except IntegrityError:
        existing = checkpoint_at(engine, stored.tree_size)
        if existing is None or existing.root != stored.root:
            raise
        stored = existing
    if builder is None:  # 5.
        try:
            tiles.ensure(engine, stored.tree_size)
        except tiles.TilesMismatch:
            pass  # an entry went missing since step 3: readers rebuild, verify names it
    return stored


def _continue_from(
    conn: Connection, last: StoredCheckpoint, verifier: NoteVerifier, origin: str
) -> tuple[merkle.Frontier, bytes]:
    """The newest checkpoint's frontier and chain head, after checking both against its note."""
    try:
        body = open_checkpoint(last.note, verifier, origin)
    except NoteError as exc:
        raise CheckpointRefused(f"checkpoint {last.tree_size:,} does not verify with the ledger key: {exc}") from exc
    try:
        frontier = merkle.Frontier.from_bytes(last.tree_size, last.frontier)
    except ValueError as exc:
        raise CheckpointRefused(f"checkpoint {last.tree_size:,}'s frontier is malformed") from exc
    if (body.tree_size, body.root) != (last.tree_size, last.root) or frontier.root() != last.root:
        raise CheckpointRefused(f"checkpoint {last.tree_size:,}'s stored root or frontier disagrees with its note")
    head = conn.execute(select(LedgerEntry.__table__).where(LedgerEntry.seq == last.tree_size)).first()
    if head is None:
        raise CheckpointRefused(
            f"entry {last.tree_size:,}, covered by checkpoint {last.tree_size:,}, is missing", last.tree_size
        )
    prev, _leaf, _subjects = _recheck(head, last.tree_size, bytes(head.prev_hash))
    return frontier, prev


def cosignatures(engine: Engine, tree_size: int) -> list[Cosignature]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(LedgerCosignature.__table__)
            .where(LedgerCosignature.tree_size == tree_size)
            .order_by(LedgerCosignature.cosigner, LedgerCosignature.key_id)
        )
        return [
            Cosignature(r.tree_size, r.cosigner, r.key_id, r.vkey, r.signature_line, _utc(r.created_at)) for r in rows
        ]


def add_cosignature(
    engine: Engine, tree_size: int, signature_line: str, vkey: str, *, now: datetime | None = None
) -> Cosignature:
    """Store an auditor's signature line over checkpoint ``tree_size`` once it verifies with ``vkey``.

    The line is a C2SP signed-note Ed25519 signature over the checkpoint's note text
    (what ``accord ledger cosign --sign-with`` or Go's note.Sign produces). NoteError if
    it does not verify; LookupError if there is no such checkpoint. Storing the same
    cosigner's line twice is a no-op.
    """
    checkpoint = checkpoint_at(engine, tree_size)
    if checkpoint is None:
        raise LookupError(f"no checkpoint of tree size {tree_size:,}")
    verifier = NoteVerifier.parse(vkey)
    signature = NoteSignature.parse(signature_line)
    text = SignedNote.parse(checkpoint.note).text
    if not verifier.verifies(text, signature):
        raise NoteError(f"the cosignature does not verify with {verifier.name}'s key over checkpoint {tree_size:,}")
    cosig = Cosignature(
        tree_size,
        verifier.name,
        verifier.key_id.hex(),
        verifier.vkey,
        signature.line.rstrip("\n"),
        now or datetime.now(UTC),
    )
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(LedgerCosignature),
                {
                    "tree_size": cosig.tree_size,
                    "cosigner": cosig.cosigner,
                    "key_id": cosig.key_id,
                    "vkey": cosig.vkey,
                    "signature_line": cosig.signature_line,
                    "created_at": cosig.created_at,
                },
            )
    except IntegrityError:
        pass  # this cosigner already signed this checkpoint
    return cosig


def cosigned_note(engine: Engine, tree_size: int) -> str | None:
    """The checkpoint's note with every stored cosignature line appended (None if no such checkpoint)."""
    checkpoint = checkpoint_at(engine, tree_size)
    if checkpoint is None:
        return None
    note = SignedNote.parse(checkpoint.note)
    for c in cosignatures(engine, tree_size):
        note = note.with_signature(NoteSignature.parse(c.signature_line))
    return note.render()


def load_signer(key_text: str, origin: str, key_file: Path | None = None) -> NoteSigner | None:
    """The ledger's signing key: ``key_text`` if set, else ``key_file`` if it exists, else None.

    ``key_text`` is a signer key (``PRIVATE+KEY+<name>+...``) or the base64 of a 32-byte
    Ed25519 seed, named after ``origin`` (C2SP: the key name should be the origin).
    """
    if key_text.strip():
        return NoteSigner.parse(key_text, default_name=origin)
    if key_file is not None and key_file.is_file():
        return NoteSigner.parse(key_file.read_text(encoding="utf-8"), default_name=origin)
    return None


def signer_from_settings(settings: Settings) -> NoteSigner | None:
    """The configured signing key (ACCORD_LEDGER_SIGNING_KEY), else the state directory's key file, else None."""
    return load_signer(
        settings.ledger_signing_key.get_secret_value(), settings.ledger_origin, settings.state_dir / KEY_FILE_NAME
    )


def verifier_from_settings(settings: Settings) -> NoteVerifier | None:
    """The ledger's public key: ACCORD_LEDGER_VERIFIER_KEY, else the signing key's, else None."""
    if settings.ledger_verifier_key.strip():
        return NoteVerifier.parse(settings.ledger_verifier_key)
    signer = signer_from_settings(settings)
    return signer.verifier if signer else None


def generate_key_file(path: Path, origin: str, *, make_folder: bool = True) -> NoteSigner:
    """Write a new signing key to ``path`` (owner-only permissions); FileExistsError if one is there.

    ``make_folder=False`` (a path the person gave): a missing folder is FileNotFoundError,
    so a mistyped path does not leave a secret key somewhere nobody will look.
    """
    signer = NoteSigner.generate(origin)
    if make_folder:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(signer.skey + "\n")
    return signer
