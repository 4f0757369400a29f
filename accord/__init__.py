"""Accord: an event-driven data-sharing bus with a consent ledger for public services."""

__version__ = "0.1.0"
