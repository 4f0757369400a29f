"""Partner side: subscription SDK."""

from consumers.subscription import Disclosure, Retraction, Subscription, partner_topics

__all__ = ["Disclosure", "Retraction", "Subscription", "partner_topics"]
