"""Every ``accord.*`` Kafka header name, once.

Headers carry what a reader needs before (or without) decoding the value: provenance
from the source system, the ledger's word on a disclosure, why a record was
dead-lettered. They are part of the wire contract with source systems and partners, so
a name changes here or nowhere. Values are UTF-8 text; numbers are decimal strings.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "accord."  # every name below starts with it; a reader may pass over any other header

# Provenance, set by the publisher (producers/) on every event.
AGENCY: Final = "accord.agency"
SOURCE_SYSTEM: Final = "accord.source_system"
EVENT_ID: Final = "accord.event_id"
OCCURRED_AT: Final = "accord.occurred_at"

# On a partner record (disclosure or retraction notice), set by the processor.
DISCLOSURE_ID: Final = "accord.disclosure_id"
AGREEMENT: Final = "accord.agreement"  # "<agreement id>@v<version>"
EVENT_TYPE: Final = "accord.event_type"
LEDGER_SEQ: Final = "accord.ledger_seq"
KIND: Final = "accord.kind"  # "retraction" on a retraction notice; absent on a disclosure
RETRACTS: Final = "accord.retracts"  # the disclosure id a retraction notice withdraws

# On a dead letter: what went wrong and where the record came from.
ERROR: Final = "accord.error"  # the kind of problem, e.g. "ConflictingDuplicate"
REASON: Final = "accord.reason"  # one line, never personal data
SOURCE_TOPIC: Final = "accord.source_topic"
SOURCE_PARTITION: Final = "accord.source_partition"
SOURCE_OFFSET: Final = "accord.source_offset"
VALUE_OMITTED: Final = "accord.value_omitted"  # the value's size, when too large to carry

# On a receipt, set by the partner's SDK (consumers/).
PARTNER: Final = "accord.partner"

# On a published checkpoint.
ORIGIN: Final = "accord.origin"
TREE_SIZE: Final = "accord.tree_size"
