"""One test per kind of bad input: each is dead-lettered with a specific reason, and the good events around it are still shared.

Every bad record is published between two good referrals; the checks read the
dead-letter topic, the partner topic and the ledger, never the processor's counters.
"""

from __future__ import annotations

import copy
import io
import os
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from typing import Any

import fastavro
import pytest

from accord.dev.drain import wait_for_group
from bus import kafka
from producers.synthetic import build_scenario
from schemas.serde import MAGIC, Catalogue, load_schema
from tests.bus import Bus, running_bus
from tests.faults import dead_letters, ledger_rows

CATALOGUE = Catalogue.default()


def _referrals(n: int) -> list[dict]:
    found: list[dict] = []
    while len(found) < n:
        scenario = build_scenario(200, seed=random.randrange(1 << 30), n_malformed=0)
        found += [e.record for e in scenario.events if e.event_type == "referral"]
    return found[:n]


def _custody() -> dict:
    scenario = build_scenario(100, seed=random.randrange(1 << 30), n_malformed=0)
    return next(e.record for e in scenario.events if e.event_type == "custody")


def _encode(record: dict) -> bytes:
    return CATALOGUE.encode("referral", record, validated=True)


def _with_schema_change(record: dict, change: Callable[[dict], None]) -> bytes:
    """The record written with a doctored copy of the referral schema, under the real schema's fingerprint.

    How an encoder with a bug (or an attacker) produces bytes the real schema cannot read.
    """
    schema = copy.deepcopy(load_schema("referral"))
    change(schema)
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return MAGIC + CATALOGUE.fingerprint_of("referral") + out.getvalue()


def _field(schema: dict, path: str) -> dict:
    node: Any = schema
    *parents, leaf = path.split(".")
    for name in parents:
        node = next(f for f in node["fields"] if f["name"] == name)["type"]
        if isinstance(node, list):
            node = next(b for b in node if isinstance(b, dict))
    return next(f for f in node["fields"] if f["name"] == leaf)


def _bad(kind: str, good: dict, base: dict) -> tuple[str, bytes | None]:
    """(topic's event type, value) of one bad record; ``base`` is a fresh valid referral to spoil."""
    if kind == "reused event id with different content":
        base["referral_id"] = f"REUSED-{uuid.uuid4().hex[:8]}"  # synthetic ids repeat across scenarios
    r = copy.deepcopy(base)
    if kind == "empty value":
        return "referral", b""
    if kind == "null value":
        return "referral", None
    if kind == "random bytes":
        return "referral", os.urandom(64)
    if kind == "wrong magic":
        return "referral", b"\xc3\x02" + _encode(r)[2:]
    if kind == "confluent framing":
        return "referral", b"\x00\x00\x00\x00\x07" + _encode(r)[10:]
    if kind == "unknown fingerprint":
        return "referral", MAGIC + os.urandom(8) + _encode(r)[10:]
    if kind == "truncated body":
        return "referral", _encode(r)[:-7]
    if kind == "trailing bytes":
        return "referral", _encode(r) + b"\x00\x02"
    if kind == "wrong event type for the topic":
        return "referral", CATALOGUE.encode("custody", _custody(), validated=True)
    if kind == "enum out of range":
        r["urgency"] = "UNHEARD_OF"
        return "referral", _with_schema_change(
            r, lambda s: _field(s, "urgency")["type"]["symbols"].append("UNHEARD_OF")
        )
    if kind == "invalid utf-8":
        r["narrative"] = b"\xff\xfe\xfd not text"
        return "referral", _with_schema_change(r, lambda s: _field(s, "narrative").update(type="bytes"))
    if kind == "timestamp overflow":
        r["envelope"]["occurred_at"] = 2**62
        return "referral", _with_schema_change(r, lambda s: _field(s, "envelope.occurred_at").update(type="long"))
    if kind == "bad nhs check digit":
        number = r["subject"]["nhs_number"] or "9434765919"
        r["subject"]["nhs_number"] = number[:9] + str((int(number[9]) + 1) % 10)
        return "referral", _encode(r)
    if kind == "future date of birth":
        r["subject"]["date_of_birth"] = date(2999, 1, 1)
        return "referral", _encode(r)
    if kind == "reused event id with different content":
        r["envelope"]["event_id"] = good["envelope"]["event_id"]
        return "referral", _encode(r)
    if kind == "local id too long for a subject key":
        r["subject"]["local_id"] = "L" * 3000  # under the string limit; over any index row's
        return "referral", _encode(r)
    if kind == "local id with a space":
        r["subject"]["local_id"] = "LCS 123"
        return "referral", _encode(r)
    if kind == "2 MB string":
        r["narrative"] = "x" * (2 * 1024 * 1024)
        return "referral", _encode(r)
    raise AssertionError(kind)


# kind -> words the dead letter's reason must contain
KINDS: dict[str, str] = {
    "empty value": "empty",
    "null value": "empty",
    "random bytes": "magic",
    "wrong magic": "magic",
    "confluent framing": "Confluent",
    "unknown fingerprint": "fingerprint",
    "truncated body": "",
    "trailing bytes": "trailing",
    "wrong event type for the topic": "custody",
    "enum out of range": "urgency",
    "invalid utf-8": "narrative",
    "timestamp overflow": "occurred_at",
    "bad nhs check digit": "subject.nhs_number",
    "future date of birth": "subject.date_of_birth",
    "reused event id with different content": "reused",
    "2 MB string": "bytes",
    "local id too long for a subject key": "subject.local_id: a local id is printable ASCII without spaces",
    "local id with a space": "subject.local_id",
}


@pytest.fixture(scope="module")
def outcome(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Publish good, bad, good for every kind (and an event from an unknown agency) through one processor."""
    with running_bus(broker, tmp_path_factory.mktemp("badinput")) as bus:
        producer = kafka.producer(bus.settings, **{"message.max.bytes": 10 * 1024 * 1024})
        goods = _referrals(2 * len(KINDS) + 2)
        spoil = _referrals(len(KINDS))
        plan: dict[str, tuple[dict, dict, int]] = {}
        ends: dict[tuple[str, int], int] = {}
        offsets: list[tuple[str, int, int]] = []

        def sent(err, msg) -> None:
            assert err is None, err
            offsets.append((msg.topic(), msg.partition(), msg.offset()))
            tp = (msg.topic(), msg.partition())
            ends[tp] = max(ends.get(tp, 0), msg.offset() + 1)

        key = b"same-partition"  # good, bad, good in order on one partition
        for i, kind in enumerate(KINDS):
            before, after = goods[2 * i], goods[2 * i + 1]
            event_type, value = _bad(kind, before, spoil[i])
            producer.produce(bus.names.event("referral"), key=key, value=_encode(before), on_delivery=sent)
            producer.flush(30)
            mark = len(offsets)
            producer.produce(bus.names.event(event_type), key=key, value=value, on_delivery=sent)
            producer.flush(30)
            plan[kind] = (before, after, offsets[mark][2])
            producer.produce(bus.names.event("referral"), key=key, value=_encode(after), on_delivery=sent)
            producer.flush(30)
        stranger = copy.deepcopy(goods[-1])
        stranger["envelope"]["source_agency"] = "unknown-agency"
        producer.produce(bus.names.event("referral"), key=key, value=_encode(stranger), on_delivery=sent)
        producer.flush(30)
        wait_for_group(bus.settings, bus.settings.processor_group, ends, timeout=120)
        assert bus.processor is not None
        yield {
            "bus": bus,
            "plan": plan,
            "spoilt": dict(zip(KINDS, spoil, strict=True)),
            "stranger": stranger,
            "dead": dead_letters(bus),
            "received": {d.disclosure_id: d for d in bus.received("salford-mash")},
            "ledger": ledger_rows(bus),
            "alive": bus.processor.poll() is None,
        }


@pytest.mark.parametrize("kind", list(KINDS))
def test_bad_record_is_dead_lettered_and_its_neighbours_shared(outcome: dict[str, Any], kind: str) -> None:
    bus: Bus = outcome["bus"]
    before, after, offset = outcome["plan"][kind]
    assert outcome["alive"], "the processor stopped"
    [dead] = [
        d
        for d in outcome["dead"]
        if d["accord.source_offset"] == str(offset) and d["accord.source_topic"] == bus.names.event("referral")
    ]
    print(f"\n{kind}: {dead['accord.error']}: {dead['accord.reason']}")
    assert KINDS[kind] in dead["accord.reason"], dead["accord.reason"]
    assert "Traceback" not in dead["accord.reason"]
    rows = outcome["ledger"]
    for good in (before, after):
        event_id = good["envelope"]["event_id"]
        [entry] = [r for r in rows if r.event_id == event_id and r.outcome == "DISCLOSED"]
        assert entry.disclosure_id in outcome["received"], f"the good event next to {kind!r} was not shared"
    if kind == "reused event id with different content":
        # Nothing of the second event reached the partner: what it got is the first event's content.
        [entry] = [r for r in rows if r.event_id == before["envelope"]["event_id"]]
        got = outcome["received"][entry.disclosure_id]
        assert got.record["subject"]["family_name"] == before["subject"]["family_name"]
        spoilt = outcome["spoilt"][kind]["referral_id"]
        assert all(d.record.get("referral_id") != spoilt for d in outcome["received"].values())
    if kind == "2 MB string":
        assert "accord.value_omitted" in dead and dead["value"] is None


def test_event_no_agreement_covers_is_recorded_not_dropped(outcome: dict[str, Any]) -> None:
    stranger = outcome["stranger"]
    [entry] = [r for r in outcome["ledger"] if r.event_id == stranger["envelope"]["event_id"]]
    assert entry.outcome == "NOT_COVERED" and entry.recipient == ""
    assert "unknown-agency" in entry.reason
    assert entry.disclosure_id not in outcome["received"]
