"""Citizens' consent: model, precedence rule and store."""

from consent.model import ConsentDecision, ConsentRecord, applicable, version
from consent.store import history, init_consent, record

__all__ = ["ConsentDecision", "ConsentRecord", "applicable", "history", "init_consent", "record", "version"]
