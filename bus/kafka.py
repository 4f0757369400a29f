"""Factories for confluent-kafka clients, so every client is configured the same way.

Producers are idempotent with ``acks=all`` (the flow, step 1: docs/architecture.md). Consumers never
auto-commit: callers commit after they have done their work, so nothing is lost.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from bus.settings import Settings


def producer(settings: Settings, **overrides: Any) -> Producer:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "none",
    }
    config.update(overrides)
    return Producer(config)


def consumer(settings: Settings, group_id: str, **overrides: Any) -> Consumer:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "group.id": group_id,
        # "latest" is unreliable on the embedded broker (docs/architecture.md) and wrong for a
        # new partner anyway: a new subscriber reads what was disclosed to it.
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
    }
    config.update(overrides)
    return Consumer(config)


def admin(settings: Settings, **overrides: Any) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, **overrides})
