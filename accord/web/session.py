"""Signed-in pages: the session cookie, the principal it names, and CSRF tokens for forms.

A browser signs in once with a sign-in link (``/sign-in?token=...``, made by
:func:`consent.tokens.sign_in_link`); Accord then sets a session cookie holding a
fresh token of the same kind (HttpOnly, SameSite=Strict, Secure when the request
came over https, at most 8 hours). Every page reads its principal from that cookie
through :func:`consent.tokens.verify_token`, the same check as the API's bearer
tokens: a deployment plugging in its identity provider changes that one function
(docs/web.md).

Every form carries a CSRF token bound to the session: an HMAC of the session
token under the app's secret, checked with :func:`check_csrf` before the form is
acted on (besides SameSite=Strict, which already keeps other sites' forms out).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Final
from urllib.parse import parse_qs

from fastapi import HTTPException, Request, status

from accord.web.guard import SESSION_COOKIE, session_token
from consent.tokens import Principal, TokenError, check_secret, verify_token

SESSION_TTL_S: Final = 8 * 3600
CSRF_FIELD: Final = "csrf_token"


def _secret(request: Request) -> bytes:
    return check_secret(request.app.state.token_secret)


def page_principal(request: Request) -> Principal | None:
    """Who the session cookie signs in, or None (no cookie, or one that no longer verifies)."""
    token = session_token(request.headers.get("cookie"))
    if token is None:
        return None
    try:
        return verify_token(_secret(request), token)
    except TokenError:
        return None


def require_page_role(request: Request, role: str) -> Principal:
    """The signed-in principal if it has ``role``; 401 (not signed in) or 403 otherwise."""
    who = page_principal(request)
    if who is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, detail="sign in first")
    if who.role != role:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"this page is for {role} users")
    return who


def csrf_token(request: Request) -> str:
    """The CSRF token for this session's forms ('' when not signed in)."""
    token = session_token(request.headers.get("cookie"))
    if token is None:
        return ""
    return hmac.new(_secret(request), b"csrf:" + token.encode(), hashlib.sha256).hexdigest()


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (the guard has already capped its size); first value per name."""
    body = (await request.body()).decode("utf-8", errors="replace")
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail="send the form as urlencoded")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True, max_num_fields=50).items()}


def check_csrf(request: Request, form: Mapping[str, str]) -> None:
    """403 unless the form's CSRF token is this session's."""
    expected = csrf_token(request)
    given = form.get(CSRF_FIELD, "")
    if not expected or not hmac.compare_digest(expected, given):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="the form has expired: reload the page and try again")


__all__ = [
    "CSRF_FIELD",
    "SESSION_COOKIE",
    "SESSION_TTL_S",
    "check_csrf",
    "csrf_token",
    "page_principal",
    "read_form",
    "require_page_role",
]
