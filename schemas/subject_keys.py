"""Subject keys: the one place that says what a well-formed subject key is.

A subject key names the person an event, a consent preference or a ledger entry
is about. Consent is looked up by exact key, so a key recorded in any other form
than the one the processor derives (``accord.sharing.subject_key``) never
matches, and a citizen who believes they opted out has not. Everything that
takes a key from a person (the consent CLI and API, subject reports) therefore
passes it through :func:`normalise`, which either returns the canonical key or
refuses with a reason a person can act on.

Forms (case matters; no spaces anywhere):

- ``nhs:<NHS number>``: ten digits passing the Modulus 11 check. A bare ten-digit
  NHS number is accepted and becomes ``nhs:<number>``: the only normalisation.
- ``pnc:<PNC id>``: a Police National Computer id, ``YY/NNNNNNX``: two digits of
  year, a slash, a serial of one to seven digits, and an upper-case check letter
  (any letter but I, O and S). The check letter itself is not verified: the
  synthetic data draws it at random.
- ``local:<agency>:<id>``: an agency's own identifier; the agency is a lower-case
  slug (as in the agreements), the id any printable ASCII without spaces, at most
  64 characters.

An event's ``pnc_id`` and ``local_id`` fields are held to these forms too
(:func:`identifier_problem`, from ``schemas.validation``): a key derived from a
malformed one could never match a consent record, and one too long for an index
would stop the ledger's writes.

A reason never repeats the input (it may reach a log or a response body, I6).
"""

from __future__ import annotations

import re
from typing import Final

from schemas.nhs_number import is_valid

__all__ = ["KINDS", "MAX_LENGTH", "MAX_LOCAL_ID", "InvalidSubjectKey", "identifier_problem", "kind", "normalise"]

KINDS: Final = ("nhs", "pnc", "local")
MAX_LENGTH: Final = 128  # the width of consent_records.subject_key and of a token's subject
EXAMPLES: Final = "nhs:9434765919, pnc:26/123456A or local:<agency>:<id>"

_PNC = re.compile(r"\d{2}/\d{1,7}[A-HJ-NP-RT-Z]")
_AGENCY = re.compile(r"[a-z0-9][a-z0-9_-]*")
_LOCAL_ID = re.compile(r"[!-~]+")  # printable ASCII, no space
MAX_LOCAL_ID: Final = 64  # with "local:" and an agency id, well within MAX_LENGTH

_PNC_FORM = "a PNC id is two digits of year, a slash, the serial number and an upper-case check letter, e.g. 26/123456A"
_LOCAL_FORM = f"a local id is printable ASCII without spaces, at most {MAX_LOCAL_ID} characters"


def identifier_problem(scheme: str, value: str) -> str | None:
    """Why an event's identifier of ``scheme`` (``pnc`` or ``local``) cannot make a subject key; None if it can."""
    if scheme == "pnc":
        return None if _PNC.fullmatch(value) else _PNC_FORM
    if scheme == "local":
        return None if len(value) <= MAX_LOCAL_ID and _LOCAL_ID.fullmatch(value) else _LOCAL_FORM
    raise ValueError(f"no identifier rule for scheme {scheme!r}")


class InvalidSubjectKey(ValueError):
    """A subject key that is not well formed; ``reason`` says why and what to write instead."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _nhs(number: str) -> str:
    if not (len(number) == 10 and number.isascii() and number.isdigit()):
        raise InvalidSubjectKey("an NHS number is 10 digits, e.g. nhs:9434765919")
    if not is_valid(number):
        raise InvalidSubjectKey(
            "not a valid NHS number: its last digit is not the Modulus 11 check digit of the first nine "
            "(check it for a mistyped digit)"
        )
    return f"nhs:{number}"


def normalise(text: str) -> str:
    """The canonical subject key for ``text``, or :class:`InvalidSubjectKey` with the reason."""
    if not isinstance(text, str) or text == "":
        raise InvalidSubjectKey(f"the subject key is empty: give one such as {EXAMPLES}")
    if any(ch.isspace() for ch in text):
        raise InvalidSubjectKey("the subject key contains spaces: write it without any, e.g. nhs:9434765919")
    if len(text) > MAX_LENGTH:
        raise InvalidSubjectKey(f"the subject key is longer than {MAX_LENGTH} characters")
    if text.isascii() and text.isdigit():
        return _nhs(text)
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise InvalidSubjectKey(f"the subject key has no scheme: write it as {EXAMPLES}")
    if scheme not in KINDS:
        if scheme.lower() in KINDS:
            raise InvalidSubjectKey(f"the scheme must be lower case: write {scheme.lower()}: not {scheme}:")
        raise InvalidSubjectKey(f"unknown subject key scheme: use one of {', '.join(k + ':' for k in KINDS)}")
    if scheme == "nhs":
        return _nhs(rest)
    if scheme == "pnc":
        if not _PNC.fullmatch(rest):
            raise InvalidSubjectKey(
                "a PNC id is two digits of year, a slash, the serial number and an upper-case check letter, "
                "e.g. pnc:26/123456A"
            )
        return text
    agency, sep, local_id = rest.partition(":")
    if not (sep and _AGENCY.fullmatch(agency) and identifier_problem("local", local_id) is None):
        raise InvalidSubjectKey(
            "a local key is local:<agency>:<id>, the agency a lower-case id such as salford-council, "
            "e.g. local:salford-council:LCS123456"
        )
    return text


def kind(key: str) -> str:
    """The scheme of a subject key (``nhs``, ``pnc`` or ``local``); refuses a malformed key."""
    return normalise(key).partition(":")[0]
