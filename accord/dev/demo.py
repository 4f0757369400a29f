"""``accord demo``: the whole flow on the embedded stack, with a printed summary.

Brings the broker up if needed, creates topics, sets the database up (SQLite in the
state folder, or PostgreSQL: ``accord ledger init`` as the owner, everything else as
the application role), records some citizens' consent choices, publishes a synthetic
scenario (with malformed records), runs the real processor until it has committed past
everything published, consumes as each partner, and verifies the ledger.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError

import consent
from accord.dev import devstack
from accord.dev.drain import committed, wait_for_group
from accord.processor.checkpointer import publish_checkpoint, signer_from_settings, verifier_from_settings
from accord.provision import LedgerRoleError, require_app_role, setup_database
from accord.sharing.decide import subject_key
from agreements import load_dir, recipients_by_type
from agreements.partners import load_partners
from bus import headers as header
from bus import kafka
from bus.database import app_role_of, describe_database_error, engine_for, owner_engine_for
from bus.settings import Settings
from bus.topics import TopicLayout, TopicNames, create_topics
from consumers import Disclosure, Subscription
from ledger import LedgerEntry, verify
from ledger.checkpoint import KEY_FILE_NAME, generate_key_file, latest_checkpoint, make_checkpoint
from producers import Publisher
from producers.synthetic import Scenario, build_scenario

# A stage's progress: (total or None, what) -> a context giving tick(n); the CLI passes one that
# draws on a terminal only (accord/cli/progress.py). Counts only, never a record's contents.
Progress = Callable[[int | None, str], AbstractContextManager[Callable[[int], None]]]


@contextmanager
def _silent(total: int | None, what: str) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def _wait_for_processor(
    settings: Settings, targets: dict[tuple[str, int], int], progress: Progress, timeout: float
) -> None:
    """Wait for the processor's group to commit past ``targets``, showing committed offsets against the ends.

    Polls as drain.wait_for_group does, and leaves to it the last check (and the TimeoutError).
    """
    deadline = time.monotonic() + timeout
    if progress is not _silent:
        partitions, end = list(targets), sum(targets.values())
        with progress(end, "processor: committed offsets / end") as tick:
            done = 0
            while done < end and time.monotonic() < deadline:
                seen = committed(settings, settings.processor_group, partitions)
                now = sum(min(seen.get(tp, 0), target) for tp, target in targets.items())
                tick(now - done)
                done = now
                if done < end:
                    time.sleep(0.25)
    wait_for_group(settings, settings.processor_group, targets, timeout=max(deadline - time.monotonic(), 0.0))


def _record_consent(engine, scenario, rng: random.Random, known: consent.KnownScopes) -> Counter:
    """Synthetic citizens' choices: some opt out of health visiting, some permit liaison and diversion."""
    made: Counter = Counter()
    mothers = sorted({subject_key("natal_care", e.record) for e in scenario.events if e.event_type == "natal_care"})
    for key in rng.sample(mothers, max(1, len(mothers) // 10)):
        consent.record(
            engine,
            key,
            consent.ConsentDecision.DENY,
            recipient="salford-health-visiting",
            known=known,
            collected_by="demo: GP surgery opt-out form",
        )
        made["deny salford-health-visiting"] += 1
    detainees = sorted({subject_key("custody", e.record) for e in scenario.events if e.event_type == "custody"})
    for key in rng.sample(detainees, max(1, len(detainees) // 3)):
        consent.record(
            engine,
            key,
            consent.ConsentDecision.PERMIT,
            recipient="liaison-diversion",
            known=known,
            collected_by="demo: custody healthcare practitioner",
        )
        made["permit liaison-diversion"] += 1
    return made


# What the summary holds the processor's /metrics to (docs/metrics.md): its decisions are the
# entries it appended for events (not retractions or receipts), its dead letters the topic's.
DECISIONS_METRIC = "accord_decisions_total"
DEAD_LETTERS_METRIC = "accord_dead_letters_total"
DECISION_OUTCOMES = ("DISCLOSED", "WITHHELD", "NOT_COVERED")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _scrape(settings: Settings, names: tuple[str, ...]) -> dict[str, float] | None:
    """The processor's /metrics summed per metric (over every label); None if it does not answer."""
    import urllib.error
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://{settings.api_host}:{settings.health_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    totals = dict.fromkeys(names, 0.0)
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals


def _start_processor(settings: Settings) -> subprocess.Popen:
    log = (settings.state_dir / "processor.log").open("ab")
    env = {
        **os.environ,
        "ACCORD_HEALTH_PORT": str(settings.health_port),
        "ACCORD_LOG_FORMAT": "json",
        "ACCORD_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "ACCORD_HEARTBEAT_INTERVAL_MS": str(settings.heartbeat_interval_ms),
        "ACCORD_PSEUDONYM_KEY": settings.pseudonym_key.get_secret_value(),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "accord.cli", "run", "processor"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _count_dead_letters(settings: Settings, names: TopicNames, run_id: str, key: bytes, expected: int) -> Counter:
    reasons: Counter = Counter()
    consumer = kafka.consumer(settings, f"accord-demo-deadletters-{run_id}")
    consumer.subscribe([names.dead_letter])
    deadline = time.monotonic() + 30
    try:
        while sum(reasons.values()) < expected and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error() or msg.key() != key:
                continue  # earlier runs' dead letters stay on the topic
            headers = dict(msg.headers() or [])
            error = headers.get(header.ERROR, b"?")
            assert isinstance(error, bytes)  # the processor writes its headers as bytes
            reasons[error.decode()] += 1
    finally:
        consumer.close()
    return reasons


def _sign_checkpoint(settings: Settings, engine, names: TopicNames, signer):
    """Sign the ledger as it stands and publish the checkpoint.

    The processor also checkpoints on its own cadence; this makes sure the demo's
    last entries are covered, so `accord ledger prove` works on every one of them.
    """
    checkpoint = make_checkpoint(engine, signer, settings.ledger_origin) or latest_checkpoint(engine)
    if checkpoint is not None:
        publish_checkpoint(kafka.producer(settings), names, checkpoint, settings.ledger_origin)
    return checkpoint


def _prepare_database(settings: Settings) -> Engine:
    """The application role's engine on a database ready for the bus, as an operator would make it.

    1. PostgreSQL: ``accord ledger init`` as the owner (ACCORD_LEDGER_OWNER_URL), which
       upgrades the schema and grants the application role (ACCORD_LEDGER_URL's user);
       a missing owner URL, or one that cannot connect, is refused in one line.
    2. The application role's check, as the processor makes it at start (SQLite has no
       roles: its first use upgrades it).
    """
    engine = engine_for(settings)
    if engine.dialect.name == "postgresql":  # 1.
        if not settings.ledger_owner_url:
            raise LedgerRoleError(
                "on PostgreSQL the demo runs `accord ledger init` as the tables' owner and everything else as "
                "ACCORD_LEDGER_URL's application role: set ACCORD_LEDGER_OWNER_URL to the owner role's URL "
                '(docs/ledger.md, "Append-only" and "Migrations")'
            )
        owner = owner_engine_for(settings)
        try:
            setup_database(owner, app_role_of(settings))
        except DBAPIError as exc:
            problem = describe_database_error(exc, settings.ledger_owner_url)
            raise LedgerRoleError(
                "ACCORD_LEDGER_OWNER_URL: " + problem.replace("ACCORD_LEDGER_URL", "ACCORD_LEDGER_OWNER_URL")
            ) from None
        finally:
            owner.dispose()
    require_app_role(engine)  # 2.
    return engine


PSEUDONYM_KEY_FILE = "pseudonym.key"


def _demo_pseudonym_key(path: Path) -> str:
    """The demo's pseudonym key: read from ``path``, or made there (readable by its owner only)."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    key = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(key + "\n", encoding="utf-8")
    return key


def run_demo(
    settings: Settings, n_events: int = 1200, seed: int | None = None, progress: Progress | None = None
) -> int:
    """Run the demo and print its summary; ``progress`` shows each long stage (the CLI's draws on a terminal only)."""
    progress = progress or _silent
    started = time.monotonic()
    # The embedded broker holds a group join for half the session timeout;
    # short timeouts keep the demo's several consumers quick.
    update: dict = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500}
    if not settings.health_port:  # the summary reads the processor's /metrics
        update["health_port"] = _free_port(settings.api_host)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    if not settings.pseudonym_key.get_secret_value():
        # The state folder's key, made on first use: the ledger keeps the key in force, and a
        # processor with another one is refused (ledger/pseudonym_keys.py).
        update["pseudonym_key"] = SecretStr(_demo_pseudonym_key(settings.state_dir / PSEUDONYM_KEY_FILE))
    settings = settings.model_copy(update=update)
    seed = seed if seed is not None else int(time.time())
    run_id = str(seed)
    if not devstack.broker_answers(settings.bootstrap_servers):
        print(devstack.up(settings).describe())
    names = TopicNames(settings.topic_prefix)
    agreements = load_dir(settings.agreements_dir)
    create_topics(kafka.admin(settings), names.catalogue(recipients_by_type(agreements), TopicLayout.of(settings)))
    engine = _prepare_database(settings)
    # The demo signs its ledger with the state folder's key, made on first use (the processor finds it there too).
    signer = signer_from_settings(settings) or generate_key_file(
        settings.state_dir / KEY_FILE_NAME, settings.ledger_origin
    )
    with engine.connect() as conn:
        seq_before = conn.execute(select(func.coalesce(func.max(LedgerEntry.seq), 0))).scalar_one()

    scenario = build_scenario(n_events=n_events, seed=seed)
    known = consent.KnownScopes.from_partners(load_partners(settings.partners_file))
    consents = _record_consent(engine, scenario, random.Random(seed), known)

    publisher = Publisher(settings)
    malformed_key = f"demo-malformed-{run_id}".encode()
    with progress(len(scenario.events) + len(scenario.malformed), "publishing events") as tick:
        for event in scenario.events:
            publisher.publish(event.event_type, event.record, agency=event.agency)
            tick(1)
        for event_type, raw in scenario.malformed:
            publisher.publish_raw(event_type, raw, key=malformed_key)
            tick(1)
        published = publisher.flush()
    if published.failed:
        print(f"publishing failed for {len(published.failed)} events", file=sys.stderr)
        return 1

    processor = _start_processor(settings)
    try:
        _wait_for_processor(settings, published.end_offsets, progress, timeout=120)
        metrics = _scrape(settings, (DECISIONS_METRIC, DEAD_LETTERS_METRIC))
    finally:
        _stop(processor)

    with engine.connect() as conn:
        rows = conn.execute(
            select(LedgerEntry.recipient, LedgerEntry.outcome, LedgerEntry.reason, func.count())
            .where(LedgerEntry.seq > seq_before)
            .group_by(LedgerEntry.recipient, LedgerEntry.outcome, LedgerEntry.reason)
        ).all()
        total_entries = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
    disclosed: Counter = Counter()
    withheld: Counter = Counter()
    for recipient, outcome, reason, n in rows:
        if outcome == "DISCLOSED":
            disclosed[recipient] += n
        else:
            withheld[(reason or "").split(" (")[0]] += n

    with engine.connect() as conn:
        this_run = set(
            conn.execute(
                select(LedgerEntry.disclosure_id).where(
                    LedgerEntry.seq > seq_before, LedgerEntry.outcome == "DISCLOSED"
                )
            ).scalars()
        )
    received: Counter = Counter()
    with progress(sum(disclosed.values()), "counting partner records") as tick:
        for partner in sorted(disclosed):
            seen: set[str] = set()
            with Subscription(settings, partner, agreements, group_id=f"accord-demo-{partner}-{run_id}") as sub:
                # A fresh group reads the partner topic from the start. Count this run's disclosures,
                # each once, by id: the broker may hold earlier runs' records, even of another ledger
                # (a second clone, or a state folder deleted while the broker stayed up).
                for d in sub.iter(idle_timeout=2.0):
                    if isinstance(d, Disclosure) and d.disclosure_id in this_run and d.disclosure_id not in seen:
                        seen.add(d.disclosure_id)
                        tick(1)
            received[partner] = len(seen)
    dead = _count_dead_letters(settings, names, run_id, malformed_key, len(scenario.malformed))
    checkpoint = _sign_checkpoint(settings, engine, names, signer)
    result = verify(engine, verifier_from_settings(settings), settings.ledger_origin)

    agencies = Counter(e.agency for e in scenario.events)
    print()
    print("Accord demo summary")
    print("===================")
    print(
        f"events in:            {len(scenario.events) + len(scenario.malformed)} "
        f"({len(scenario.events)} valid from {len(agencies)} agencies, {len(scenario.malformed)} malformed)"
    )
    for agency, n in sorted(agencies.items()):
        print(f"  {agency:28} {n}")
    print("consent choices:      " + ", ".join(f"{n} {what}" for what, n in sorted(consents.items())))
    print("disclosures per partner (ledger / received on partner topic):")
    for partner in sorted(disclosed):
        print(f"  {partner:28} {disclosed[partner]} / {received[partner]}")
    print("withheld by reason:")
    for reason, n in sorted(withheld.items()):
        print(f"  {reason:50} {n}")
    print(f"dead letters:         {sum(dead.values())} (by kind; docs/processor.md says what each kind means)")
    for reason, n in sorted(dead.items()):
        print(f"  {reason:50} {n}")
    print(f"ledger entries:       {sum(n for *_, n in rows)} this run, {total_entries} in all")
    decided = sum(n for _, outcome, _, n in rows if outcome in DECISION_OUTCOMES)
    metrics_agree = metrics is not None and (metrics[DECISIONS_METRIC], metrics[DEAD_LETTERS_METRIC]) == (
        decided,
        sum(dead.values()),
    )
    if metrics is None:
        print(f"processor /metrics:   no answer on port {settings.health_port}")
    else:
        print(
            f"processor /metrics:   {metrics[DECISIONS_METRIC]:.0f} decisions, {metrics[DEAD_LETTERS_METRIC]:.0f} "
            f"dead letters ({'equal to' if metrics_agree else 'NOT equal to'} the ledger's {decided} and the "
            f"dead-letter topic's {sum(dead.values())})"
        )
    if checkpoint is not None:
        print(
            f"signed checkpoint:    tree size {checkpoint.tree_size:,}, root {checkpoint.root.hex()[:16]}..., "
            f"published to {names.ledger_checkpoints}"
        )
    print(f"ledger verify:        {result.describe()}")
    print(f"elapsed:              {time.monotonic() - started:.1f}s")
    print("the broker stays up for `accord consume --partner cps`; `accord dev down` stops it")
    for line in _pages(settings, scenario):
        print(line)
    ok = result.ok and received == disclosed and sum(dead.values()) == len(scenario.malformed) and metrics_agree
    return 0 if ok else 1


def _pages(settings: Settings, scenario: Scenario) -> list[str]:
    """Where to look next: sign-in links to the dashboard and a citizen's page when `accord serve` runs."""
    import urllib.request

    from accord.web.consent_api import ApiSettingsError, secret_from_settings
    from consent.tokens import CITIZEN, STAFF, sign_in_link

    base = f"http://{settings.api_host}:{settings.api_port}"
    try:
        secret = secret_from_settings(settings)
        with urllib.request.urlopen(f"{base}/docs", timeout=1):
            pass
    except (ApiSettingsError, OSError):
        return [
            "pages: run `accord serve` (with ACCORD_API_SECRET set) for the flows dashboard (/dashboard) "
            "and a citizen's page (/me); `accord consent token --staff` signs you in"
        ]
    subject = next((k for e in scenario.events if (k := subject_key(e.event_type, e.record))), None)
    lines = [
        f"pages at {base}/ (each link signs in once, for 15 minutes):",
        f"  flows dashboard (staff):  {sign_in_link(secret, STAFF, base_url=base).link}",
    ]
    if subject is not None:
        lines.append(f"  a citizen's page (/me):   {sign_in_link(secret, CITIZEN, subject, base_url=base).link}")
    return lines
