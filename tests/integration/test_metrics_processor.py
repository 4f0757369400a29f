"""The processor's /metrics after the demo's scenario agree with the ledger and the dead-letter topic.

``accord demo`` stops its processor before it prints, so this test plays the demo's
scenario itself, with the demo's own pieces (its synthetic scenario with malformed
records, its consent choices), through a real ``accord run processor`` with
ACCORD_HEALTH_PORT set, on the embedded broker and PostgreSQL as the app role. Then,
from outside: the decision counts /metrics shows equal a GROUP BY on the ledger table,
the dead-letter counts equal the dead-letter topic's records, consumer lag falls to 0,
and the control plane (retraction sweep, checkpoints) reports itself.
"""

from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select

import consent
from accord.dev.demo import _record_consent
from accord.dev.drain import wait_for_group
from accord.processor.metrics import STAGES
from agreements import load_dir
from agreements.model import ConsentMode
from agreements.partners import load_partners
from bus import headers as header
from bus.topics import EVENT_TYPES
from ledger import LedgerEntry
from ledger.checkpoint import KEY_FILE_NAME, generate_key_file
from producers import Publisher
from producers.synthetic import build_scenario
from tests.bus import Bus, make_settings
from tests.conftest import fresh_role_database
from tests.faults import dead_letters
from tests.ports import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except urllib.error.URLError as e:  # not listening (yet)
        return 0, str(e.reason)


def scrape(port: int) -> Samples:
    """Every sample on /metrics: (name, sorted labels) -> value."""
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def by(samples: Samples, name: str, *labels: str) -> Counter:
    """The samples of ``name`` summed by ``labels``, zeros left out."""
    out: Counter = Counter()
    for (n, ls), v in samples.items():
        if n == name and v:
            d = dict(ls)
            out[tuple(d.get(label, "") for label in labels)] += int(v)
    return out


def eventually(what: str, check, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: never happened"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def demo_run(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Bus, int, dict]]:
    with fresh_role_database() as db:
        state = tmp_path_factory.mktemp("metrics-demo")
        port = free_port()
        settings = make_settings(broker, db.app_url, state).model_copy(
            update={"health_port": port, "checkpoint_interval_s": 1.0}
        )
        generate_key_file(state / KEY_FILE_NAME, settings.ledger_origin)  # as the demo does: checkpoints on
        bus = Bus(settings, db.owner, load_dir(settings.agreements_dir))
        bus.create_topics()

        # The demo's scenario and consent choices (accord.dev.demo.run_demo, steps before its processor).
        seed = random.randrange(1 << 30)
        scenario = build_scenario(n_events=300, seed=seed)
        published_at = time.time()
        known = consent.KnownScopes.from_partners(load_partners(settings.partners_file))
        _record_consent(db.app, scenario, random.Random(seed), known)
        publisher = Publisher(settings)
        for event in scenario.events:
            publisher.publish(event.event_type, event.record, agency=event.agency)
        for event_type, raw in scenario.malformed:
            publisher.publish_raw(event_type, raw, key=b"demo-malformed")
        published = publisher.flush()
        assert not published.failed
        published_by = time.time()

        bus.start_processor()
        started = time.time()
        try:
            wait_for_group(settings, settings.processor_group, published.end_offsets, timeout=120)
            # A citizen withdraws after the fact: the sweep retracts what was shared (RETRACTED entries).
            by_key = {a.key: a for a in bus.agreements}
            shared = next(
                e
                for e in bus.ledger(outcome="DISCLOSED")
                if by_key[f"{e.agreement_id}@v{e.agreement_version}"].consent_mode is not ConsentMode.NOT_REQUIRED
            )
            consent.record(
                db.app, shared.subject_key, consent.ConsentDecision.DENY, recipient=shared.recipient, known=known
            )
            eventually("the withdrawal retracted", lambda: bus.ledger(outcome="RETRACTED"))
            expected = {
                "events": Counter(e.event_type for e in scenario.events) + Counter(t for t, _ in scenario.malformed),
                "malformed": len(scenario.malformed),
                "published_at": published_at,
                "waited_s": started - published_by,  # every record was published this long before it was taken
            }
            yield bus, port, expected
        finally:
            bus.stop_processor()


def test_decision_counts_on_metrics_equal_the_ledgers(demo_run) -> None:
    bus, port, _ = demo_run
    with bus.engine.connect() as conn:
        rows = conn.execute(
            select(
                LedgerEntry.outcome,
                LedgerEntry.recipient,
                LedgerEntry.agreement_id,
                LedgerEntry.agreement_version,
                func.count(),
            ).group_by(
                LedgerEntry.outcome, LedgerEntry.recipient, LedgerEntry.agreement_id, LedgerEntry.agreement_version
            )
        ).all()

    def label(agreement_id: str, version: int) -> str:
        return f"{agreement_id}@v{version}" if agreement_id else ""

    ledger_decisions = Counter(
        {(o, r, label(a, v)): n for o, r, a, v, n in rows if o in ("DISCLOSED", "WITHHELD", "NOT_COVERED")}
    )
    ledger_retractions = Counter({(r, label(a, v)): n for o, r, a, v, n in rows if o == "RETRACTED"})
    assert {o for o, *_ in ledger_decisions} >= {"DISCLOSED", "WITHHELD"}, "the scenario decided little"

    def agrees() -> Samples | None:
        samples = scrape(port)
        ok = by(samples, "accord_retractions_total", "recipient", "agreement") == ledger_retractions
        return samples if ok else None

    samples = eventually("the retraction counted", agrees, timeout=20)
    decisions = by(samples, "accord_decisions_total", "outcome", "recipient", "agreement")
    assert decisions == ledger_decisions
    # By outcome alone, as a dashboard would sum them.
    by_outcome: Counter = Counter()
    for (outcome, _, _), n in ledger_decisions.items():
        by_outcome[(outcome,)] += n
    assert by(samples, "accord_decisions_total", "outcome") == by_outcome
    assert ledger_retractions and sum(ledger_retractions.values()) >= 1


def test_dead_letters_and_events_on_metrics_equal_the_topics(demo_run) -> None:
    bus, port, expected = demo_run
    on_topic = Counter((d[header.ERROR],) for d in dead_letters(bus))
    assert sum(on_topic.values()) >= expected["malformed"]
    samples = scrape(port)
    assert by(samples, "accord_dead_letters_total", "reason") == on_topic
    assert by(samples, "accord_events_consumed_total", "event_type") == Counter(
        {(t,): n for t, n in expected["events"].items()}
    )
    # Every batch was timed, and so was each step of it: the steps of the event batches (a batch of
    # receipts alone has no event steps) and every commit, within the batches' own time.
    batches = samples[("accord_batch_seconds_count", ())]
    assert batches >= 1 and samples[("accord_batch_records_sum", ())] == sum(expected["events"].values())
    steps = {s: samples[("accord_batch_stage_seconds_count", (("stage", s),))] for s in STAGES}
    assert steps["commit"] == batches
    assert len({steps[s] for s in STAGES if s != "commit"}) == 1 and 1 <= steps["read"] <= batches
    spent = sum(samples[("accord_batch_stage_seconds_sum", (("stage", s),))] for s in STAGES)
    assert 0 < spent <= samples[("accord_batch_seconds_sum", ())]


def test_lag_falls_to_zero_and_the_control_plane_reports(demo_run) -> None:
    bus, port, _ = demo_run
    topics = {bus.names.event(t) for t in EVENT_TYPES}

    def caught_up() -> Samples | None:
        samples = scrape(port)
        lag = {dict(ls)["topic"]: v for (n, ls), v in samples.items() if n == "accord_consumer_lag_records"}
        ok = topics <= set(lag) and not any(lag.values())
        return samples if ok else None

    samples = eventually("consumer lag 0 on every event topic", caught_up, timeout=30)
    assert samples[("accord_control_plane_leader", ())] == 1
    assert samples[("accord_processor_state", (("state", "running"),))] == 1
    assert samples[("accord_retraction_sweep_pending", (("step", "consent"),))] == 0
    assert samples[("accord_retraction_sweep_lag_seconds", ())] == 0
    assert samples[("accord_retraction_sweep_last_run_timestamp_seconds", ())] > time.time() - 60
    with bus.engine.connect() as conn:
        size = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()

    def checkpointed() -> Samples | None:
        s = scrape(port)
        return s if s.get(("accord_checkpoint_tree_size", ())) == size else None

    samples = eventually("a checkpoint of the whole ledger", checkpointed, timeout=30)
    assert samples[("accord_checkpoint_pending_entries", ())] == 0
    assert 0 <= samples[("accord_checkpoint_age_seconds", ())] < 3600


def test_record_age_tells_how_long_the_oldest_record_of_each_batch_waited(demo_run) -> None:
    """The scenario was published before the processor started: the first batch's oldest record
    waited at least the time between, and none can have waited longer than since it was published."""
    _bus, port, expected = demo_run
    samples = scrape(port)
    batches = samples[("accord_record_age_seconds_count", ())]
    assert batches >= samples[("accord_batch_records_count", ())] > 0
    total = samples[("accord_record_age_seconds_sum", ())]
    assert total >= expected["waited_s"] > 0
    assert total <= batches * (time.time() - expected["published_at"])


def test_health_port_answers_health_healthz_and_readyz(demo_run) -> None:
    _, port, _ = demo_run
    status, body = get(port, "/health")
    assert status == 200 and json.loads(body)["state"] == "running"
    assert get(port, "/healthz") == (200, "alive\n")
    assert get(port, "/readyz") == (200, "ready\n")
    assert get(port, "/nothing")[0] == 404
