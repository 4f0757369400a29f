"""Agreements as a feed: publish new versions to a compacted topic; the processor follows it.

A new version takes effect without a restart. Within one agreement id the
highest version received supersedes the others for new decisions; every
version stays known so that retractions and explanations can name it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from accord import kafka
from accord.settings import Settings
from accord.topics import TopicNames, create_topics
from agreements import Agreement, recipients_by_type
from agreements.recipient_schemas import recipient_catalogue
from schemas.serde import Catalogue


class AgreementSet:
    """The agreements the processor decides with; safe to update from another thread."""

    def __init__(self, agreements: Iterable[Agreement], catalogue: Catalogue) -> None:
        self._lock = threading.Lock()
        self._all: dict[str, Agreement] = {}
        self.catalogue = catalogue
        for a in agreements:
            self._all[a.key] = a

    def current(self) -> list[Agreement]:
        """The newest version of each agreement id."""
        with self._lock:
            newest: dict[str, Agreement] = {}
            for a in self._all.values():
                if a.id not in newest or a.version > newest[a.id].version:
                    newest[a.id] = a
            return list(newest.values())

    def by_key(self) -> dict[str, Agreement]:
        with self._lock:
            return dict(self._all)

    def apply(self, payload: bytes) -> Agreement:
        """Take one published agreement; raises ValueError (pydantic or schema) for a bad one."""
        agreement = Agreement.model_validate_json(payload)
        with self._lock:
            known = self._all.get(agreement.key)
            if known == agreement:
                return agreement
            if known is not None:
                raise ValueError(f"{agreement.key} was already published with different content; publish a new version")
            # Registers the recipient schemas; refuses fields missing from the event schema.
            recipient_catalogue([agreement], base=self.catalogue)
            self._all[agreement.key] = agreement
        return agreement


def publish_agreements(settings: Settings, agreements: list[Agreement]) -> int:
    """Create any partner topics the agreements need, then publish them keyed by id@version."""
    names = TopicNames(settings.topic_prefix)
    create_topics(kafka.admin(settings), names.catalogue(recipients_by_type(agreements)))
    producer = kafka.producer(settings)
    errors: list[str] = []
    for a in agreements:
        producer.produce(
            names.agreements,
            key=a.key.encode(),
            value=a.model_dump_json().encode(),
            on_delivery=lambda err, _m: errors.append(err.str()) if err else None,
        )
    producer.flush(30)
    if errors:
        raise RuntimeError(f"agreements not published: {errors[:3]}")
    return len(agreements)
