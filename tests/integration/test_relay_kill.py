"""kill -9, again and again, while a source system writes its outbox: nothing lost, nothing different doubled.

Three writers fill the outbox meanwhile: two write small transactions of good rows with
a bad row now and then, and one holds each transaction open a while before committing,
so rows commit out of id order all along. The relay is killed with SIGKILL at random
moments (in start-up, mid-batch), and every other time exactly between a batch's flush
and the commit that remembers it (the test holds the position row locked until the
relay waits on it), and started again.
Afterwards, from outside (a plain consumer on the event topics, the tables as the
source's owner): every good row's event id is on the topic, no bad row's is; a
duplicate carries the same key and bytes; each subject key's events are in outbox
order; every bad row is in the dead-letter table with a reason.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.integration.test_relay import (
    BAD_NHS,
    GOOD_NHS,
    Source,
    _referral,
    good_rows,
    read_events,
    relay_env,
    relay_settings,
    run_relay_once,
    source_database,
)

ROWS = 2400  # good rows, about 15 s of writing
KILLS = 8
BATCH = 100
WRITE_S = 15.0


def _bad_row(n: int) -> tuple[str, str]:
    """One of four kinds of bad row, each with a fresh event id."""
    kind = n % 4
    if kind == 0:
        return "parking_ticket", json.dumps(_referral(GOOD_NHS))
    if kind == 1:
        return "referral", json.dumps(_referral(BAD_NHS))
    if kind == 2:
        missing = _referral(GOOD_NHS)
        del missing["subject"]
        return "referral", json.dumps(missing)
    big = _referral(GOOD_NHS)
    big["narrative"] = "x" * 70_000
    return "referral", json.dumps(big)


class Writers:
    """The source system: writes ``rows`` (and bad rows among them) over about WRITE_S seconds."""

    def __init__(self, source: Source, rows: list[tuple[str, str]]) -> None:
        self.source, self.rows = source, rows
        self.bad_event_ids: set[str] = set()
        self.errors: list[BaseException] = []
        self.lock = threading.Lock()
        self.next = 0
        self.bad = 0

    def _take(self, n: int) -> list[tuple[str, str]]:
        with self.lock:
            batch = self.rows[self.next : self.next + n]
            self.next += len(batch)
            if batch and self.next % 40 < n:  # now and then a bad row among them
                row = _bad_row(self.bad)
                self.bad += 1
                self.bad_event_ids.add(json.loads(row[1]).get("envelope", {}).get("event_id", ""))
                batch.insert(len(batch) // 2, row)
            return batch

    def _write(self, seed: int, hold_s: float) -> None:
        rng = random.Random(seed)
        pause = WRITE_S / (len(self.rows) / 3)  # three writers
        try:
            with psycopg.connect(self.source.owner_dsn) as conn:
                while batch := self._take(rng.randint(1, 5)):
                    with conn.cursor() as cur:
                        cur.executemany("INSERT INTO accord_outbox (event_type, payload) VALUES (%s, %s::jsonb)", batch)
                    if hold_s:
                        time.sleep(rng.uniform(0, hold_s))  # others commit later ids meanwhile
                    conn.commit()
                    time.sleep(pause * len(batch) * rng.uniform(0.5, 1.5))
        except BaseException as exc:
            self.errors.append(exc)

    def start(self) -> list[threading.Thread]:
        threads = [
            threading.Thread(target=self._write, args=(1, 0.0)),
            threading.Thread(target=self._write, args=(2, 0.0)),
            threading.Thread(target=self._write, args=(3, 0.3)),
        ]
        for t in threads:
            t.start()
        return threads


def _kill_between_flush_and_commit(
    source: Source, relay: subprocess.Popen[bytes], nudge: tuple[str, str], started: Callable[[], bool]
) -> None:
    """SIGKILL the relay after its batch is flushed to the broker and before the position moves.

    The test locks the position table (a table lock takes no transaction id, so it holds
    no row back) and writes one more row, so there is a batch to publish; the relay
    publishes and flushes it, then its UPDATE of the position waits on the lock (seen in
    pg_stat_activity). It is killed there, and the lock released: its transaction never commits.
    """
    deadline = time.monotonic() + 60
    while not started():  # past its start-up, which writes the position table too
        assert relay.poll() is None, "the relay exited"
        assert time.monotonic() < deadline, "the relay did not start"
        time.sleep(0.05)
    with psycopg.connect(source.owner_dsn) as lock, psycopg.connect(source.owner_dsn, autocommit=True) as watch:
        lock.execute("LOCK TABLE accord_outbox_position IN SHARE MODE")
        watch.execute("INSERT INTO accord_outbox (event_type, payload) VALUES (%s, %s::jsonb)", nudge)
        deadline = time.monotonic() + 60
        while not watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'", (source.role,)
        ).fetchone()[0]:  # type: ignore[index]
            assert time.monotonic() < deadline, "the relay never came to move its position"
            assert relay.poll() is None, "the relay exited"
            time.sleep(0.05)
        relay.send_signal(signal.SIGKILL)
        relay.wait()
        lock.rollback()


def test_kill_9_while_the_source_writes_loses_nothing_and_doubles_only_identical_records(broker, tmp_path) -> None:
    from producers.synthetic import build_scenario, to_json_line

    scenario = build_scenario(ROWS, seed=random.randrange(1 << 30), n_malformed=0)
    rows = [(e.event_type, to_json_line(e)) for e in scenario.events[:ROWS]]
    with source_database() as source:
        settings = relay_settings(broker, source, relay_batch_size=BATCH)
        env = relay_env(settings)
        logs: list[Path] = []  # one per relay process

        def start() -> subprocess.Popen[bytes]:
            logs.append(tmp_path / f"relay-{len(logs)}.log")
            with logs[-1].open("ab") as log:
                return subprocess.Popen(
                    [sys.executable, "-m", "accord.cli", "relay"], env=env, stdout=log, stderr=subprocess.STDOUT
                )

        writers = Writers(source, rows)
        threads = writers.start()
        rng = random.Random()
        nudges = good_rows(KILLS, seed=rng.randrange(1 << 30))
        relay = start()
        started = time.monotonic()
        kills = 0
        try:
            for k in range(KILLS):
                time.sleep(rng.uniform(0.8, 2.5))
                if k % 2:
                    _kill_between_flush_and_commit(
                        source, relay, nudges[k], lambda: '"relay_started"' in logs[-1].read_text()
                    )
                else:  # wherever it is: start-up, reading, sending, waiting
                    relay.send_signal(signal.SIGKILL)
                    relay.wait()
                kills += 1
                relay = start()
            for t in threads:
                t.join(timeout=120)
        finally:
            relay.send_signal(signal.SIGKILL)
            relay.wait()
        took = time.monotonic() - started
        assert not writers.errors, writers.errors
        assert kills == KILLS

        drained = run_relay_once(settings)
        assert drained.returncode == 0, drained.stderr[-2000:]

        outbox = source.outbox()
        good_ids = [
            p["envelope"]["event_id"] for _, _, _, p in outbox if p["envelope"]["event_id"] not in writers.bad_event_ids
        ]
        bad_rows = {i for _, i, _, p in outbox if p.get("envelope", {}).get("event_id") in writers.bad_event_ids}
        assert len(good_ids) == ROWS + KILLS // 2 and len(bad_rows) == writers.bad > 0

        on_topic = read_events(settings)
        copies: dict[str, set[tuple[bytes | None, bytes]]] = defaultdict(set)
        for r in on_topic:
            copies[r.event_id].add((r.key, r.value))
        missing = set(good_ids) - set(copies)
        assert not missing, f"{len(missing)} outbox rows never reached the topic"
        assert not set(copies) & writers.bad_event_ids, "a refused row reached the topic"
        assert set(copies) == set(good_ids)
        differing = [i for i, c in copies.items() if len(c) != 1]
        assert not differing, f"{len(differing)} event ids on the topic with different keys or bytes"

        # Each subject key's events, first copies in topic order, are in outbox order.
        key_of = {i: next(iter(c))[0] for i, c in copies.items()}
        on_topic_order: dict[tuple[str, bytes | None], list[str]] = defaultdict(list)
        for r in on_topic:  # per partition in offset order; a key is on one partition
            if r.event_id not in on_topic_order[(r.topic, r.key)]:
                on_topic_order[(r.topic, r.key)].append(r.event_id)
        topic_of = {r.event_id: r.topic for r in on_topic}
        outbox_order: dict[tuple[str, bytes | None], list[str]] = defaultdict(list)
        for i in good_ids:
            outbox_order[(topic_of[i], key_of[i])].append(i)
        out_of_order = [k for k in outbox_order if outbox_order[k] != on_topic_order[k]]
        assert not out_of_order, f"{len(out_of_order)} subject keys' events out of outbox order"

        dead = source.dead_letters()
        assert set(dead) == bad_rows, "a bad row is missing from the dead-letter table, or a good one is in it"
        assert all(reason.strip() and "\n" not in reason for reason in dead.values())
        assert source.position() == outbox[-1][:2]
        assert not [p.name for p in logs if "Traceback" in p.read_text()]

        duplicates = len(on_topic) - len(copies)
        assert duplicates > 0, "no kill fell between a flush and its commit: the re-publish went untested"
        print(
            f"\n{ROWS} good and {len(bad_rows)} bad rows, {KILLS} kills in {took:.1f}s: {len(on_topic)} records on "
            f"the topic, {duplicates} identical duplicates, {len(outbox_order)} subject keys in order"
        )
