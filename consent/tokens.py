"""Signed bearer tokens for the consent API and Accord's pages (HS256 JWTs).

A citizen's token names their subject key in ``sub`` (e.g. ``nhs:9434765919``);
the API takes the subject from the token and nowhere else. The subject must be a
well-formed subject key (schemas.subject_keys; a bare NHS number is normalised):
a token for ``NHS:...`` or ``nhs:... `` would record preferences the processor
never matches, so it authenticates no one. A staff token carries
no subject. Only HS256 is accepted, so a token signed with ``none`` or another
algorithm is refused.

Every token has ``role`` (a string), ``iat`` and ``exp`` (numbers), and lives at
most :data:`MAX_LIFETIME_S` (24 hours) from ``iat`` to ``exp``; an ``iat`` in the
future (beyond a minute's clock skew) is refused. A claim of the wrong type (a
``role`` that is a list, a ``sub`` with a NUL or a lone surrogate) is an invalid
token, never an error of the server.

:func:`verify_token` is the one place a credential becomes a :class:`Principal`:
the API's bearer tokens, the pages' session cookie and the one-time sign-in link
all go through it. A deployment that signs people in with its identity provider
(OIDC; NHS login for citizens) changes this function, or the token's issuer, and
nothing else (docs/web.md).

``TokenError.reason`` is short and never contains claim values, so it can go
into a response body or a log line without leaking a subject key (I6).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import jwt

from schemas.subject_keys import InvalidSubjectKey, normalise

CITIZEN: Final = "citizen"
STAFF: Final = "staff"
ROLES: Final = frozenset({CITIZEN, STAFF})
ALGORITHM: Final = "HS256"
MIN_SECRET_BYTES: Final = 32
MAX_LIFETIME_S: Final = 24 * 3600  # exp - iat, at most
CLOCK_SKEW_S: Final = 60  # how far in the future an iat may be
SIGN_IN_TTL_S: Final = 15 * 60  # a sign-in link's token
SIGN_IN_PATH: Final = "/sign-in"


class TokenError(Exception):
    """A token that does not authenticate anyone; ``reason`` says why, briefly."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Principal:
    role: str
    subject: str | None = None
    token_id: str | None = None  # the token's jti, when it has one (sign-in links are used once by it)
    expires_at: float | None = None  # the token's exp


def check_secret(secret: str | bytes) -> bytes:
    """The secret as bytes; ``ValueError`` when shorter than 32 bytes."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def issue_token(
    secret: str | bytes, role: str, subject: str | None = None, ttl_s: int = 3600, *, token_id: str | None = None
) -> str:
    """A signed token for ``role``; citizens need a ``subject``, staff must not have one.

    ``ttl_s`` is at most :data:`MAX_LIFETIME_S`; ``token_id`` becomes the ``jti`` claim.
    """
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
    if ttl_s > MAX_LIFETIME_S:
        raise ValueError(f"ttl_s must be at most {MAX_LIFETIME_S} seconds (24 hours)")
    now = int(time.time())
    claims: dict[str, object] = {"role": role, "iat": now, "exp": now + int(ttl_s)}
    if subject is not None:
        claims["sub"] = subject
    if token_id is not None:
        claims["jti"] = token_id
    return jwt.encode(claims, key, algorithm=ALGORITHM)


@dataclass(frozen=True)
class SignIn:
    """A token and the one-time sign-in link that carries it."""

    token: str
    link: str
    expires_in_s: int


def sign_in_link(
    secret: str | bytes,
    role: str,
    subject: str | None = None,
    base_url: str = "http://127.0.0.1:8000",
    ttl_s: int = SIGN_IN_TTL_S,
) -> SignIn:
    """A fresh token (with a ``jti``, so the pages accept it once) and ``<base_url>/sign-in?token=...``.

    For ``accord consent token --subject ...|--staff`` and the demo: the link signs
    the browser in (a session cookie) and is spent; the token also works as a bearer
    token on the API until it expires.
    """
    token = issue_token(secret, role, subject, ttl_s, token_id=uuid.uuid4().hex)
    return SignIn(token, f"{base_url.rstrip('/')}{SIGN_IN_PATH}?token={quote(token, safe='')}", ttl_s)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _clean_text(value: str) -> bool:
    """No NUL or other control character, and encodable as UTF-8 (no lone surrogate)."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def verify_token(secret: str | bytes, token: str, *, now: float | None = None) -> Principal:
    """The principal a token authenticates, or :class:`TokenError`."""
    key = check_secret(secret)
    if not isinstance(token, str) or not token.isascii() or len(token) > 4096:
        raise TokenError("malformed")
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            options={"require": ["exp", "role"], "verify_sub": False, "verify_iat": False, "verify_jti": False},
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
    except Exception:  # noqa: BLE001 - a token the library cannot even parse authenticates no one
        raise TokenError("malformed") from None

    role = claims.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise TokenError("unknown role")
    sub = claims.get("sub")
    if sub is not None and (not isinstance(sub, str) or not _clean_text(sub)):
        raise TokenError("malformed")
    if role == CITIZEN:
        if not sub:
            raise TokenError("citizen token without subject")
        try:
            subject: str | None = normalise(sub)
        except InvalidSubjectKey as exc:
            raise TokenError(f"subject is not a well-formed subject key: {exc.reason}") from None
    elif sub is not None:
        raise TokenError("staff token with subject")
    else:
        subject = None

    exp, iat = claims["exp"], claims.get("iat")
    if iat is None:
        raise TokenError("missing claim iat")
    if not _number(iat) or not _number(exp):
        raise TokenError("malformed")
    current = time.time() if now is None else now
    if iat > current + CLOCK_SKEW_S:
        raise TokenError("issued in the future")
    if exp - iat > MAX_LIFETIME_S:
        raise TokenError("lifetime longer than 24 hours")
    jti = claims.get("jti")
    if jti is not None and (not isinstance(jti, str) or not jti.isascii() or not jti.isalnum() or len(jti) > 64):
        raise TokenError("malformed")
    return Principal(role, subject, jti, float(exp))
