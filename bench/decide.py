"""Benchmark: the processor's per-event CPU stages, before and after issue 10 item 3, in one run.

    python bench/decide.py [--events 3000] [--rounds 5] [--base 645edee]

The "before" code is the project's own at ``--base`` (the commit before this work):
``git show`` brings its schemas/serde.py, schemas/projection.py, schemas/validation.py,
accord/pseudonymise.py and accord/sharing.py into modules of their own, wired to each
other as they were, so both sides run in this process on the same events, agreements
and consent histories. Stages, as BatchHandler calls them:

1. decode: ``Catalogue.decode`` of each encoded event;
2. validate: ``event_problems``;
3. decide: the decision with its projections and pseudonyms; before, ``decide(...)``
   as the processor calls it now; after, ``Sharing.of(agreements)`` once per batch and
   ``sharing.decide(..., key=subject_key)`` (the old call is shown too);
4. project: ``projection_for`` per disclosure (the replay path);
5. encode: ``Catalogue.encode(projection_name(...), projected, validated=True)`` per
   disclosure, as ``_deliver`` does (shown per disclosure and per event).

"keys + sha256" is the rest of ``BatchHandler._read`` (subject_key, other_subjects, the
digest): the same code on both sides, so its ratio shows how noisy the run was.

Events go through in batches of 500 with the collector on, as in the processor, and
the two sides alternate, each going first every other round; each figure is the best
round, in CPU time. Before any
timing, every output of the new code is compared with the old: the same records,
problems, decisions (ids, outcomes, reasons, fields, projections) and bytes.
Measure only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from accord.sharing import decide as after_sharing  # noqa: E402
from agreements import load_dir  # noqa: E402
from agreements.recipient_schemas import projection_name, recipient_catalogue  # noqa: E402
from consent.model import ConsentDecision, ConsentRecord  # noqa: E402
from producers.synthetic import build_scenario  # noqa: E402
from schemas import validation as after_validation  # noqa: E402
from schemas.serde import load_schema as after_load_schema  # noqa: E402

BASE = "645edee"  # the commit before the work this measures
BATCH = 500
# Dependencies first: each old module is executed with its old neighbours in sys.modules.
BEFORE_MODULES = (
    ("schemas.serde", "schemas/serde.py"),
    ("schemas.projection", "schemas/projection.py"),
    ("schemas.validation", "schemas/validation.py"),
    ("accord.pseudonymise", "accord/pseudonymise.py"),
    ("accord.sharing", "accord/sharing.py"),
)


def load_before(base: str) -> dict[str, types.ModuleType]:
    """The modules as they were at ``base``, under their own names but outside sys.modules."""
    saved = {name: sys.modules.get(name) for name, _ in BEFORE_MODULES}
    loaded: dict[str, types.ModuleType] = {}
    try:
        for name, path in BEFORE_MODULES:
            source = subprocess.run(
                ["git", "-C", str(ROOT), "show", f"{base}:{path}"], check=True, capture_output=True, text=True
            ).stdout
            module = types.ModuleType(name)
            module.__file__ = str(ROOT / path)
            sys.modules[name] = module
            exec(compile(source, f"{base}:{path}", "exec"), module.__dict__)  # noqa: S102 - the project's own code
            if name == "schemas.serde":  # the event schemas have moved to schemas/events/<type>/v<N>.avsc
                module.__dict__["load_schema"] = after_load_schema
            loaded[name] = module
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    return loaded


def consent_histories(keys: Sequence[str], now: datetime) -> dict[str, list[ConsentRecord]]:
    """A deterministic history: a third of subjects have one to three preferences."""
    out: dict[str, list[ConsentRecord]] = {}
    next_id = 1
    for i, key in enumerate(sorted(set(keys))):
        if i % 3:
            continue
        records = []
        for j in range(1 + i % 3):
            decision = ConsentDecision.DENY if (i + j) % 2 else ConsentDecision.PERMIT
            recipient = ("salford-health-visiting", "liaison-diversion", "mash")[j % 3]
            records.append(ConsentRecord(next_id, key, None, recipient, decision, now - timedelta(days=30 - j)))
            next_id += 1
        out[key] = records
    return out


def _decision_view(d: Any) -> tuple:
    return (
        d.disclosure_id,
        d.event_id,
        d.event_type,
        d.provider,
        d.recipient,
        d.agreement.key,
        d.outcome.value,
        d.reason,
        d.fields,
        d.consent_version,
        d.subject_key,
        d.projected,
    )


def timed(fn: Callable[[list], Any], batches: list[list]) -> float:
    """CPU seconds to run ``fn`` over every batch; each batch's results live until the next (as in a processor).

    Process time, not wall time: the machine is shared, and time spent waiting for a
    core is not a cost of the code.
    """
    started = time.process_time()
    for batch in batches:
        fn(batch)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", default=BASE)
    args = parser.parse_args()

    before = load_before(args.base)
    b_serde, b_validation, b_sharing = before["schemas.serde"], before["schemas.validation"], before["accord.sharing"]

    agreements = load_dir(ROOT / "agreements" / "examples")
    new_catalogue = recipient_catalogue(agreements)
    old_catalogue = recipient_catalogue(agreements, base=b_serde.Catalogue.default())
    now = datetime.now(UTC)
    decided_at = now.replace(microsecond=now.microsecond // 1000 * 1000)
    context = after_sharing.Context(decided_at, {}, b"bench-pseudonym-key-0123456789ab")
    limits = after_validation.Limits()

    events = build_scenario(n_events=args.events, seed=7).events
    payloads = [new_catalogue.encode(e.event_type, e.record) for e in events]
    keys = [after_sharing.subject_key(e.event_type, e.record) for e in events]
    histories = consent_histories(keys, now)
    # (event type, record, subject key, consents) as step 3 of BatchHandler.handle sees them
    inputs = [(e.event_type, e.record, k, histories.get(k, ())) for e, k in zip(events, keys, strict=True)]

    # 0. the same outputs, or no figures at all
    assert [old_catalogue.decode(p) for p in payloads] == [new_catalogue.decode(p) for p in payloads]
    assert all(
        b_validation.event_problems(t, r, now, limits) == after_validation.event_problems(t, r, now, limits)
        for t, r, _, _ in inputs
    )
    sharing = after_sharing.Sharing.of(agreements)
    old_decisions = [b_sharing.decide(t, r, agreements, c, context) for t, r, _, c in inputs]
    new_decisions = [sharing.decide(t, r, c, context, key=k) for t, r, k, c in inputs]
    assert [[_decision_view(d) for d in ds] for ds in old_decisions] == [
        [_decision_view(d) for d in ds] for ds in new_decisions
    ]
    disclosed = [d for ds in new_decisions for d in ds if d.projected is not None]
    projected = [d.projected for d in disclosed if d.projected is not None]  # the same list, typed
    old_bytes = [
        old_catalogue.encode(projection_name(d.agreement, d.event_type), p, validated=True)
        for d, p in zip(disclosed, projected, strict=True)
    ]
    new_bytes = [
        new_catalogue.encode(projection_name(d.agreement, d.event_type), p, validated=True)
        for d, p in zip(disclosed, projected, strict=True)
    ]
    assert old_bytes == new_bytes
    replays = [
        (d.event_type, r, d.agreement, d.fields, d.recipient)
        for ds, (_, r, _, _) in zip(new_decisions, inputs, strict=True)
        for d in ds
        if d.projected is not None
    ]
    assert [b_sharing.projection_for(t, r, a, f, rc, context) for t, r, a, f, rc in replays] == [
        after_sharing.projection_for(t, r, a, f, rc, context) for t, r, a, f, rc in replays
    ]
    print(
        f"outputs identical: {len(payloads)} events, {sum(map(len, new_decisions))} decisions, "
        f"{len(disclosed)} disclosures ({len(set(new_bytes))} distinct payloads)"
    )

    def chunks(items: list) -> list[list]:
        return [items[i : i + BATCH] for i in range(0, len(items), BATCH)]

    records = [(t, r) for t, r, _, _ in inputs]
    deliveries = [(projection_name(d.agreement, d.event_type), d.projected) for d in disclosed]
    stages: dict[str, tuple[int, Callable[[list], Any], Callable[[list], Any], list[list]]] = {
        "decode": (
            len(payloads),
            lambda b: [old_catalogue.decode(p) for p in b],
            lambda b: [new_catalogue.decode(p) for p in b],
            chunks(payloads),
        ),
        "validate": (
            len(records),
            lambda b: [b_validation.event_problems(t, r, now, limits) for t, r in b],
            lambda b: [after_validation.event_problems(t, r, now, limits) for t, r in b],
            chunks(records),
        ),
        "keys + sha256 (control)": (
            len(payloads),
            lambda b: [
                (b_sharing.subject_key(t, r), b_sharing.other_subjects(t, r), hashlib.sha256(p).hexdigest())
                for (t, r), p in b
            ],
            lambda b: [
                (after_sharing.subject_key(t, r), after_sharing.other_subjects(t, r), hashlib.sha256(p).hexdigest())
                for (t, r), p in b
            ],
            chunks(list(zip(records, payloads, strict=True))),
        ),
        "decide": (
            len(inputs),
            lambda b: [b_sharing.decide(t, r, agreements, c, context) for t, r, _, c in b],
            lambda b: (lambda s: [s.decide(t, r, c, context, key=k) for t, r, k, c in b])(
                after_sharing.Sharing.of(agreements)
            ),
            chunks(inputs),
        ),
        "decide (old call)": (
            len(inputs),
            lambda b: [b_sharing.decide(t, r, agreements, c, context) for t, r, _, c in b],
            lambda b: [after_sharing.decide(t, r, agreements, c, context) for t, r, _, c in b],
            chunks(inputs),
        ),
        "project (per disclosure)": (
            len(replays),
            lambda b: [b_sharing.projection_for(t, r, a, f, rc, context) for t, r, a, f, rc in b],
            lambda b: [after_sharing.projection_for(t, r, a, f, rc, context) for t, r, a, f, rc in b],
            chunks(replays),
        ),
        "encode (per disclosure)": (
            len(deliveries),
            lambda b: [old_catalogue.encode(n, p, validated=True) for n, p in b],
            lambda b: [new_catalogue.encode(n, p, validated=True) for n, p in b],
            chunks(deliveries),
        ),
    }
    best: dict[str, list[float]] = {name: [float("inf"), float("inf")] for name in stages}
    for round_ in range(args.rounds):
        for name, (n, old, new, batches) in stages.items():
            for side in (0, 1) if round_ % 2 == 0 else (1, 0):  # each side goes first every other round
                best[name][side] = min(best[name][side], timed((old, new)[side], batches) / n * 1e6)

    per_event = len(disclosed) / len(payloads)
    print(
        f"\nbest of {args.rounds} rounds, µs per event unless said (base {args.base}, {per_event:.2f} disclosures/event)"
    )
    print(f"{'stage':28} {'before':>9} {'after':>9} {'ratio':>7}")
    for name, (b, a) in best.items():
        print(f"{name:28} {b:9.2f} {a:9.2f} {b / a:6.2f}x")
    total = ("decode", "validate", "keys + sha256 (control)", "decide")
    b_total = sum(best[s][0] for s in total) + best["encode (per disclosure)"][0] * per_event
    a_total = sum(best[s][1] for s in total) + best["encode (per disclosure)"][1] * per_event
    print(
        f"{'encode (per event)':28} {best['encode (per disclosure)'][0] * per_event:9.2f} "
        f"{best['encode (per disclosure)'][1] * per_event:9.2f}"
    )
    print(
        f"{'CPU stages per event':28} {b_total:9.2f} {a_total:9.2f} {b_total / a_total:6.2f}x"
        f"   (ceiling one process: {1e6 / b_total:,.0f} -> {1e6 / a_total:,.0f} events/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
