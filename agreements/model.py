"""Data-sharing agreements as data: what the sharing decision reads.

A DPO signs off an agreement; the processor executes it. The model is strict
(unknown keys are refused) so that a typo cannot silently widen or narrow what is
shared.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from datetime import date
from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agreements.conditions import Condition, holds


class Purpose(str, Enum):
    INDIVIDUAL_CARE = "individual_care"
    SAFEGUARDING = "safeguarding"
    CRIME_PREVENTION_AND_PROSECUTION = "crime_prevention_and_prosecution"
    VICTIM_SUPPORT = "victim_support"
    SERVICE_PLANNING = "service_planning"
    RESEARCH = "research"


class ConsentMode(str, Enum):
    EXPLICIT = "explicit"  # share only with a matching permit
    OPT_OUT = "opt_out"  # share unless a matching denial
    NOT_REQUIRED = "not_required"  # share; a statutory gateway overrides consent


class IdentifierTreatment(str, Enum):
    IDENTIFIABLE = "identifiable"
    PSEUDONYMISED = "pseudonymised"  # identifiers become per-recipient keyed tokens


class Status(str, Enum):
    DRAFT = "draft"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class PartyRole(str, Enum):
    CONTROLLER = "controller"
    JOINT_CONTROLLER = "joint_controller"
    PROCESSOR = "processor"


class TransparencyMode(str, Enum):
    IMMEDIATE = "immediate"  # the citizen sees the disclosure in their subject report at once
    DEFERRED = "deferred"  # hidden from the citizen until ``until`` (e.g. it would prejudice an enquiry)


SLUG = r"^[a-z0-9][a-z0-9-]*$"  # an agreement, provider or recipient id
_STRICT = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)


class Party(BaseModel):
    """A controller (or processor) party to the agreement."""

    model_config = _STRICT

    name: str = Field(min_length=1)
    role: PartyRole
    id: str | None = Field(None, pattern=SLUG)  # the provider or recipient id this party acts as, if any


class LawfulBasis(BaseModel):
    """The structured lawful basis a DPO signs off; ``legal_basis`` stays the prose."""

    model_config = _STRICT

    article_6: str = Field(pattern=r"^6\(1\)\([a-f]\)$")  # UK GDPR, e.g. 6(1)(e)
    article_9: str | None = Field(None, pattern=r"^9\(2\)\([a-j]\)$")  # special category, e.g. 9(2)(h)
    dpa_2018_schedule_1: str | None = Field(None, pattern=r"^Sch 1 Pt [123] para \d+[A-Z]?$")  # e.g. Sch 1 Pt 2 para 18
    statutory_gateway: str | None = Field(None, min_length=1)  # e.g. Crime and Disorder Act 1998 s.115

    @model_validator(mode="after")
    def _schedule_1_where_dpa_2018_s10_needs_it(self) -> LawfulBasis:
        # DPA 2018 s.10: Art 9(2)(b), (h), (i), (j) need a Sch 1 Part 1 condition; 9(2)(g) a Part 2 one.
        letter = self.article_9[-2] if self.article_9 else None
        part = {"b": "1", "h": "1", "i": "1", "j": "1", "g": "2"}.get(letter or "")
        if part is None:
            return self
        if not self.dpa_2018_schedule_1:
            raise ValueError(
                f"article_9 {self.article_9} needs a dpa_2018_schedule_1 condition (Sch 1 Pt {part}; DPA 2018 s.10)"
            )
        if not self.dpa_2018_schedule_1.startswith(f"Sch 1 Pt {part} "):
            raise ValueError(
                f"article_9 {self.article_9} needs a Sch 1 Part {part} condition (DPA 2018 s.10), "
                f"not {self.dpa_2018_schedule_1}"
            )
        return self


class Transparency(BaseModel):
    """When the citizen may see this agreement's disclosures about them."""

    model_config = _STRICT

    mode: TransparencyMode = TransparencyMode.IMMEDIATE
    until: date | None = None

    @model_validator(mode="after")
    def _until_goes_with_deferred(self) -> Transparency:
        if self.mode is TransparencyMode.DEFERRED and self.until is None:
            raise ValueError("transparency mode deferred needs an until date")
        if self.mode is TransparencyMode.IMMEDIATE and self.until is not None:
            raise ValueError("transparency mode immediate takes no until date")
        return self

    def visible_on(self, day: date) -> bool:
        """Whether a disclosure under this agreement may be shown to the citizen on ``day``."""
        return self.mode is TransparencyMode.IMMEDIATE or (self.until is not None and day >= self.until)


# A coherence problem is raised as "<key>: <problem>" so the loader can point at that key's line.
COHERENCE_KEY = re.compile(r"^(?:Value error, )?([a-z_0-9]+): (.*)$", re.S)


class Agreement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: str = Field(pattern=SLUG)
    version: int = Field(ge=1, le=2_147_483_647)  # the ledger's agreement_version is a 32-bit integer
    title: str = Field(min_length=1)
    status: Status = Status.ACTIVE
    providers: tuple[str, ...] = Field(min_length=1)
    recipients: tuple[str, ...] = Field(min_length=1)
    event_types: tuple[str, ...] = Field(min_length=1)
    purpose: Purpose
    legal_basis: str = Field(min_length=1)
    consent_mode: ConsentMode
    consent_justification: str | None = None
    fields: dict[str, tuple[str, ...]]
    identifier_treatment: IdentifierTreatment = IdentifierTreatment.IDENTIFIABLE
    valid_from: date | None = None
    valid_until: date | None = None
    # What a DPO signs off besides the above (all optional so code-built agreements stay valid).
    parties: tuple[Party, ...] = ()
    lawful_basis: LawfulBasis | None = None
    review_date: date | None = None
    transparency: Transparency = Transparency()
    conditions: tuple[Condition, ...] = ()  # all must hold (AND); declarative, never eval'd

    @model_validator(mode="after")
    def _coherent(self) -> Agreement:
        if self.consent_mode is ConsentMode.NOT_REQUIRED and not self.consent_justification:
            raise ValueError("consent_mode: not_required needs a consent_justification (the statutory gateway)")
        missing = [t for t in self.event_types if t not in self.fields]
        if missing:
            raise ValueError(f"fields: no allowed fields given for event type(s) {', '.join(missing)}")
        extra = [t for t in self.fields if t not in self.event_types]
        if extra:
            raise ValueError(f"fields: fields given for event type(s) not in event_types: {', '.join(extra)}")
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until: valid_until is before valid_from")
        if self.valid_from and self.review_date and self.review_date < self.valid_from:
            raise ValueError("review_date: review_date is before valid_from")
        lb = self.lawful_basis
        if lb is not None and self.consent_mode is not ConsentMode.EXPLICIT:
            consent_articles = [a for a in (lb.article_6, lb.article_9) if a in ("6(1)(a)", "9(2)(a)")]
            if consent_articles:
                raise ValueError(
                    f"lawful_basis: {' and '.join(consent_articles)} rest on consent, "
                    f"so consent_mode must be explicit, not {self.consent_mode.value}"
                )
        known = set(self.providers) | set(self.recipients)
        for party in self.parties:
            if party.id is not None and party.id not in known:
                raise ValueError(
                    f"parties: party id {party.id!r} is neither a provider nor a recipient of this agreement"
                )
        return self

    @property
    def key(self) -> str:
        return f"{self.id}@v{self.version}"

    @property
    def gateway(self) -> str:
        """What lets this agreement share without consent: the statutory gateway, else the justification."""
        if self.lawful_basis is not None and self.lawful_basis.statutory_gateway:
            return self.lawful_basis.statutory_gateway
        return self.consent_justification or self.legal_basis

    def in_force(self, on: date) -> bool:
        if self.status is not Status.ACTIVE:
            return False
        if self.valid_from and on < self.valid_from:
            return False
        return not (self.valid_until and on > self.valid_until)

    def covers(self, provider: str, event_type: str) -> bool:
        return provider in self.providers and event_type in self.event_types

    def exclusion(
        self, provider: str, event_type: str, on: date, record: Mapping[str, Any] | None = None
    ) -> str | None:
        """Why this agreement does not apply to the event, or None when it does.

        The one rule both the processor (``accord.sharing.candidate_agreements``)
        and ``agreements.explain`` use. Conditions are tested only when a record is
        given. The reason never contains the event's values.
        """
        if provider not in self.providers:
            return f"provider {provider} is not a provider under it (providers: {', '.join(self.providers)})"
        if event_type not in self.event_types:
            return f"it does not cover {event_type} events (covers: {', '.join(self.event_types)})"
        if self.valid_from and on < self.valid_from:  # first: a suspension dated ahead has not begun either
            return f"it is not yet valid on {on.isoformat()} (valid from {self.valid_from.isoformat()})"
        if self.status is not Status.ACTIVE:
            return f"it is not active (status {self.status.value})"
        if self.valid_until and on > self.valid_until:
            return f"it expired on {self.valid_until.isoformat()} (decision date {on.isoformat()})"
        if record is not None and self.conditions:
            ok, reason = holds(self.conditions, record, on)
            if not ok:
                return reason
        return None


def has_begun(agreement: Agreement, on: date) -> bool:
    """Whether ``agreement``'s validity has started on ``on`` (no ``valid_from``: from the start)."""
    return agreement.valid_from is None or agreement.valid_from <= on


def deciding(agreements: Iterable[Agreement], on: date) -> list[Agreement]:
    """The version of each agreement id that decides on ``on``: the newest that has begun.

    A version is never changed once published, so a new one takes over from the old by
    its ``valid_from``: published ahead of that day, it leaves the version before it
    deciding until then, whatever the older one's own ``valid_until`` says (an ended
    older version shares nothing meanwhile). The version that decides is then judged
    by its own status, dates and conditions (``Agreement.exclusion``). An id none of
    whose versions has begun has none deciding.
    """
    newest: dict[str, Agreement] = {}
    for a in agreements:
        if has_begun(a, on) and (a.id not in newest or a.version > newest[a.id].version):
            newest[a.id] = a
    return list(newest.values())


def superseded_by(agreement: Agreement, agreements: Iterable[Agreement], on: date) -> Agreement | None:
    """The newer version of ``agreement``'s id that has begun on ``on`` and decides instead, if any."""
    for a in deciding(agreements, on):
        if a.id == agreement.id and a.version > agreement.version:
            return a
    return None


def statutory_gateways(
    agreements: Iterable[Agreement], recipients: Collection[str] | None, on: date, purpose: str | None = None
) -> tuple[tuple[str, ...], bool]:
    """What a citizen's "no" to any of ``recipients`` (None: anyone) for ``purpose`` (or any) cannot stop on ``on``.

    The gateways of the deciding versions in force that share within that scope without
    consent, and whether any deciding version in force in it shares on consent (which
    the "no" does stop).
    """
    under = [
        a
        for a in deciding(agreements, on)
        if (recipients is None or any(r in a.recipients for r in recipients))
        and a.in_force(on)
        and (purpose is None or a.purpose.value == purpose)
    ]
    statutory = tuple(sorted({a.gateway for a in under if a.consent_mode is ConsentMode.NOT_REQUIRED}))
    return statutory, any(a.consent_mode is not ConsentMode.NOT_REQUIRED for a in under)
