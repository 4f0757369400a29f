"""The receipt recorder in-process, on the real broker and PostgreSQL, judged from the outside.

Disclosures are made by the real batch handler. Partners' receipts then go to
``accord.receipts`` through the partner SDK (ReceiptSender), and the processor's own loop
(SharingLoop, wired with the recorder as app.py wires it) consumes them: a good receipt
becomes one RECEIVED entry in the ledger; a receipt from a partner the disclosure was not
sent to, and bytes that are no receipt at all, are dead-lettered with their reason and
leave the ledger as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from accord.processor.agreement_feed import FeedFollower
from accord.processor.handler import BatchReport, Inbound
from accord.processor.health import Health
from accord.processor.loop import SharingLoop
from accord.processor.receipts import ReceiptRecorder
from bus import headers as header
from bus import kafka
from consumers.receipts import Receipt, ReceiptSender, encode_receipt, receipt_id, with_receipt_schema
from tests.integration.parts import Parts, agreement, disclosed, ledger_size, processor_parts, shared_custody_events

AGREEMENT = "custody-to-prosecution"


@pytest.fixture
def parts(broker: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Parts]:
    with processor_parts(broker, tmp_path_factory.mktemp("receipts")) as parts:
        events = shared_custody_events(agreement(parts, AGREEMENT), 2)
        parts.handler.handle([parts.inbound("custody", e, offset=i) for i, e in enumerate(events)])
        yield parts


def test_a_receipt_becomes_a_ledger_entry_once_and_a_forged_one_is_refused(parts: Parts) -> None:
    first, second = sorted(disclosed(parts, "cps"))
    recorder = ReceiptRecorder(parts.db.app)
    catalogue = with_receipt_schema()

    def inbound(receipt: Receipt, offset: int) -> Inbound:
        return parts.inbound_raw(parts.names.receipts, encode_receipt(catalogue, receipt), offset)

    good, forged = Receipt.of(first, "cps"), Receipt.of(second, "hmcts")  # second went to cps, not hmcts
    report = recorder.handle([inbound(good, 0), inbound(forged, 1)])
    assert (report.receipts, report.recorded) == (2, 1)
    [(msg, kind, reason)] = report.refused
    assert (msg.offset, kind) == (1, "ReceiptRefused") and "another recipient" in reason
    [entry] = parts.ledger(outcome="RECEIVED")
    assert (entry.refers_to, entry.recipient, entry.disclosure_id) == (first, "cps", receipt_id(first, "cps"))

    # The same receipt again (a partner that crashed before committing): nothing recorded twice.
    size = ledger_size(parts)
    assert recorder.handle([inbound(good, 2)]).recorded == 0
    assert ledger_size(parts) == size


def test_the_loop_records_receipts_and_dead_letters_the_bad_ones(parts: Parts) -> None:
    first, second = sorted(disclosed(parts, "cps"))
    producer = kafka.producer(parts.settings)
    ReceiptSender(producer, parts.names.receipts, "cps").send(first)
    forged = ReceiptSender(producer, parts.names.receipts, "hmcts")
    forged.send(second)
    forged.flush()
    producer.produce(parts.names.receipts, key=b"junk", value=b"\x00 not a receipt")
    assert producer.flush(30) == 0
    size = ledger_size(parts)

    settings = parts.settings
    consumer = kafka.consumer(settings, settings.processor_group, **{"fetch.wait.max.ms": settings.fetch_wait_max_ms})
    loop = SharingLoop(
        consumer,
        FeedFollower(settings, parts.agreement_set),
        parts.handler,
        parts.names,
        Health(),
        batch_size=settings.batch_size,
        batch_window_s=0.5,
        receipts=ReceiptRecorder(parts.db.app),
    )
    total = BatchReport()
    try:
        loop.start()
        deadline = time.monotonic() + 60
        while total.receipts < 3:
            assert time.monotonic() < deadline, f"the loop took {total.receipts} receipts of 3"
            report = loop.run_once()
            if report is not None:
                total.add(report)
    finally:
        loop.close()
    assert (total.receipts, total.dead_letters) == (3, 2)

    # One RECEIVED entry, for the receipt from the disclosure's recipient.
    assert ledger_size(parts) == size + 1
    [entry] = parts.ledger(outcome="RECEIVED")
    assert (entry.refers_to, entry.recipient) == (first, "cps")
    # The other two are dead letters naming where they came from and why; the ledger took nothing of them.
    dead = parts.dead_letters()
    assert {h[header.SOURCE_TOPIC].decode() for h in dead} == {parts.names.receipts}
    kinds = sorted(h[header.ERROR].decode() for h in dead)
    assert len(kinds) == 2 and "ReceiptRefused" in kinds
    refused = next(h for h in dead if h[header.ERROR] == b"ReceiptRefused")
    assert b"another recipient" in refused[header.REASON]


def test_a_receipt_keyed_by_another_id_than_it_names_is_refused(parts: Parts) -> None:
    """The SDK keys a receipt by the id it acknowledges; one keyed otherwise was altered or forged."""
    from dataclasses import replace

    first, second = sorted(disclosed(parts, "cps"))
    recorder = ReceiptRecorder(parts.db.app)
    value = encode_receipt(with_receipt_schema(), Receipt.of(first, "cps"))
    keyed = parts.inbound_raw(parts.names.receipts, value, 0)
    report = recorder.handle([replace(keyed, key=second.encode()), replace(keyed, offset=1, key=first.encode())])
    assert report.recorded == 1
    [(msg, kind, reason)] = report.refused
    assert (msg.offset, kind) == (0, "ValueError") and "key is not the disclosure id" in reason
    [entry] = parts.ledger(outcome="RECEIVED")
    assert entry.refers_to == first
