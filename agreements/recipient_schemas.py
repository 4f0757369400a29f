"""Recipient schemas: each agreement's projection of each source schema.

The processor encodes a disclosure with the projected schema; a partner decodes
it by fingerprint with the same catalogue, built from the same agreements.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agreements.model import Agreement
from schemas.projection import project_schema
from schemas.serde import Catalogue, load_schema


def projection_name(agreement: Agreement, event_type: str) -> str:
    return f"{agreement.id}.v{agreement.version}.{event_type}"


def _namespace(agreement: Agreement) -> str:
    return "accord.partner." + re.sub(r"[^A-Za-z0-9_]", "_", agreement.id) + f".v{agreement.version}"


def recipient_catalogue(agreements: Iterable[Agreement], base: Catalogue | None = None) -> Catalogue:
    """The source schemas plus every agreement's projected schemas."""
    catalogue = base or Catalogue.default()
    for agreement in agreements:
        for event_type, fields in agreement.fields.items():
            schema = project_schema(load_schema(event_type), list(fields), _namespace(agreement))
            catalogue.register(projection_name(agreement, event_type), schema)
    return catalogue
