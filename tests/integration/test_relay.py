"""`accord relay` on a real PostgreSQL source database and the embedded broker, checked from outside.

The source database is made by running every SQL block of docs/relay.md (the tables,
the trigger example, the privileges), so the page cannot drift from the code; the relay
connects as the role those grants make, so they are shown to be enough. What reached
the bus is read back with a plain consumer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from agreements import load_dir, recipients_by_type
from bus import headers as header
from bus import kafka
from bus.settings import PACKAGE_ROOT, Settings
from bus.topics import EVENT_TYPES, TopicNames, create_topics
from producers.outbox import Relay, lock_key
from producers.synthetic import build_scenario, to_json_line
from schemas.serde import Catalogue
from tests.conftest import TEST_DATABASE_URL
from tests.ports import free_port

DOC = PACKAGE_ROOT / "docs" / "relay.md"
DOC_ROLE = "accord_relay"


def doc_sql() -> list[str]:
    """Every ```sql block of docs/relay.md, in order."""
    blocks = re.findall(r"^```sql\n(.*?)^```", DOC.read_text(), re.S | re.M)
    assert len(blocks) >= 4, "docs/relay.md lost its SQL blocks"
    return blocks


@dataclass
class Source:
    """A source system's database: a schema made by docs/relay.md's SQL, and the relay's role."""

    schema: str
    role: str
    owner_dsn: str  # the superuser, search_path = schema: the source system itself
    relay_url: str  # SQLAlchemy URL of the relay's role, same schema

    def sql(self, statement: str, params: Any = None) -> list[Any]:
        with psycopg.connect(self.owner_dsn, autocommit=True) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description else []

    def insert(self, rows: list[tuple[str, str]]) -> None:
        """(event type, payload JSON) rows, in one transaction."""
        with psycopg.connect(self.owner_dsn) as conn:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO accord_outbox (event_type, payload) VALUES (%s, %s::jsonb)", rows)
            conn.commit()

    def outbox(self) -> list[tuple[int, int, str, dict]]:
        """(txid, id, event type, payload) of every row, in the relay's order."""
        return [
            (int(t), i, e, p)
            for t, i, e, p in self.sql(
                "SELECT o.txid::text, o.id, o.event_type, o.payload FROM accord_outbox AS o ORDER BY o.txid, o.id"
            )
        ]

    def dead_letters(self) -> dict[int, str]:
        return dict(self.sql("SELECT outbox_id, reason FROM accord_outbox_dead_letters"))

    def position(self) -> tuple[int, int]:
        rows = self.sql("SELECT last_txid::text, last_id FROM accord_outbox_position")
        return (int(rows[0][0]), rows[0][1]) if rows else (0, 0)


def _dsn(schema: str, user: str | None = None, port: int | None = None) -> str:
    url = make_url(TEST_DATABASE_URL)
    if user is not None:
        url = url.set(username=user, password=None)
    if port is not None:
        url = url.set(port=port)
    return f"{url.render_as_string(hide_password=False)}?options={quote(f'-csearch_path={schema}')}"


@contextmanager
def source_database() -> Iterator[Source]:
    tag = uuid.uuid4().hex[:12]
    schema, role = f"t_{tag}", f"accord_relay_{tag}"
    admin = create_engine(TEST_DATABASE_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    owner_dsn = _dsn(schema).replace("postgresql+psycopg://", "postgresql://")
    source = Source(schema, role, owner_dsn, _dsn(schema, role))
    try:
        with psycopg.connect(owner_dsn, autocommit=True) as conn:
            for block in doc_sql():
                block = re.sub(rf"\b{DOC_ROLE}\b", role, block).replace("SCHEMA public", f'SCHEMA "{schema}"')
                conn.execute(cast(Any, block))
        yield source
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'DROP OWNED BY "{role}" CASCADE'))
            conn.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
        admin.dispose()


def relay_settings(broker: str, source: Source, **update: Any) -> Settings:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings(
        bootstrap_servers=broker,
        topic_prefix=prefix,
        relay_source_url=source.relay_url,
        relay_poll_interval_s=0.1,
        database_timeout_s=3.0,
        **update,
    )
    agreements = load_dir(settings.agreements_dir)
    create_topics(kafka.admin(settings), TopicNames(prefix).catalogue(recipients_by_type(agreements)))
    return settings


def relay_env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "ACCORD_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "ACCORD_TOPIC_PREFIX": settings.topic_prefix,
        "ACCORD_RELAY_SOURCE_URL": settings.relay_source_url,
        "ACCORD_RELAY_TABLE": settings.relay_table,
        "ACCORD_RELAY_BATCH_SIZE": str(settings.relay_batch_size),
        "ACCORD_RELAY_POLL_INTERVAL_S": str(settings.relay_poll_interval_s),
        "ACCORD_RELAY_ONCE_WAIT_S": str(settings.relay_once_wait_s),
        "ACCORD_DATABASE_TIMEOUT_S": str(settings.database_timeout_s),
        "ACCORD_LOG_FORMAT": "json",
    }


def run_relay_once(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "relay", "--once", *args],
        env=relay_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def error_lines(stderr: str) -> list[str]:
    """The command's last words on stderr: plain lines, and the message of each JSON ``command_failed`` line.

    With ACCORD_LOG_FORMAT=json (relay_env) the last word is a JSON log line like the rest;
    the other JSON lines (relay_started, relay_waiting, ...) are logs, not last words.
    """
    lines = []
    for line in stderr.strip().splitlines():
        if not line.startswith("{"):
            lines.append(line)
        elif (event := json.loads(line)).get("event") == "command_failed":
            lines.append(event["message"])
    return lines


@dataclass(frozen=True)
class OnTopic:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    event_id: str
    value: bytes


def read_events(settings: Settings) -> list[OnTopic]:
    """Every record on every event topic, read with a plain consumer from the start until idle, in offset order."""
    names = TopicNames(settings.topic_prefix)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": f"{settings.topic_prefix}check.{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    meta = consumer.list_topics(timeout=10)
    parts = [TopicPartition(names.event(t), p, 0) for t in EVENT_TYPES for p in meta.topics[names.event(t)].partitions]
    consumer.assign(parts)
    seen: list[OnTopic] = []
    idle = 0
    try:
        while idle < 3:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                continue
            idle = 0
            assert msg.error() is None, msg.error()
            hdrs = dict(cast(list[tuple[str, bytes]], msg.headers() or []))
            seen.append(
                OnTopic(
                    cast(str, msg.topic()),
                    cast(int, msg.partition()),
                    cast(int, msg.offset()),
                    msg.key(),
                    hdrs[header.EVENT_ID].decode(),
                    cast(bytes, msg.value()),
                )
            )
    finally:
        consumer.close()
    return seen


def good_rows(n: int, seed: int = 1) -> list[tuple[str, str]]:
    """(event type, payload JSON) of ``n`` synthetic events, in the form a source system writes."""
    scenario = build_scenario(max(n, 30), seed=seed, n_malformed=0)
    return [(e.event_type, to_json_line(e)) for e in scenario.events[:n]]


def _referral(nhs: str | None) -> dict[str, Any]:
    return {
        "envelope": {
            "event_id": str(uuid.uuid4()),
            "occurred_at": "2026-03-01T10:15:00Z",
            "recorded_at": "2026-03-01T10:20:00.123Z",
            "source_agency": "salford-council",
            "source_system": "liquidlogic-lcs",
        },
        "referral_id": "REF-SAL-26-00001",
        "referrer": {"agency": "salford-council", "role": "social worker"},
        "subject": {
            "subject_kind": "CHILD",
            "local_id": "LCS-000123",
            "nhs_number": nhs,
            "given_names": "Ava",
            "family_name": "Testperson",
            "date_of_birth": "2015-06-01",
            "address": None,
        },
        "concern_categories": ["NEGLECT"],
        "urgency": "ROUTINE",
        "narrative": "Synthetic narrative.",
    }


GOOD_NHS = "9434765919"
BAD_NHS = "9434765918"  # fails Modulus 11


@pytest.fixture
def source() -> Iterator[Source]:
    with source_database() as s:
        yield s


def test_the_documented_tables_and_trigger_work_and_the_relay_needs_only_the_documented_privileges(
    broker, source
) -> None:
    settings = relay_settings(broker, source)
    # The source system inserts referrals; the documented trigger writes the outbox rows.
    insert = (
        "INSERT INTO referrals (referral_id, referred_at, referrer_role, subject_kind, case_id, nhs_number, "
        "given_names, family_name, date_of_birth, concerns, urgency, narrative) "
        "VALUES (%s, now() - interval '1 hour', 'social worker', 'CHILD', %s, %s, 'Ava', 'Testperson', "
        "%s, ARRAY['NEGLECT'], 'URGENT', 'Synthetic narrative.')"
    )
    dob = date.today() - timedelta(days=9 * 365)
    source.sql(insert, ("REF-1", "LCS-1", GOOD_NHS, dob))
    source.sql(insert, ("REF-2", "LCS-2", None, dob))
    source.sql(insert, ("REF-3", "LCS-3", BAD_NHS, dob))
    outbox = source.outbox()
    assert [e for _, _, e, _ in outbox] == ["referral"] * 3

    assert _relay_until(settings, 3) == (2, 1)

    on_topic = read_events(settings)
    ids = {row[3]["envelope"]["event_id"]: row for row in outbox}
    assert sorted(r.event_id for r in on_topic) == sorted(list(ids)[:2])
    catalogue = Catalogue.default()
    for r in on_topic:
        name, record = catalogue.decode(r.value)
        assert name == "referral" and record["envelope"]["event_id"] == r.event_id
        assert r.topic == TopicNames(settings.topic_prefix).event("referral")
    keys = {r.key for r in on_topic}
    assert keys == {f"nhs:{GOOD_NHS}".encode(), b"local:salford-council:LCS-2"}, keys
    bad_id = outbox[2][1]
    dead = source.dead_letters()
    assert list(dead) == [bad_id]
    assert "subject.nhs_number" in dead[bad_id] and BAD_NHS not in dead[bad_id]
    assert source.position() == outbox[-1][:2]

    # The relay's role reads the outbox and cannot change it.
    relay_dsn = source.relay_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(relay_dsn) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("DELETE FROM accord_outbox")


def test_bad_rows_go_to_the_dead_letter_table_with_reasons_and_the_rest_are_published(broker, source) -> None:
    settings = relay_settings(broker, source)
    good = good_rows(20)
    too_long = _referral(GOOD_NHS)
    too_long["narrative"] = "x" * (settings.max_string_bytes + 1)
    too_big = _referral(GOOD_NHS)
    too_big["concern_categories"] = ["NEGLECT"] * 80_000  # each string small, the event over max_event_bytes
    bad_time = _referral(GOOD_NHS)
    bad_time["envelope"]["occurred_at"] = "last Tuesday"
    missing = _referral(GOOD_NHS)
    del missing["urgency"]
    bad: dict[str, tuple[str, str]] = {
        "unknown type": ("parking_ticket", json.dumps(_referral(GOOD_NHS))),
        "not an event": ("referral", json.dumps(["an", "array"])),
        "missing field": ("referral", json.dumps(missing)),
        "bad NHS number": ("referral", json.dumps(_referral(BAD_NHS))),
        "too long a string": ("referral", json.dumps(too_long)),
        "too large": ("referral", json.dumps(too_big)),
        "bad timestamp": ("referral", json.dumps(bad_time)),
    }
    rows = good[:10] + list(bad.values()) + good[10:]
    for row in rows:  # one transaction each, as a source system writes them
        source.insert([row])
    outbox = source.outbox()

    result = run_relay_once(settings)
    assert result.returncode == 0, result.stderr
    assert "20 published, 7 refused" in result.stdout, result.stdout

    dead = source.dead_letters()
    by_kind = {kind: dead.get(outbox[10 + i][1], "") for i, kind in enumerate(bad)}
    expected = {
        "unknown type": "unknown event type",
        "not an event": "(payload): must be a JSON object",
        "missing field": "urgency",
        "bad NHS number": "subject.nhs_number",
        "too long a string": "narrative: is",
        "too large": "over the limit",
        "bad timestamp": "envelope.occurred_at",
    }
    for kind, words in expected.items():
        assert words in by_kind[kind], (kind, by_kind[kind])
    for reason in dead.values():
        assert "\n" not in reason and len(reason) <= 500
        assert BAD_NHS not in reason and "Testperson" not in reason and "last Tuesday" not in reason
    on_topic = read_events(settings)
    good_ids = {json.loads(p)["envelope"]["event_id"] for _, p in good}
    assert {r.event_id for r in on_topic} == good_ids
    assert len(on_topic) == 20
    assert source.position() == outbox[-1][:2]


def _relay_until(settings, wanted: int, timeout_s: float = 30.0) -> tuple[int, int]:
    """Relay passes until ``wanted`` rows are handled (published or refused): (published, refused).

    A pass reads nothing while any older transaction on the server is open (the outbox's
    snapshot-xmin rule), and in CI the other tests, in other schemas, hold some for a moment."""
    published = refused = 0
    deadline = time.monotonic() + timeout_s
    while published + refused < wanted and time.monotonic() < deadline:
        report = Relay(settings).run(once=True)
        published, refused = published + report.published, refused + report.refused
        if published + refused < wanted:
            time.sleep(0.2)
    return published, refused


def test_rows_committed_out_of_order_are_not_lost(broker, source) -> None:
    """Transaction A takes id 1 and stays open while B takes id 2 and commits; the relay runs; then A commits."""
    settings = relay_settings(broker, source, relay_once_wait_s=0.3)  # --once's wait for A: its own test is below
    (type_a, payload_a), (type_b, payload_b), (type_c, payload_c), (type_d, payload_d) = good_rows(4, seed=3)
    insert = "INSERT INTO accord_outbox (event_type, payload) VALUES (%s, %s::jsonb) RETURNING id"
    with (
        psycopg.connect(source.owner_dsn) as a,
        psycopg.connect(source.owner_dsn) as b,
        psycopg.connect(source.owner_dsn) as gone,
    ):
        gone.execute(insert, good_rows(5, seed=3)[4])  # takes an id, then rolls back: a gap the relay steps over
        a.execute("SAVEPOINT inner_work")  # the row is written in a subtransaction of A
        id_a = a.execute(insert, (type_a, payload_a)).fetchone()
        a.execute("RELEASE SAVEPOINT inner_work")
        gone.rollback()
        id_b = b.execute(insert, (type_b, payload_b)).fetchone()
        assert id_a is not None and id_b is not None and id_a[0] < id_b[0]
        b.commit()
        # Row 2 is committed and visible; row 1 is not. A naive "id > last" relay would take 2 and skip 1.
        assert [i for _, i, _, _ in source.outbox()] == [id_b[0]]
        first = Relay(settings).run(once=True)
        assert first.published == 0, "published a row ahead of an older transaction still open"
        assert first.held_back
        assert read_events(settings) == []
        a.commit()
    assert _relay_until(settings, 2)[0] == 2

    # The other way round: C's transaction began writing first but takes the later id.
    with psycopg.connect(source.owner_dsn) as c, psycopg.connect(source.owner_dsn) as d:
        c.execute("SELECT pg_current_xact_id()")
        id_d = d.execute(insert, (type_d, payload_d)).fetchone()
        d.commit()
        assert Relay(settings).run(once=True).published == 0
        id_c = c.execute(insert, (type_c, payload_c)).fetchone()
        c.commit()
        assert id_c is not None and id_d is not None and id_c[0] > id_d[0]
    assert _relay_until(settings, 2)[0] == 2

    ids = [r.event_id for r in read_events(settings)]
    expected = {json.loads(p)["envelope"]["event_id"] for p in (payload_a, payload_b, payload_c, payload_d)}
    assert sorted(ids) == sorted(expected), "a row committed out of order was lost or doubled"
    assert source.dead_letters() == {}


def test_once_waits_for_rows_behind_an_open_transaction_and_says_so_when_they_are_not_ready(broker, source) -> None:
    """As a cron job would meet it: rows committed while another transaction on the server is
    open. ``accord relay --once`` waits for it (up to ACCORD_RELAY_ONCE_WAIT_S) and relays the
    rows once it ends; if it stays open, it exits 0 saying the rows wait, and the next run
    relays them. Before, it printed "0 outbox rows relayed" at once and left."""
    settings = relay_settings(broker, source, relay_once_wait_s=8.0)
    rows = good_rows(3, seed=7)
    wanted = sorted(json.loads(p)["envelope"]["event_id"] for _t, p in rows)
    with psycopg.connect(source.owner_dsn) as batch_job:
        batch_job.execute("SELECT pg_current_xact_id()")  # a writing transaction: it holds an xid
        source.insert(rows[:2])
        threading.Timer(2.0, batch_job.commit).start()  # the batch job commits while --once waits
        waited = run_relay_once(settings)
    assert waited.returncode == 0, waited.stderr
    assert waited.stdout.startswith("2 outbox rows relayed: 2 published"), waited.stdout
    assert "wait behind" not in waited.stdout

    impatient = settings.model_copy(update={"relay_once_wait_s": 1.0})
    with psycopg.connect(source.owner_dsn) as batch_job:
        batch_job.execute("SELECT pg_current_xact_id()")
        source.insert(rows[2:])
        held = run_relay_once(impatient)
        assert held.returncode == 0, held.stderr
        assert held.stdout.startswith("0 outbox rows relayed: 0 published"), held.stdout
        assert "later rows wait behind a transaction still open on the database server" in held.stdout
        assert "Traceback" not in held.stderr
    again = run_relay_once(settings)
    assert again.stdout.startswith("1 outbox rows relayed: 1 published"), again.stdout
    assert sorted(r.event_id for r in read_events(settings)) == wanted


def _start_relay(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "accord.cli", "relay"], env=relay_env(settings), stdout=out, stderr=subprocess.STDOUT
        )


def _wait_for_log(relay: subprocess.Popen[bytes], log: Path, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while f'"{event}"' not in log.read_text():
        assert time.monotonic() < deadline and relay.poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)


def test_one_relay_per_outbox_a_second_waits_and_takes_over_and_once_refuses(broker, source, tmp_path) -> None:
    settings = relay_settings(broker, source)
    first_log, standby_log = tmp_path / "first.log", tmp_path / "standby.log"
    first = _start_relay(settings, first_log)
    standby: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_log(first, first_log, "relay_started")
        once = run_relay_once(settings)
        assert once.returncode == 2
        lines = error_lines(once.stderr)
        assert len(lines) == 1 and "another accord relay holds the lock of accord_outbox" in lines[0], lines

        standby = _start_relay(settings, standby_log)
        _wait_for_log(standby, standby_log, "relay_standby")
        rows = good_rows(6, seed=5)
        source.insert(rows[:3])
        deadline = time.monotonic() + 30
        while len(read_events(settings)) < 3:  # the first one relays; the standby only waits
            assert time.monotonic() < deadline
        assert '"relay_started"' not in standby_log.read_text()

        first.send_signal(signal.SIGKILL)
        first.wait()
        _wait_for_log(standby, standby_log, "relay_started")  # the lock died with the first one's session
        source.insert(rows[3:])
        deadline = time.monotonic() + 30
        while source.position() != source.outbox()[-1][:2]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ids = [r.event_id for r in read_events(settings)]
        assert sorted(set(ids)) == sorted(json.loads(p)["envelope"]["event_id"] for _, p in rows)
    finally:
        for relay in (first, standby):
            if relay is not None and relay.poll() is None:
                relay.terminate()
                assert relay.wait(30) == 0


def test_start_up_problems_are_one_line_each(broker, source) -> None:
    settings = relay_settings(broker, source)
    env = relay_env(settings)

    def run(**changes: str) -> tuple[int, list[str]]:
        e = {**env, **changes}
        e = {k: v for k, v in e.items() if v != "<unset>"}
        done = subprocess.run(
            [sys.executable, "-m", "accord.cli", "relay", "--once"], env=e, capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in done.stderr
        return done.returncode, error_lines(done.stderr)

    code, lines = run(ACCORD_RELAY_SOURCE_URL="<unset>")
    assert code == 2 and len(lines) == 1 and "ACCORD_RELAY_SOURCE_URL is not set" in lines[0], lines
    code, lines = run(ACCORD_RELAY_SOURCE_URL=source.relay_url.replace("postgresql+psycopg://", "postgresql://"))
    assert code == 2 and len(lines) == 1 and "psycopg 3 only, not psycopg2" in lines[0], lines
    closed = _dsn(source.schema, source.role, port=free_port())
    code, lines = run(ACCORD_RELAY_SOURCE_URL=closed)
    assert code == 2 and len(lines) == 1 and "could not reach the database" in lines[0], lines
    assert "ACCORD_RELAY_SOURCE_URL" in lines[0]
    code, lines = run(ACCORD_RELAY_TABLE="no_such_outbox")
    assert code == 2 and len(lines) == 1, lines
    assert "no_such_outbox is missing" in lines[0] and "docs/relay.md" in lines[0], lines
    code, lines = run(ACCORD_RELAY_TABLE="bad name; drop table x")
    assert code == 2 and len(lines) == 1 and "ACCORD_RELAY_TABLE" in lines[0], lines
    source.sql(f'REVOKE UPDATE ON accord_outbox_position FROM "{source.role}"')
    code, lines = run()
    assert code == 2 and len(lines) == 1, lines
    assert f"the role {source.role} lacks UPDATE on accord_outbox_position" in lines[0] and "docs/relay.md" in lines[0]
    source.sql(f'REVOKE SELECT ON accord_outbox FROM "{source.role}"')
    code, lines = run()
    assert code == 2 and len(lines) == 1 and "permission denied" in lines[0] and "docs/relay.md" in lines[0], lines


def test_a_mistyped_agency_is_refused_before_any_row_is_touched(broker, source) -> None:
    """Every row of an outbox speaking for another agency is refused: a typo in --agency
    used to move the whole outbox to the dead-letter table, and the position past it, with exit 0."""
    settings = relay_settings(broker, source)
    rows = good_rows(6, seed=11)
    source.insert(rows)
    typo = run_relay_once(settings, "--agency", "salford-councl")
    assert typo.returncode == 2, typo.stdout + typo.stderr
    [line] = error_lines(typo.stderr)
    assert "--agency 'salford-councl' is a provider under no agreement" in line and "salford-council" in line, line
    assert source.dead_letters() == {} and source.position() == (0, 0)
    assert read_events(settings) == []

    done = run_relay_once(settings)
    assert done.returncode == 0 and done.stdout.startswith("6 outbox rows relayed: 6 published"), done.stdout


def test_once_with_no_broker_gives_up_saying_so_and_the_next_run_sends_everything(broker, source) -> None:
    """A cron job's ``--once`` with the broker away waited for ever; now it waits
    ACCORD_RELAY_ONCE_WAIT_S past the first failed delivery, exits 2 in one line, and moves nothing."""
    settings = relay_settings(broker, source, relay_once_wait_s=1.0)
    rows = good_rows(4, seed=12)
    source.insert(rows)
    away = settings.model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    gave_up = run_relay_once(away, timeout=90)
    assert gave_up.returncode == 2, gave_up.stdout + gave_up.stderr
    [line] = error_lines(gave_up.stderr)
    assert f"no Kafka broker at {away.bootstrap_servers} confirmed the batch" in line, line
    assert "ACCORD_RELAY_ONCE_WAIT_S" in line and "the next run sends them" in line, line
    assert source.position() == (0, 0) and source.dead_letters() == {}

    done = run_relay_once(settings)
    assert done.returncode == 0 and done.stdout.startswith("4 outbox rows relayed: 4 published"), done.stdout
    wanted = sorted(json.loads(p)["envelope"]["event_id"] for _t, p in rows)
    assert sorted(r.event_id for r in read_events(settings)) == wanted


def _accord_relay(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``accord relay --once`` with only ``env`` (and PATH) set: no broker, no source database."""
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "relay", "--once"],
        env={"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_in_json_mode_the_last_word_is_one_json_line_naming_the_variable(tmp_path: Path) -> None:
    done = _accord_relay({"ACCORD_LOG_FORMAT": "json", "ACCORD_STATE_DIR": str(tmp_path)})
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()  # one line, and it is JSON: a log shipper reads it like the rest
    event = json.loads(line)
    assert event["event"] == "command_failed" and event["level"] == "error" and event["error"] == "RelayError"
    assert event["message"].startswith("accord relay: ACCORD_RELAY_SOURCE_URL is not set")
    plain = _accord_relay({"ACCORD_LOG_FORMAT": "console", "ACCORD_STATE_DIR": str(tmp_path)})
    assert plain.returncode == 2 and plain.stderr.strip().splitlines() == [event["message"]]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+psycopg://relay_role:s3cret-pw@cases-db.internal:notaport/cases", "is not a URL SQLAlchemy"),
        ("postgresql://relay_role:s3cret-pw@cases-db.internal:5432/cases", "psycopg 3 only, not psycopg2"),
        ("mysql://relay_role:s3cret-pw@cases-db.internal/cases", "PostgreSQL only"),
    ],
)
def test_a_source_url_that_cannot_be_used_is_one_line_naming_the_variable_not_the_url(
    tmp_path: Path, url: str, words: str
) -> None:
    for fmt in ("console", "json"):
        done = _accord_relay(
            {"ACCORD_LOG_FORMAT": fmt, "ACCORD_STATE_DIR": str(tmp_path), "ACCORD_RELAY_SOURCE_URL": url}
        )
        assert done.returncode == 2 and "Traceback" not in done.stderr
        [line] = error_lines(done.stderr)
        assert line.startswith("accord relay: ACCORD_RELAY_SOURCE_URL") and words in line, line
        assert "s3cret-pw" not in done.stderr and "cases-db.internal" not in done.stderr and "notaport" not in line


def test_the_source_engine_connects_with_the_timeouts_and_keepalives(source) -> None:
    from producers.outbox import source_engine

    engine = source_engine(Settings(relay_source_url=source.relay_url, database_timeout_s=6))
    try:
        with engine.connect() as conn:
            given = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
    finally:
        engine.dispose()
    assert given["connect_timeout"] == "6" and given["keepalives"] == "1"
    assert (given["keepalives_idle"], given["keepalives_interval"], given["keepalives_count"]) == ("3", "1", "3")
    assert given["tcp_user_timeout"] == "6000"


def test_the_lock_key_is_the_outbox_tables_own(source) -> None:
    """Two outboxes in one database have two locks; one outbox, one lock, whatever the search_path."""
    oid = source.sql("SELECT 'accord_outbox'::regclass::oid")[0][0]
    assert lock_key(oid) & 0xFFFFFFFF == oid
    source.sql("CREATE TABLE other_outbox (LIKE accord_outbox INCLUDING ALL)")
    other = source.sql("SELECT 'other_outbox'::regclass::oid")[0][0]
    assert lock_key(other) != lock_key(oid)


def _doc_section_sql(heading: str) -> str:
    """The first ```sql block after ``heading`` in docs/relay.md."""
    page = DOC.read_text()
    after = page[page.index(heading) :]
    found = re.search(r"^```sql\n(.*?)^```", after, re.S | re.M)
    assert found, f"docs/relay.md has no SQL under {heading!r}"
    return found.group(1)


def test_a_position_ahead_of_the_server_is_refused_and_the_documented_restore_relays_the_rest(broker, source) -> None:
    """A dump restored into another server: the relay refuses, and docs/relay.md's procedure puts it right."""
    settings = relay_settings(broker, source)
    rows = good_rows(5, seed=21)
    source.insert(rows[:3])
    assert run_relay_once(settings).returncode == 0
    source.insert(rows[3:])
    # The old server's transaction ids, far above this one's: what a restored dump carries.
    source.sql("UPDATE accord_outbox SET txid = (txid::text::bigint + 1000000000000)::text::xid8")
    source.sql("UPDATE accord_outbox_position SET last_txid = (last_txid::text::bigint + 1000000000000)::text::xid8")

    refused = run_relay_once(settings)
    lines = error_lines(refused.stderr)
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr
    assert "ahead of this database's transaction counter" in lines[0] and "Restoring the source database" in lines[0]
    assert len(read_events(settings)) == 3

    with psycopg.connect(source.owner_dsn, autocommit=True) as conn:
        conn.execute(cast(Any, _doc_section_sql("## Restoring the source database")))
    source.insert(good_rows(7, seed=21)[5:])  # written on the new server after the restore
    done = run_relay_once(settings)
    assert done.returncode == 0, done.stderr
    assert "4 published" in done.stdout, done.stdout
    ids = [r.event_id for r in read_events(settings)]
    assert sorted(ids) == sorted(json.loads(p)["envelope"]["event_id"] for _, p in good_rows(7, seed=21))


def test_transaction_ids_of_different_lengths_are_relayed_in_number_order(broker, source) -> None:
    """txid 9 before 10 before 99 before 100: in text order '10' < '100' < '9' < '99', which lost rows."""
    settings = relay_settings(broker, source, relay_batch_size=2)
    rows = good_rows(4, seed=27)
    source.insert(rows)
    source.sql(
        "UPDATE accord_outbox SET txid = (ARRAY['9', '10', '99', '100'])[id - (SELECT min(id) - 1 FROM accord_outbox)]::xid8"
    )
    done = run_relay_once(settings)
    assert done.returncode == 0 and "4 published" in done.stdout, done.stdout + done.stderr
    assert [t for t, *_ in source.outbox()] == [9, 10, 99, 100]
    assert sorted(r.event_id for r in read_events(settings)) == sorted(
        json.loads(p)["envelope"]["event_id"] for _, p in rows
    )
    assert source.position() == source.outbox()[-1][:2]


def test_a_schema_qualified_outbox(broker, source) -> None:
    settings = relay_settings(broker, source, relay_table=f"{source.schema}.accord_outbox")
    source.insert(good_rows(3, seed=23))
    done = run_relay_once(settings)
    assert done.returncode == 0 and "3 published" in done.stdout, done.stderr
    assert source.position() == source.outbox()[-1][:2]


def test_the_documented_pruning_deletes_only_relayed_rows(broker, source) -> None:
    settings = relay_settings(broker, source)
    source.insert(good_rows(4, seed=25)[:3])
    assert run_relay_once(settings).returncode == 0
    source.insert(good_rows(4, seed=25)[3:])  # not relayed yet
    source.sql("UPDATE accord_outbox SET created_at = now() - interval '30 days'")
    not_relayed = source.outbox()[-1][1]
    source.sql(_doc_section_sql("only rows behind the position may go"))
    assert [i for _, i, _, _ in source.outbox()] == [not_relayed]
    done = run_relay_once(settings)
    assert done.returncode == 0 and "1 published" in done.stdout, done.stderr
