"""Moving the event schemas into schemas/events/ and adding ``accord.*`` properties changed no fingerprint.

The properties sit outside Avro's Parsing Canonical Form, so every v1 must have
the fingerprint its file had before the move: a different one would make every
event already on the bus, and every ledger entry naming it, unreadable.
"""

from __future__ import annotations

import json
from pathlib import Path

import fastavro
import pytest

from schemas.serde import fingerprint

EVENTS = Path(__file__).resolve().parents[2] / "schemas" / "events"

# Computed before the move, from the files as they were at commit d24563a:
#   git show HEAD:schemas/custody.avsc > /tmp/old_custody.avsc   (likewise referral, natal_care)
#   python -c "import json, fastavro; from schemas.serde import fingerprint;
#              print(fingerprint(fastavro.parse_schema(json.load(open('/tmp/old_custody.avsc')))).hex())"
# i.e. CRC-64-AVRO of the Parsing Canonical Form, little-endian, as the single-object header carries it.
BEFORE_THE_MOVE = {
    "custody": "0a6784ca72e5eb08",
    "referral": "70f3b08db993888a",
    "natal_care": "24aa722af9af683c",
}


@pytest.mark.parametrize("event_type", sorted(BEFORE_THE_MOVE))
def test_v1_keeps_the_fingerprint_of_the_old_file(event_type: str) -> None:
    with (EVENTS / event_type / "v1.avsc").open(encoding="utf-8") as fh:
        raw = json.load(fh)
    assert any(key.startswith("accord.") for key in raw), "the v1 schema carries its accord.* facts"
    assert fingerprint(fastavro.parse_schema(raw)).hex() == BEFORE_THE_MOVE[event_type]


@pytest.mark.parametrize("event_type", sorted(BEFORE_THE_MOVE))
def test_the_properties_alone_do_not_change_it(event_type: str) -> None:
    """Stripping every accord.* property gives the same fingerprint: they are not part of the form."""
    with (EVENTS / event_type / "v1.avsc").open(encoding="utf-8") as fh:
        raw = json.load(fh)
    bare = {k: v for k, v in raw.items() if not k.startswith("accord.")}
    assert fingerprint(fastavro.parse_schema(bare)) == fingerprint(fastavro.parse_schema(raw))
