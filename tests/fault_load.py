"""What the fault tests do to the bus while they break it: a stream of events and consent changing.

``Stream`` publishes a synthetic scenario at a steady rate as a source system would on
a bad day: it re-sends events it already sent (each one a replay), optionally reuses an
event id for other content (a conflicting duplicate), then sends the malformed records.
``ConsentChurn`` records consent changes, tens a second from several threads, for the
subjects of consent-based sharing, so a replayed batch often meets a changed preference
and the consent records commit out of order.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from typing import Any

import consent
from accord.sharing.decide import subject_key
from bus.settings import Settings
from producers import Publisher
from producers.synthetic import Scenario


class Stream(threading.Thread):
    """Publish ``scenario`` at ``events_per_s``; every ``resend_every``-th event re-sends an older one
    (at least ``resend_gap`` back, so likely decided), and every ``reuse_every``-th (0: never) reuses
    an event id with other content. ``report`` is the publisher's flush once it has ended."""

    def __init__(
        self,
        settings: Settings,
        scenario: Scenario,
        seed: int,
        *,
        events_per_s: float,
        resend_every: int,
        resend_gap: int,
        reuse_every: int = 0,
    ) -> None:
        super().__init__(daemon=True)
        self.settings, self.scenario, self.seed = settings, scenario, seed
        self.events_per_s, self.resend_every, self.resend_gap = events_per_s, resend_every, resend_gap
        self.reuse_every = reuse_every
        self.resent = 0
        self.reused: set[str] = set()  # event ids sent again with other content
        self.report: Any = None

    def run(self) -> None:
        prng = random.Random(self.seed + 1)
        publisher = Publisher(self.settings)
        sent: list = []
        for n, e in enumerate(self.scenario.events):
            publisher.publish(e.event_type, e.record)
            sent.append(e)
            if n % self.resend_every == 0 and len(sent) > self.resend_gap:
                old = sent[prng.randrange(len(sent) - self.resend_gap)]
                publisher.publish(old.event_type, old.record)
                self.resent += 1
            if self.reuse_every and n % self.reuse_every == 7:
                victim = sent[prng.randrange(len(sent))]
                other = copy.deepcopy(victim.record)
                other["envelope"]["source_system"] = other["envelope"]["source_system"] + "-x"
                publisher.publish(victim.event_type, other)
                self.reused.add(victim.record["envelope"]["event_id"])
            if n % 50 == 0:
                time.sleep(50 / self.events_per_s)
        for event_type, raw in self.scenario.malformed:
            publisher.publish_raw(event_type, raw, key=b"raw")
        self.report = publisher.flush()


def consent_subjects(scenario: Scenario) -> list[str]:
    """The subject keys of the scenario's events that consent-based agreements share."""
    return sorted(
        {
            subject_key(e.event_type, e.record)
            for e in scenario.events
            if e.event_type == "natal_care" or (e.event_type == "custody" and e.record["subject"]["nhs_number"])
        }
    )


class ConsentChurn:
    """``threads`` threads recording ``per_tick`` consent changes each every 0.2 s until ``stop``."""

    RECIPIENTS = ("salford-health-visiting", "liaison-diversion", "salford-research")

    def __init__(
        self,
        engine: Any,
        scenario: Scenario,
        known: consent.KnownScopes,
        seed: int,
        threads: int = 2,
        per_tick: int = 10,
    ) -> None:
        self.engine, self.known, self.seed, self.per_tick = engine, known, seed, per_tick
        self.subjects = consent_subjects(scenario)
        self.changes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._change, args=(n,), daemon=True) for n in range(threads)]

    def _change(self, n: int) -> None:
        crng = random.Random(self.seed + 7 * n)
        while not self._stop.is_set():
            for _ in range(self.per_tick):
                decision = crng.choice([consent.ConsentDecision.DENY, consent.ConsentDecision.PERMIT])
                recipient = crng.choice(self.RECIPIENTS)
                consent.record(self.engine, crng.choice(self.subjects), decision, known=self.known, recipient=recipient)
                with self._lock:
                    self.changes += 1
            self._stop.wait(0.2)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
