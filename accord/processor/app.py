"""The composition root of ``accord run processor``: every part built and wired in one place.

The CLI only parses its arguments and calls :func:`run_processor`; tests and other
front ends can build the same processor from a :class:`Settings`.
"""

from __future__ import annotations

import gc
import signal
import time
from types import FrameType

import structlog
from confluent_kafka import Consumer
from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from accord.processor.agreement_feed import AgreementSet, FeedFollower
from accord.processor.background import BackgroundWork
from accord.processor.handler import BatchHandler
from accord.processor.health import Health
from accord.processor.loop import SharingLoop, Timer
from accord.processor.metrics import ProcessorMetrics
from accord.processor.outage import backoff
from bus.settings import Settings
from bus.topics import TopicNames
from schemas.compatibility import require_compatible
from schemas.validation import Limits

log = structlog.get_logger("accord.processor")


def run_processor(settings: Settings) -> int:
    """The composition root of ``accord run processor``: wire the parts, wait for the services, loop.

    1. refuse a catalogue whose versions its compatibility modes forbid (``accord schemas check``)
       and client settings librdkafka refuses (``ACCORD_KAFKA_*``);
       load the agreements and partners; refuse to start without a pseudonym key when one is needed;
    2. open the database as the application role, waiting while it is unreachable, and refuse
       a pseudonym key other than the one in force (ledger/pseudonym_keys.py);
    3. build the feed, the handler, the receipts recorder, the control-plane timers and
       the retraction scan beside the loop, all counting into one set of metrics, served
       with the health checks on ACCORD_HEALTH_PORT;
    4. read the agreements feed to its end, then subscribe and loop until SIGTERM or SIGINT.
    """
    from accord.processor.checkpointer import Checkpointer, signer_from_settings
    from accord.processor.control_lease import lease_for
    from accord.processor.health import serve
    from accord.processor.receipts import ReceiptRecorder
    from accord.processor.sweeper import RetractionSweeper
    from accord.provision import require_app_role
    from accord.sharing.pseudonymise import key_check
    from agreements import IdentifierTreatment, lapsed, load_dir
    from agreements.partners import load_partners
    from agreements.recipient_schemas import recipient_catalogue
    from bus import kafka
    from bus.connection_guard import guard, psycopg_connect_args
    from bus.database import engine_for
    from ledger.pseudonym_keys import require_key

    # 1.
    require_compatible()
    kafka.check_settings(settings)  # a bad ACCORD_KAFKA_* is one line now, not after the database answers
    agreements = load_dir(settings.agreements_dir, partners_file=settings.partners_file)
    for note in lapsed(agreements):
        log.warning("agreement_expired", note=note)
    pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
    if not pseudonym_key and any(a.identifier_treatment is IdentifierTreatment.PSEUDONYMISED for a in agreements):
        raise ValueError("an agreement pseudonymises identifiers; set ACCORD_PSEUDONYM_KEY")
    partner_classes = load_partners(settings.partners_file)
    names = TopicNames(settings.topic_prefix)
    health = Health()
    metrics = ProcessorMetrics(health)
    if settings.health_port:
        serve(health, settings.api_host, settings.health_port, metrics.registry)

    stop = {"now": False}
    loop: SharingLoop | None = None

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop["now"] = True
        if loop is not None:
            loop.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # 2.
    engine = engine_for(settings)
    if engine.dialect.name == "postgresql":
        guard(engine, settings.database_timeout_s)
    attempt = 0
    while True:
        try:
            # The bus appends only: refuse to run as the ledger's owner, a superuser, or a
            # role that could UPDATE, DELETE or TRUNCATE it (PostgreSQL; SQLite is dev-only).
            require_app_role(engine)
            if pseudonym_key:  # another key than the one in force would give partners other pseudonyms
                require_key(engine, key_check(pseudonym_key))
            break
        except (OperationalError, InterfaceError) as exc:
            if stop["now"]:
                return 0
            delay = backoff(attempt)
            health.beat()
            health.waiting("database", type(exc).__name__)
            log.warning("waiting", service="database", error=type(exc).__name__, retry_in_s=delay)
            time.sleep(delay)
            attempt += 1

    # 3.
    agreement_set = AgreementSet(
        agreements, recipient_catalogue(agreements), partners=partner_classes, partners_file=settings.partners_file
    )
    producer = kafka.renewing_producer(settings, watch_reports=False)  # the handler notes its refusals
    handler = BatchHandler(
        agreement_set,
        engine,
        producer,
        names,
        partner_classes,
        pseudonym_key,
        Limits(settings.max_event_bytes, settings.max_string_bytes),
        metrics=metrics,
    )
    sweeper = RetractionSweeper(
        engine, agreement_set, kafka.renewing_producer(settings), names, partner_classes, metrics=metrics
    )
    # The sweep in three: the consent relay and the sending of notices on the loop's timers
    # (sending needs no database, so it is asked often, and the batch in flight is settled
    # for it only when notices are ready); what only reads and appends the ledger
    # (retracting ended agreements, reading the notices to send) beside the loop.
    timers: list[Timer] = [
        ("retraction_sweep", settings.retraction_interval_s, sweeper.relay),
        ("retraction_notices", min(settings.retraction_interval_s, 0.1), sweeper.send_notices, sweeper.notices_ready),
    ]
    background = [
        BackgroundWork("retraction_scan", settings.retraction_interval_s, sweeper.scan, busy=settings.retraction_busy)
    ]
    signer = signer_from_settings(settings)
    if signer is None:
        log.warning(
            "ledger_checkpoints_off",
            reason="no signing key: set ACCORD_LEDGER_SIGNING_KEY or run `accord ledger keygen`",
        )
    else:
        checkpointer = Checkpointer(
            engine,
            signer,
            settings.ledger_origin,
            kafka.renewing_producer(settings),
            names,
            settings.checkpoint_every_entries,
            settings.checkpoint_interval_s,
            metrics=metrics,
        )
        timers.append(("checkpoint", min(settings.checkpoint_interval_s, 1.0), checkpointer.tick))
    consumer = kafka.consumer(settings, settings.processor_group, **{"fetch.wait.max.ms": settings.fetch_wait_max_ms})
    loop = SharingLoop(
        consumer,
        FeedFollower(settings, agreement_set, metrics=metrics),
        handler,
        names,
        health,
        batch_size=settings.batch_size,
        batch_window_s=settings.batch_window_s,
        receipts=ReceiptRecorder(engine),
        timers=timers,
        background=background,
        lease=lease_for(engine, psycopg_connect_args(settings.database_timeout_s)),
        metrics=metrics,
        # While no batch proves them reachable, /readyz asks the services itself.
        probes={
            "database": lambda: _ping(engine),
            "broker": lambda: consumer.list_topics(names.agreements, timeout=2.0),
        },
    )
    loop.stopping = stop["now"]
    log.info("processor_starting", group=settings.processor_group, agreements=len(agreements))
    # Everything built so far (modules, compiled codecs, agreements) lives as long as the
    # process: moved out of the collector's view, so full collections do not walk it again;
    # and a batch allocates tens of thousands of short-lived objects, so the youngest
    # generation is collected per 20,000 allocations, not 700. Measured (make bench, PostgreSQL,
    # 1 worker): 89 -> 77 CPU us/event, 8.1k -> 9.1k events/s.
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)
    # 4.
    try:
        loop.run()
    finally:
        loop.close(leave_group=settings.leave_group_on_stop)
        if not settings.leave_group_on_stop:
            LINGERING.append(consumer)  # destroying it would send LeaveGroup; the process exit drops it
        producer.flush(10)
        log.info("processor_stopped")
    return 0


def _ping(engine: Engine) -> None:
    """One round trip to the database (the readiness probe's question)."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")


# Consumers kept until the process ends without leaving their group (ACCORD_LEAVE_GROUP_ON_STOP);
# `accord run` ends such a process with os._exit, so no destructor sends LeaveGroup.
LINGERING: list[Consumer] = []
