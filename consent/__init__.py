"""Citizens' consent: model, precedence rule and store."""

from consent.model import (
    ConsentDecision,
    ConsentRecord,
    InvalidPreference,
    KnownScopes,
    applicable,
    check_preference,
    version,
)
from consent.store import history, record

__all__ = [
    "ConsentDecision",
    "ConsentRecord",
    "InvalidPreference",
    "KnownScopes",
    "applicable",
    "check_preference",
    "history",
    "record",
    "version",
]
