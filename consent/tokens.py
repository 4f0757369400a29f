"""Signed bearer tokens for the consent API (HS256 JWTs).

A citizen's token names their subject key in ``sub`` (e.g. ``nhs:9434765919``);
the API takes the subject from the token and nowhere else. The subject must be a
well-formed subject key (schemas.subject_keys; a bare NHS number is normalised):
a token for ``NHS:...`` or ``nhs:... `` would record preferences the processor
never matches, so it authenticates no one. A staff token carries
no subject. Every token has ``role`` and ``exp``; only HS256 is accepted, so a
token signed with ``none`` or another algorithm is refused.

``TokenError.reason`` is short and never contains claim values, so it can go
into a response body or a log line without leaking a subject key (I6).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import jwt

from schemas.subject_keys import InvalidSubjectKey, normalise

CITIZEN: Final = "citizen"
STAFF: Final = "staff"
ROLES: Final = frozenset({CITIZEN, STAFF})
ALGORITHM: Final = "HS256"
MIN_SECRET_BYTES: Final = 32


class TokenError(Exception):
    """A token that does not authenticate anyone; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Principal:
    role: str
    subject: str | None = None


def check_secret(secret: str | bytes) -> bytes:
    """The secret as bytes; ``ValueError`` when shorter than 32 bytes."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def issue_token(secret: str | bytes, role: str, subject: str | None = None, ttl_s: int = 3600) -> str:
    """A signed token for ``role``; citizens need a ``subject``, staff must not have one."""
    key = check_secret(secret)
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if role == CITIZEN and not subject:
        raise ValueError("a citizen token names a subject")
    if role == STAFF and subject is not None:
        raise ValueError("a staff token names no subject")
    if subject is not None:
        subject = normalise(subject)  # InvalidSubjectKey is a ValueError with the reason
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    now = int(time.time())
    claims: dict[str, object] = {"role": role, "iat": now, "exp": now + int(ttl_s)}
    if subject is not None:
        claims["sub"] = subject
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_token(secret: str | bytes, token: str) -> Principal:
    """The principal a token authenticates, or :class:`TokenError`."""
    key = check_secret(secret)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "role"], "verify_sub": False},
        )
    except jwt.ExpiredSignatureError:
        raise TokenError("expired") from None
    except jwt.InvalidSignatureError:
        raise TokenError("bad signature") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"missing claim {exc.claim}") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("unsupported algorithm") from None
    except jwt.InvalidTokenError:
        raise TokenError("malformed") from None

    role = claims.get("role")
    if role not in ROLES:
        raise TokenError("unknown role")
    sub = claims.get("sub")
    if sub is not None and not isinstance(sub, str):
        raise TokenError("malformed")
    if role == CITIZEN:
        if not sub:
            raise TokenError("citizen token without subject")
        try:
            return Principal(CITIZEN, normalise(sub))
        except InvalidSubjectKey as exc:
            raise TokenError(f"subject is not a well-formed subject key: {exc.reason}") from None
    if sub is not None:
        raise TokenError("staff token with subject")
    return Principal(STAFF, None)
