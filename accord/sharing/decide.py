"""The sharing decision: agreements + consent -> per-recipient outcome.

This is the functional core of Accord. It does no I/O, so every rule about who
may receive what is unit-tested without Kafka or a database. The processor
(``accord.processor``) is the imperative shell around it.

A decision should cost little next to its I/O, so what depends only on the
agreements is worked out once per set of agreements (:class:`Sharing`): the
agreements indexed by (provider, event type), each one's compiled allow list
and the id bytes of each recipient. ``decide`` keeps its signature and finds
the compiled form in a small cache keyed by the agreements' identities; a
caller deciding many events with one set builds ``Sharing.of(agreements)``
once and calls its ``decide``.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import fields as dataclass_fields
from datetime import UTC, date, datetime
from enum import Enum
from functools import lru_cache
from typing import Any, ClassVar

from accord.sharing.pseudonymise import pseudonymise
from agreements.model import Agreement, ConsentMode, IdentifierTreatment
from consent.model import ConsentDecision, ConsentRecord, applicable, version
from ledger.entry import EntryDraft
from schemas import catalogue as event_catalogue
from schemas.catalogue import EventCatalogue, EventType, optional_steps
from schemas.projection import Order, Projector, key_order, projector
from schemas.serde import load_schema

# Fixed namespace: disclosure ids must be stable across runs and machines (I7).
DISCLOSURE_NAMESPACE = uuid.UUID("7d1f3c9e-2b4a-5e6f-8a9b-0c1d2e3f4a5b")


class Outcome(str, Enum):
    DISCLOSED = "DISCLOSED"
    WITHHELD = "WITHHELD"


@dataclass(frozen=True)
class Context:
    """What a decision depends on besides the event, its agreements and consent."""

    now: datetime
    partner_classes: Mapping[str, str] = field(default_factory=dict)  # recipient -> recipient class
    pseudonym_key: bytes = b""

    @property
    def today(self) -> date:
        return self.now.date()


@dataclass(frozen=True)
class Decision:
    disclosure_id: str
    event_id: str
    event_type: str
    provider: str
    recipient: str
    agreement: Agreement
    outcome: Outcome
    reason: str | None
    fields: tuple[str, ...]
    consent_version: int
    subject_key: str
    projected: dict[str, Any] | None  # the record the recipient receives; None when withheld

    def entry(self, decided_at: datetime, event_digest: str = "", subjects: tuple[str, ...] = ()) -> EntryDraft:
        """This decision as the ledger records it (the entry's fields have one home: ledger.entry)."""
        return EntryDraft.of_decision(self, decided_at, event_digest, subjects)


_new = object.__new__


def _new_decision(
    disclosure_id: str,
    event_id: str,
    event_type: str,
    provider: str,
    recipient: str,
    agreement: Agreement,
    outcome: Outcome,
    reason: str | None,
    fields: tuple[str, ...],
    consent_version: int,
    subject_key: str,
    projected: dict[str, Any] | None,
) -> Decision:
    """``Decision(...)`` with the same arguments, as ``Sharing.decide`` makes one per recipient.

    Frozen, Decision's __init__ stores each of its 12 fields through object.__setattr__
    (1.4 µs); stored straight into the new instance's __dict__, in field order (so it
    stays a key-sharing dict, as __init__'s is), they cost 0.4 µs. The instance is the
    same: same values, still frozen (__setattr__ is Decision's), equal and shown alike;
    Decision has no __post_init__. Its parameters are checked against Decision's fields
    below (tests/unit/test_fast_construction.py compares the two).
    """
    self = _new(Decision)
    d = self.__dict__
    d["disclosure_id"] = disclosure_id
    d["event_id"] = event_id
    d["event_type"] = event_type
    d["provider"] = provider
    d["recipient"] = recipient
    d["agreement"] = agreement
    d["outcome"] = outcome
    d["reason"] = reason
    d["fields"] = fields
    d["consent_version"] = consent_version
    d["subject_key"] = subject_key
    d["projected"] = projected
    return self


if _new_decision.__code__.co_varnames[: _new_decision.__code__.co_argcount] != tuple(
    f.name for f in dataclass_fields(Decision)
) or hasattr(Decision, "__post_init__"):
    raise RuntimeError("_new_decision must take Decision's fields, in order, and Decision have no __post_init__")

_DISCLOSURE_NS = DISCLOSURE_NAMESPACE.bytes
_sha1 = hashlib.sha1


# The hex digit after the variant bits (RFC 4122: the top two bits of byte 8 are 10) replace its top two.
_VARIANT_DIGIT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _uuid5(namespaced: bytes) -> str:
    """``str(uuid.uuid5(namespace, name))`` given the namespace's bytes + the name's.

    The same string, in a third of the time. Cut from the hex digest: the version is
    digit 12, always 5, and digit 16 takes the variant bits; no bytearray, bit masks
    or second hex encoding (1.00 -> 0.75 µs; it was 2.5% of the processor's CPU).
    """
    h = _sha1(namespaced).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT_DIGIT[h[16]]}{h[17:20]}-{h[20:32]}"


def disclosure_id(event_id: str, recipient: str, agreement_id: str, agreement_version: int) -> str:
    return _uuid5(_DISCLOSURE_NS + f"{event_id}|{recipient}|{agreement_id}|{agreement_version}".encode())


def _reach(event_type: EventType, field: str, *, fallback: bool) -> str:
    """An expression reading ``field`` of ``record``: indexing where the schema says it is always there.

    Where it may be missing (null, defaulted, not in some version) the reading turns
    to ``get``; a non-fallback leaf is always read with ``get`` (it is tested, not trusted).
    """
    parts = field.split(".")
    optional = optional_steps(event_type, field)
    expr = "record"
    for i, part in enumerate(parts):
        leaf = i == len(parts) - 1
        if leaf:
            expr = f"{expr}[{part!r}]" if fallback else f"{expr}.get({part!r})"
        elif optional[i]:
            expr = f"({expr}.get({part!r}) or {{}})"
        else:
            expr = f"{expr}[{part!r}]"
    return expr


def _key_of(scheme: str, value: str) -> str:
    """The f-string making a subject key of the value in variable ``value`` (see schemas.subject_keys)."""
    if scheme == "local":  # an agency's own id means nothing without the agency
        return f"f\"local:{{record['envelope']['source_agency']}}:{{{value}}}\""
    return f'f"{scheme}:{{{value}}}"'


def _key_functions(
    catalogue: EventCatalogue,
) -> tuple[Callable[[str, dict[str, Any]], str], Callable[[str, dict[str, Any]], tuple[str, ...]]]:
    """``subject_key`` and ``other_subjects`` for the catalogue's types, as straight-line code.

    Generated once at import from each type's ``accord.subject_key`` and
    ``accord.other_subjects``: one test of the event type, then the reads the
    hand-written functions did, so a key costs what it did when the types were code.
    """
    keys = ["def subject_key(event_type, record):"]
    others = ["def other_subjects(event_type, record):"]
    for event_type in catalogue:
        keys.append(f"    if event_type == {event_type.name!r}:")
        *firsts, last = event_type.subject_key
        for key in firsts:
            keys.append(f"        v = {_reach(event_type, key.field, fallback=False)}")
            keys.append("        if v:")
            keys.append(f"            return {_key_of(key.scheme, 'v')}")
        keys.append(f"        return {_key_of(last.scheme, _reach(event_type, last.field, fallback=True))}")
        if event_type.other_subjects:
            others.append(f"    if event_type == {event_type.name!r}:")
            others.append("        out = []")
            for key in event_type.other_subjects:
                others.append(f"        v = {_reach(event_type, key.field, fallback=False)}")
                others.append("        if v:")
                others.append(f"            out.append({_key_of(key.scheme, 'v')})")
            others.append("        return tuple(out)")
    keys.append("    raise KeyError(event_type)")
    others.append("    return ()")
    namespace: dict[str, Any] = {}
    # Our own code, generated from the catalogue's validated field paths and schemes.
    exec(compile("\n".join([*keys, "", *others]), "<subject keys>", "exec"), namespace)  # noqa: S102
    return namespace["subject_key"], namespace["other_subjects"]


_subject_key, _other_subjects = _key_functions(event_catalogue.default())


def subject_key(event_type: str, record: dict[str, Any]) -> str:
    """The key consent is recorded under: the NHS number where the event has one.

    Falling back to the provider's own identifier keeps events without an NHS
    number decidable; their consent is recorded against that identifier. Where to
    look, in order, is the type's ``accord.subject_key`` (schemas/events/<type>/):
    the first present wins, the last is always there.
    """
    return _subject_key(event_type, record)


def other_subjects(event_type: str, record: dict[str, Any]) -> tuple[str, ...]:
    """Subject keys of the other people the event is about (a baby in a natal-care event).

    The ledger records them beside ``subject_key`` so a subject report finds a person
    wherever their identifier was shared; consent is still checked under ``subject_key``.
    Who they are is the type's ``accord.other_subjects``.
    """
    return _other_subjects(event_type, record)


@lru_cache(maxsize=64)
def _order_of(event_type: str) -> Order | None:
    """The key order of the event type's schema, for straight-line projections; None if there is no such schema."""
    try:
        return key_order(load_schema(event_type))
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def projection_for(
    event_type: str,
    record: dict[str, Any],
    agreement: Agreement,
    fields: Sequence[str],
    recipient: str,
    context: Context,
) -> dict[str, Any]:
    """What ``recipient`` receives of ``record``: the allowed ``fields``, pseudonymised if the agreement says.

    Used for a new decision and, with the fields its ledger entry recorded, for the
    redelivery of an existing one (I8), so both send the same bytes.
    """
    projection = projector(fields, _order_of(event_type))(record)
    if agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED:
        return pseudonymise(event_type, projection, context.pseudonym_key, recipient)
    return projection


def consent_outcome(
    agreement: Agreement, recipient: str, records: Sequence[ConsentRecord], context: Context
) -> tuple[Outcome, str | None]:
    mode = agreement.consent_mode
    if mode is ConsentMode.NOT_REQUIRED:
        # Recorded on the DISCLOSED entry so an auditor sees consent was set aside, and by what.
        return Outcome.DISCLOSED, f"consent overridden: {agreement.gateway}"
    governing = applicable(
        records, agreement.purpose.value, recipient, context.partner_classes.get(recipient), context.now
    )
    if governing is not None and governing.decision is ConsentDecision.DENY:
        return Outcome.WITHHELD, f"consent denied (consent record {governing.id})"
    if mode is ConsentMode.EXPLICIT and governing is None:
        return Outcome.WITHHELD, "explicit consent required and none recorded"
    return Outcome.DISCLOSED, None


def candidate_agreements(
    agreements: Iterable[Agreement],
    provider: str,
    event_type: str,
    today: date,
    *,
    record: dict[str, Any] | None = None,
) -> list[Agreement]:
    """The agreements that apply: covering (provider, event type), in force today, conditions met.

    Conditions are tested only when ``record`` is given; without it the result is
    what may apply to such an event. ``Agreement.exclusion`` is the one rule, so
    ``agreements.explain`` cannot disagree with this.
    """
    return [a for a in agreements if a.exclusion(provider, event_type, today, record) is None]


@dataclass(frozen=True)
class _Plan:
    """One agreement as ``decide`` needs it for one event type."""

    agreement: Agreement
    fields: tuple[str, ...] | None  # None: the agreement names no fields for it (the model refuses that)
    project: Projector | None
    pseudonymised: bool
    id_suffixes: tuple[tuple[str, bytes | None], ...]  # (recipient, b"|recipient|agreement id|version" or None)
    overridden: tuple[Outcome, str | None] | None  # consent_outcome under a NOT_REQUIRED agreement: the same for all
    unrecorded: tuple[Outcome, str | None]  # consent_outcome for anyone with no consent records: the same for all


_ANY_CONTEXT = Context(datetime(2000, 1, 1, tzinfo=UTC))


def _id_suffix(recipient: str, agreement: Agreement) -> bytes | None:
    """The end of a disclosure id's name; None where it cannot be UTF-8 (disclosure_id then raises, as it did)."""
    try:
        return f"|{recipient}|{agreement.id}|{agreement.version}".encode()
    except UnicodeEncodeError:
        return None


class Sharing:
    """A set of agreements compiled for deciding; one may serve every thread.

    Built once per agreements version (``Sharing.of`` keeps the last few), it
    answers exactly as ``candidate_agreements`` and the decision over the same
    agreements in the same order: the index only skips agreements whose
    providers or event types cannot match, and ``Agreement.exclusion`` still
    judges every other one (its record-free part once a day). Its one mutable
    part is that per-day answer: a dict filled as (provider, event type) pairs are
    met (single item stores, atomic in CPython) and replaced whole when the day changes.
    """

    _cache: ClassVar[dict[tuple[int, ...], Sharing]] = {}
    _cache_size = 16
    _lock = threading.Lock()

    def __init__(self, agreements: Iterable[Agreement]) -> None:
        self.agreements: tuple[Agreement, ...] = tuple(agreements)
        index: dict[tuple[str, str], list[_Plan]] = {}
        for agreement in self.agreements:
            for event_type in dict.fromkeys(agreement.event_types):
                fields = agreement.fields.get(event_type)
                plan = _Plan(
                    agreement=agreement,
                    fields=None if fields is None else tuple(fields),
                    project=None if fields is None else projector(fields, _order_of(event_type)),
                    pseudonymised=agreement.identifier_treatment is IdentifierTreatment.PSEUDONYMISED,
                    id_suffixes=tuple((r, _id_suffix(r, agreement)) for r in agreement.recipients),
                    overridden=(
                        (Outcome.DISCLOSED, f"consent overridden: {agreement.gateway}")
                        if agreement.consent_mode is ConsentMode.NOT_REQUIRED
                        else None
                    ),
                    # With no records nothing governs, whoever the recipient and whenever the decision.
                    unrecorded=consent_outcome(agreement, "", (), _ANY_CONTEXT),
                )
                for provider in dict.fromkeys(agreement.providers):
                    index.setdefault((provider, event_type), []).append(plan)
        self._index: dict[tuple[str, str], tuple[_Plan, ...]] = {k: tuple(v) for k, v in index.items()}
        # (day, (provider, event type) -> plans in force that day before conditions), replaced whole
        self._in_force: tuple[date | None, dict[tuple[str, str], tuple[_Plan, ...]]] = (None, {})

    @classmethod
    def of(cls, agreements: Iterable[Agreement] | Sharing) -> Sharing:
        """The compiled form of ``agreements``, from a bounded cache keyed by the agreements' identities.

        An entry holds its agreements, so no id in its key can be reused by another
        object while it is cached; a new version of an agreement is a new object,
        hence a new entry, and the oldest entries go first.
        """
        if isinstance(agreements, Sharing):
            return agreements
        items = tuple(agreements)
        key = tuple(map(id, items))
        found = cls._cache.get(key)
        if found is not None:
            return found
        built = cls(items)
        with cls._lock:
            while len(cls._cache) >= cls._cache_size:
                cls._cache.pop(next(iter(cls._cache)))
            cls._cache[key] = built
        return built

    def candidates(
        self, provider: str, event_type: str, today: date, record: dict[str, Any] | None = None
    ) -> list[Agreement]:
        """``candidate_agreements`` over these agreements."""
        return [p.agreement for p in self._plans(provider, event_type, today, record)]

    def _plans(self, provider: str, event_type: str, today: date, record: dict[str, Any] | None) -> list[_Plan]:
        """The plans ``Agreement.exclusion`` lets apply to this event.

        What does not depend on the record (provider, type, status, dates: exclusion
        without a record) is asked once per day and kept; an agreement with conditions
        is then asked again with the record, which is exclusion's whole answer.
        """
        day, in_force = self._in_force
        if day != today:
            in_force = {}
            self._in_force = (today, in_force)
        key = (provider, event_type)
        plans = in_force.get(key)
        if plans is None:
            plans = in_force[key] = tuple(
                p for p in self._index.get(key, ()) if p.agreement.exclusion(provider, event_type, today) is None
            )
        if record is None:
            return list(plans)
        return [
            p
            for p in plans
            if not p.agreement.conditions or p.agreement.exclusion(provider, event_type, today, record) is None
        ]

    def decide(
        self,
        event_type: str,
        record: dict[str, Any],
        consents: Sequence[ConsentRecord],
        context: Context,
        *,
        key: str | None = None,
    ) -> list[Decision]:
        """``decide`` over these agreements; ``key`` is the event's ``subject_key`` when the caller has it."""
        envelope = record["envelope"]
        provider = envelope["source_agency"]
        event_id = envelope["event_id"]
        if key is None:
            key = subject_key(event_type, record)
        consent_version = version(consents)
        id_prefix: bytes | None = None  # made when the first id is: where disclosure_id would first raise
        decisions = []
        for plan in self._plans(provider, event_type, context.today, record):
            agreement = plan.agreement
            fields, project = plan.fields, plan.project
            if fields is None or project is None:
                raise KeyError(event_type)  # as agreement.fields[event_type] would
            projection: dict[str, Any] | None = None  # one per agreement, shared by its recipients
            settled = plan.overridden or (None if consents else plan.unrecorded)
            for recipient, suffix in plan.id_suffixes:
                outcome, reason = settled or consent_outcome(agreement, recipient, consents, context)
                disclosed = outcome is Outcome.DISCLOSED
                projected = None
                if disclosed:
                    if projection is None:
                        projection = project(record)
                    projected = (
                        pseudonymise(event_type, projection, context.pseudonym_key, recipient)
                        if plan.pseudonymised
                        else projection
                    )
                if id_prefix is None:
                    id_prefix = _DISCLOSURE_NS + f"{event_id}".encode()
                if suffix is None:
                    disclosure = disclosure_id(event_id, recipient, agreement.id, agreement.version)
                else:
                    disclosure = _uuid5(id_prefix + suffix)
                # Positional, in Decision's field order (a quarter cheaper than keywords on this path):
                # disclosure_id, event_id, event_type, provider, recipient, agreement, outcome, reason,
                # fields, consent_version, subject_key, projected. _new_decision is Decision(...)
                # without __init__'s 12 object.__setattr__ calls.
                decisions.append(
                    _new_decision(
                        disclosure,
                        event_id,
                        event_type,
                        provider,
                        recipient,
                        agreement,
                        outcome,
                        reason,
                        fields if disclosed else (),
                        consent_version,
                        key,
                        projected,
                    )
                )
        return decisions


def decide(
    event_type: str,
    record: dict[str, Any],
    agreements: Iterable[Agreement] | Sharing,
    consents: Sequence[ConsentRecord],
    context: Context,
    *,
    key: str | None = None,
) -> list[Decision]:
    """One decision per (agreement in force, recipient) covering this event.

    ``agreements`` may be a :class:`Sharing` already; ``key`` the event's
    ``subject_key`` when the caller has computed it.
    """
    return Sharing.of(agreements).decide(event_type, record, consents, context, key=key)
