"""A running Accord bus for end-to-end tests: topics, database schema and a real processor."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition
from pydantic import SecretStr
from sqlalchemy import Engine, select

from accord.dev.drain import wait_for_group
from agreements import Agreement, load_dir, recipients_by_type
from bus import kafka
from bus.settings import Settings
from bus.topics import TopicLayout, TopicNames, create_topics
from consumers import Disclosure, Retraction, Subscription
from ledger import LedgerEntry
from producers import Publisher
from producers.synthetic import build_scenario
from tests.conftest import RoleDatabase, fresh_role_database

TEST_PSEUDONYM_KEY = "test-only-pseudonym-key-0123456789abcdef"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    return {
        "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
        "ACCORD_LEDGER_URL": settings.ledger_url,
        "ACCORD_PROCESSOR_GROUP": settings.processor_group,
        "ACCORD_STATE_DIR": str(settings.state_dir),
        "ACCORD_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "ACCORD_HEARTBEAT_INTERVAL_MS": str(settings.heartbeat_interval_ms),
        "ACCORD_LOG_FORMAT": "json",
        "ACCORD_PSEUDONYM_KEY": settings.pseudonym_key.get_secret_value(),
        "ACCORD_BATCH_SIZE": str(settings.batch_size),
        "ACCORD_MAX_EVENT_BYTES": str(settings.max_event_bytes),
        "ACCORD_MAX_STRING_BYTES": str(settings.max_string_bytes),
        "ACCORD_DATABASE_TIMEOUT_S": str(settings.database_timeout_s),
        "ACCORD_HEALTH_PORT": str(settings.health_port),
        "ACCORD_RETRACTION_INTERVAL_S": str(settings.retraction_interval_s),
        "ACCORD_RETRACTION_BUSY": str(settings.retraction_busy),
        "ACCORD_CHECKPOINT_INTERVAL_S": str(settings.checkpoint_interval_s),
        "ACCORD_CHECKPOINT_EVERY_ENTRIES": str(settings.checkpoint_every_entries),
    }


def headers_of(msg: Message) -> dict[str, bytes]:
    """A record's headers by name. The client's type allows str or None values; Accord writes bytes."""
    return dict(cast(list[tuple[str, bytes]], msg.headers() or []))


def read_topic(settings: Settings, topic: str, idle_polls: int = 3) -> list[tuple[dict[str, bytes], bytes | None]]:
    """(headers, value) of every record on ``topic``, read from its start until it has been idle.

    The partitions are assigned, not subscribed to: joining a group cost about 3 s a read.
    """
    consumer = kafka.consumer(settings, f"{settings.topic_prefix}check.{uuid.uuid4().hex[:8]}")
    meta = consumer.list_topics(topic, timeout=10).topics.get(topic)
    partitions = sorted(meta.partitions) if meta is not None and meta.error is None else []
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
    seen: list[tuple[dict[str, bytes], bytes | None]] = []
    idle = 0
    try:
        while idle < idle_polls:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                continue
            idle = 0
            assert msg.error() is None, msg.error()
            seen.append((headers_of(msg), msg.value()))
    finally:
        consumer.close()
    return seen


def make_settings(bootstrap: str, ledger_url: str, state_dir: Path) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    return Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=prefix,
        ledger_url=ledger_url,
        processor_group=f"{prefix}processor",
        state_dir=state_dir,
        session_timeout_ms=2000,
        heartbeat_interval_ms=500,
        pseudonym_key=SecretStr(TEST_PSEUDONYM_KEY),
    )


@dataclass
class Bus:
    settings: Settings
    engine: Engine
    agreements: list[Agreement]
    processor: subprocess.Popen | None = None

    @property
    def names(self) -> TopicNames:
        return TopicNames(self.settings.topic_prefix)

    def create_topics(self) -> None:
        create_topics(
            kafka.admin(self.settings),
            self.names.catalogue(recipients_by_type(self.agreements), TopicLayout.of(self.settings)),
        )

    def start_processor(self) -> None:
        log = (self.settings.state_dir / "processor.log").open("ab")
        self.processor = subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "run", "processor"],
            env={**os.environ, **settings_env(self.settings)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def stop_processor(self) -> None:
        if self.processor and self.processor.poll() is None:
            self.processor.terminate()
            try:
                self.processor.wait(15)
            except subprocess.TimeoutExpired:
                self.processor.kill()
                self.processor.wait()

    def publish(self, events: list[tuple[str, Any]], timeout: float = 60) -> None:
        """Publish (type, record-or-bytes) pairs and wait until the processor has committed past them."""
        publisher = Publisher(self.settings)
        for event_type, payload in events:
            if isinstance(payload, bytes):
                publisher.publish_raw(event_type, payload, key=b"raw")
            else:
                publisher.publish(event_type, payload)
        report = publisher.flush()
        assert not report.failed, report.failed
        wait_for_group(self.settings, self.settings.processor_group, report.end_offsets, timeout=timeout)

    def everything(self, partner: str) -> list[Disclosure | Retraction]:
        """Everything on the partner's topics that the processor wrote, read with a fresh group until idle
        (a test's own foreign records are passed over, as the SDK passes them over)."""
        group = f"{self.settings.topic_prefix}{partner}.{uuid.uuid4().hex[:6]}"
        with Subscription(self.settings, partner, self.agreements, group_id=group) as sub:
            return list(sub.iter(idle_timeout=1.5, on_foreign=lambda _: None))

    def received(self, partner: str) -> list[Disclosure]:
        return [d for d in self.everything(partner) if isinstance(d, Disclosure)]

    def retractions(self, partner: str) -> list[Retraction]:
        return [d for d in self.everything(partner) if isinstance(d, Retraction)]

    def ledger(self, **where: Any) -> list[Any]:
        query = select(LedgerEntry)
        for column, value in where.items():
            query = query.where(getattr(LedgerEntry, column) == value)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(LedgerEntry.seq)).all())


def start_bus(bootstrap: str, db: RoleDatabase, state_dir: Path) -> Bus:
    """The processor connects as the database's APP role (SELECT and INSERT only), as in
    production; ``bus.engine`` is the OWNER's, for the tests' own set-up and tampering.
    The tables are already set up (fresh_role_database)."""
    settings = make_settings(bootstrap, db.app_url, state_dir)
    bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
    bus.create_topics()
    bus.start_processor()
    return bus


@contextmanager
def running_bus(bootstrap: str, state_dir: Path) -> Iterator[Bus]:
    """A bus on a fresh owner/app-role database, its processor stopped afterwards."""
    with fresh_role_database() as db:
        bus = start_bus(bootstrap, db, state_dir)
        try:
            yield bus
        finally:
            bus.stop_processor()


def synthetic_events(event_type: str, agency: str | None = None, n: int = 1, where=lambda record: True) -> list[dict]:
    """Fresh synthetic events (new ids, new people) of one type, from as many scenarios as it takes."""
    found: list[dict] = []
    for _ in range(20):
        scenario = build_scenario(n_events=80, seed=random.SystemRandom().randrange(1 << 30))
        found += [
            e.record
            for e in scenario.events
            if e.event_type == event_type and (agency is None or e.agency == agency) and where(e.record)
        ]
        if len(found) >= n:
            return found[:n]
    raise AssertionError(f"fewer than {n} synthetic {event_type} events fit")
