"""Partner side: subscription SDK."""

from consumers.subscription import Disclosure, Retraction, Subscription, UnknownAgreementVersion, partner_topics

__all__ = ["Disclosure", "Retraction", "Subscription", "UnknownAgreementVersion", "partner_topics"]
