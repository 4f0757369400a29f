"""Partner side: subscription SDK."""

from consumers.subscription import (
    Disclosure,
    ForeignRecord,
    Retraction,
    Subscription,
    UnknownAgreementVersion,
    partner_topics,
)

__all__ = ["Disclosure", "ForeignRecord", "Retraction", "Subscription", "UnknownAgreementVersion", "partner_topics"]
