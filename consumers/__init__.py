"""Partner side: subscription SDK."""

from consumers.subscription import Disclosure, Subscription, partner_topics

__all__ = ["Disclosure", "Subscription", "partner_topics"]
