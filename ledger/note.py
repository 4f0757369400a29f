"""C2SP signed notes with Ed25519 keys (https://c2sp.org/signed-note): pure, no I/O.

A signed note is a text ending in a newline, a blank line, then one or more lines
``— <key name> <base64(4-byte key id || signature)>`` (U+2014 EM DASH, a space). The
signature covers the text including its final newline, not the blank line. The key
id is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key),
0x01 being the Ed25519 signature type. Keys are written as Go's sumdb/note writes them:

- verifier key (``vkey``, public): ``<name>+<8 hex digits of key id>+<base64(0x01 || public key)>``
- signer key (secret): ``PRIVATE+KEY+<name>+<8 hex digits>+<base64(0x01 || 32-byte seed)>``

This format is what transparency logs, witnesses and Go's ``golang.org/x/mod/sumdb/note``
read, so an auditor can check the ledger's checkpoints with tools nobody here wrote.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "ALG_ED25519",
    "SIGNATURE_PREFIX",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "SignedNote",
    "key_id",
    "sign_note",
]

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "  # EM DASH, SPACE: bytes E2 80 94 20
_PRIVATE_PREFIX = "PRIVATE+KEY+"
_MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A malformed note or key, or a signature that does not verify."""


def key_id(name: str, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4], the Ed25519 key id of signed-note."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _check_name(name: str) -> str:
    if not name or any(c.isspace() or c == "+" for c in name):
        raise NoteError("a key name must be non-empty, without spaces or '+'")
    return name


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"{what} is not valid base64") from exc


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NoteVerifier:
    """A public key that checks signature lines: its name, key id and 32-byte Ed25519 key."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> NoteVerifier:
        if len(public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")
        return cls(_check_name(name), key_id(name, public_key), public_key)

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Read ``<name>+<hex key id>+<base64(0x01 || public key)>``."""
        parts = vkey.strip().split("+", 2)  # base64 may itself hold '+'; names may not
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hex key id>+<base64 key>")
        name, hex_id, b64 = parts
        key = _b64decode(b64, "the verifier key")
        if len(key) != 33 or key[0] != ALG_ED25519:
            raise NoteError("only Ed25519 verifier keys (type 0x01, 32 bytes) are supported")
        verifier = cls.from_public_key(name, key[1:])
        if hex_id.lower() != verifier.key_id.hex():
            raise NoteError("the verifier key's id does not match its name and key")
        return verifier

    @property
    def vkey(self) -> str:
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"

    def verifies(self, text: str, signature: NoteSignature) -> bool:
        """Whether ``signature`` is this key's (name and id match) and is valid over ``text``."""
        if signature.name != self.name or signature.key_id != self.key_id:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature.signature, text.encode())
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class NoteSigner:
    """A secret Ed25519 key with its name; signs note texts."""

    name: str
    seed: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(self.seed) != 32:
            raise NoteError("an Ed25519 seed is 32 bytes")

    def __repr__(self) -> str:  # never print the seed
        return f"NoteSigner(name={self.name!r}, key_id={self.verifier.key_id.hex()})"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        seed = Ed25519PrivateKey.generate().private_bytes_raw()
        return cls(name, seed)

    @classmethod
    def parse(cls, text: str, default_name: str = "") -> NoteSigner:
        """Read ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>``, or a bare base64 seed named ``default_name``."""
        text = text.strip()
        if text.startswith(_PRIVATE_PREFIX):
            parts = text[len(_PRIVATE_PREFIX) :].split("+", 2)
            if len(parts) != 3:
                raise NoteError("a signer key is PRIVATE+KEY+<name>+<hex key id>+<base64 key>")
            name, hex_id, b64 = parts
            key = _b64decode(b64, "the signer key")
            if len(key) != 33 or key[0] != ALG_ED25519:
                raise NoteError("only Ed25519 signer keys (type 0x01, 32-byte seed) are supported")
            signer = cls(_check_name(name), key[1:])
            if hex_id.lower() != signer.verifier.key_id.hex():
                raise NoteError("the signer key's id does not match its name and key")
            return signer
        seed = _b64decode(text, "the signing key")
        if len(seed) != 32:
            raise NoteError("a bare signing key is the base64 of a 32-byte Ed25519 seed")
        return cls(_check_name(default_name), seed)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def verifier(self) -> NoteVerifier:
        return NoteVerifier.from_public_key(self.name, _raw_public(self.private_key.public_key()))

    @property
    def skey(self) -> str:
        """The secret key in sumdb/note's text form (keep it secret)."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.seed).decode()
        return f"{_PRIVATE_PREFIX}{self.name}+{self.verifier.key_id.hex()}+{encoded}"

    def signature(self, text: str) -> NoteSignature:
        _check_text(text)
        return NoteSignature(self.name, self.verifier.key_id, self.private_key.sign(text.encode()))


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, 4-byte key id, signature bytes."""

    name: str
    key_id: bytes
    signature: bytes

    @classmethod
    def parse(cls, line: str) -> NoteSignature:
        """Read ``— <name> <base64(key id || signature)>`` (with or without the final newline)."""
        line = line.removesuffix("\n")
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteError("a signature line starts with an em dash (U+2014) and a space")
        rest = line[len(SIGNATURE_PREFIX) :]
        name, sep, b64 = rest.partition(" ")
        if not sep or " " in b64:
            raise NoteError("a signature line is '— <key name> <base64 signature>'")
        _check_name(name)
        raw = _b64decode(b64, "the signature")
        if len(raw) < 5:
            raise NoteError("a signature holds a 4-byte key id and the signature")
        return cls(name, raw[:4], raw[4:])

    @property
    def line(self) -> str:
        return f"{SIGNATURE_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("a note's text ends with a newline")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("a note contains no control characters other than newline")


@dataclass(frozen=True)
class SignedNote:
    """A note split into its signed text and its signature lines."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, note: str) -> SignedNote:
        """Split at the LAST blank line, as the spec says; every line after it is a signature."""
        if any(ord(c) < 0x20 and c != "\n" for c in note):
            raise NoteError("a note contains no control characters other than newline")
        cut = note.rfind("\n\n")
        if cut < 0:
            raise NoteError("a signed note has a blank line between text and signatures")
        text, sigs = note[: cut + 1], note[cut + 2 :]
        if not sigs.endswith("\n"):
            raise NoteError("a signed note ends with a newline")
        lines = sigs[:-1].split("\n")
        if len(lines) > _MAX_SIGNATURES:
            raise NoteError(f"more than {_MAX_SIGNATURES} signatures")
        return cls(text, tuple(NoteSignature.parse(line) for line in lines))

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line for s in self.signatures)

    def open(self, verifier: NoteVerifier) -> str:
        """The text, if a signature by ``verifier`` verifies; NoteError otherwise.

        Lines from other keys are ignored; a failing line from this key rejects the note.
        """
        mine = [s for s in self.signatures if s.name == verifier.name and s.key_id == verifier.key_id]
        if not mine:
            raise NoteError(f"not signed by {verifier.name} (key id {verifier.key_id.hex()})")
        if not all(verifier.verifies(self.text, s) for s in mine):
            raise NoteError(f"the signature of {verifier.name} does not verify")
        return self.text

    def with_signature(self, signature: NoteSignature) -> SignedNote:
        return SignedNote(self.text, (*self.signatures, signature))


def sign_note(text: str, signer: NoteSigner) -> str:
    """The signed note: text, blank line, one signature line."""
    return SignedNote(text, (signer.signature(text),)).render()
