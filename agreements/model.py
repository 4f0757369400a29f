"""Data-sharing agreements as data: what the sharing decision reads.

A DPO signs off an agreement; the processor executes it. The model is strict
(unknown keys are refused) so that a typo cannot silently widen or narrow what is
shared.
"""

from __future__ import annotations

from datetime import date
from enum import Enum

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


_SLUG = r"^[a-z0-9][a-z0-9-]*$"


class Agreement(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    id: str = Field(pattern=_SLUG)
    version: int = Field(ge=1)
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

    @model_validator(mode="after")
    def _coherent(self) -> Agreement:
        if self.consent_mode is ConsentMode.NOT_REQUIRED and not self.consent_justification:
            raise ValueError("consent_mode not_required needs a consent_justification (the statutory gateway)")
        missing = [t for t in self.event_types if t not in self.fields]
        if missing:
            raise ValueError(f"no allowed fields given for event type(s) {', '.join(missing)}")
        extra = [t for t in self.fields if t not in self.event_types]
        if extra:
            raise ValueError(f"fields given for event type(s) not in event_types: {', '.join(extra)}")
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        return self

    @property
    def key(self) -> str:
        return f"{self.id}@v{self.version}"

    def in_force(self, on: date) -> bool:
        if self.status is not Status.ACTIVE:
            return False
        if self.valid_from and on < self.valid_from:
            return False
        return not (self.valid_until and on > self.valid_until)

    def covers(self, provider: str, event_type: str) -> bool:
        return provider in self.providers and event_type in self.event_types
