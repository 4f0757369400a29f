"""Names of partners and agencies for the pages: never a bare id where a person reads it.

The partner registry (agreements/partners.yaml) says which partners exist and
their recipient class; the agreements' ``parties`` give each party's name. A
:class:`Directory` joins them: ``name("mft-nhs-trust")`` is "Manchester
University NHS Foundation Trust". An id no agreement names a party for is shown
as the id (the pages mark it so), which the test of the example agreements keeps
from happening.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from agreements.model import Agreement


@dataclass(frozen=True)
class Directory:
    names: Mapping[str, str] = field(default_factory=dict)  # party id -> name
    classes: Mapping[str, str] = field(default_factory=dict)  # partner id -> recipient class (registry)

    @classmethod
    def build(cls, agreements: Iterable[Agreement], partners: Mapping[str, str]) -> Directory:
        names: dict[str, str] = {}
        for agreement in sorted(agreements, key=lambda a: (a.id, a.version)):
            for party in agreement.parties:
                if party.id is not None:
                    names[party.id] = party.name  # the newest version's name wins
        return cls(names, dict(partners))

    def name(self, party_id: str) -> str:
        """The party's name, else its id."""
        return self.names.get(party_id, party_id)

    def known(self, party_id: str) -> bool:
        return party_id in self.names

    def recipient_class(self, partner_id: str) -> str | None:
        return self.classes.get(partner_id)


__all__ = ["Directory"]
