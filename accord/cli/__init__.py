"""The ``accord`` command line: one subcommand per job, each a thin shell over a module."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import date, datetime
from pathlib import Path

from bus.settings import Settings, get_settings


def _agreements(settings: Settings):
    from agreements import load_dir

    return load_dir(settings.agreements_dir)


def _quiet_kafka(settings: Settings) -> dict[str, int]:
    """librdkafka config for a one-shot command: its own log lines stay off the terminal.

    A broker that is down shows as one line from main() naming the bootstrap
    servers, not as librdkafka's reconnect messages; at DEBUG they are shown.
    """
    return {} if settings.log_level.upper() == "DEBUG" else {"log_level": 0}


def cmd_dev(args: argparse.Namespace, settings: Settings) -> int:
    from accord.dev import devstack

    if args.action == "up":
        print(devstack.up(settings).describe())
    elif args.action == "down":
        print("broker stopped" if devstack.down(settings) else "broker was not running")
    else:
        st = devstack.status(settings)
        print(st.describe())
        return 0 if st.running else 3
    return 0


def cmd_topics(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import recipients_by_type
    from bus import kafka
    from bus.topics import TopicNames, create_topics

    specs = TopicNames(settings.topic_prefix).catalogue(recipients_by_type(_agreements(settings)))
    admin = kafka.admin(settings, **_quiet_kafka(settings))
    for name, state in sorted(create_topics(admin, specs).items()):
        print(f"{state:8} {name}")
    return 0


def cmd_publish(args: argparse.Namespace, settings: Settings) -> int:
    from producers import Publisher, ingest_jsonl

    path = Path(args.file)
    report = ingest_jsonl(path, args.type, args.agency, Publisher(settings))
    for refusal in report.refused:
        print(refusal.describe(path), file=sys.stderr)
    published = report.published
    print(
        f"{report.read} lines read, {published.delivered} published, {len(report.refused)} refused, "
        f"{len(published.failed)} failed delivery"
    )
    for event_id, error in published.failed:
        print(f"delivery failed: event {event_id}: {error}", file=sys.stderr)
    return 1 if report.refused or published.failed else 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.app import run_processor

    if args.workers < 1:
        print(f"accord run: --workers must be at least 1, not {args.workers}", file=sys.stderr)
        return 2
    if args.workers > 1:
        from accord.processor.workers import run_workers

        return run_workers(args.workers, settings.health_port)
    try:
        code = run_processor(settings)
    except ValueError as exc:  # a setting the processor cannot start without (e.g. ACCORD_PSEUDONYM_KEY)
        print(f"accord run: {exc}", file=sys.stderr)
        return 2
    if not settings.leave_group_on_stop:
        # End the process without running the consumer's destructor, which would leave the
        # group (ACCORD_LEAVE_GROUP_ON_STOP): everything is committed and flushed by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from consumers import Retraction, Subscription
    from schemas.serde import to_json

    agreements = _agreements(settings)
    with Subscription(settings, args.partner, agreements, group_id=args.group,
                      client_config=_quiet_kafka(settings)) as sub:
        count = 0
        for d in sub.iter(max_records=args.max, idle_timeout=args.idle):
            count += 1
            if isinstance(d, Retraction):
                notice = {"retraction_id": d.retraction_id, "retracts": d.retracts_disclosure_id,
                          "agreement": d.agreement, "reason": d.reason, "since": to_json(d.since),
                          "fields": list(d.fields), "ledger_seq": d.ledger_seq}
                print(json.dumps(notice) if args.json else f"RETRACTION {notice}")
            elif args.json:
                print(json.dumps({"disclosure_id": d.disclosure_id, "agreement": d.agreement,
                                  "event_type": d.event_type, "ledger_seq": d.ledger_seq,
                                  "record": to_json(d.record)}))
            else:
                print(f"{d.disclosure_id} {d.agreement} {d.event_type} seq={d.ledger_seq} {to_json(d.record)}")
        sub.commit()
    print(f"{count} records (disclosures and retractions) received by {args.partner}", file=sys.stderr)
    return 0


def cmd_consent(args: argparse.Namespace, settings: Settings) -> int:
    """`accord consent deny|permit|serve`; a preference that would never apply is refused, exit 2.

    The history is append-only, so a malformed subject key or an unknown recipient,
    class or purpose is refused before anything is recorded: one line naming the
    option and what to write instead. The known recipients and classes come from
    the partner registry (ACCORD_PARTNERS_FILE), which the shell loads and passes
    in; the consent store reads no files.
    """
    import consent
    from accord.provision import require_app_role
    from agreements.partners import load_partners
    from bus.database import engine_for

    if args.action == "serve":
        import uvicorn

        from accord.web.consent_api import ApiSettingsError, app_from_settings

        try:
            # Checks ACCORD_API_SECRET, then refuses to serve as a role that could change
            # the consent history (require_app_role), however the API is started.
            app = app_from_settings()
        except ApiSettingsError as exc:
            print(f"accord consent serve: {exc}", file=sys.stderr)
            return 2
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
        return 0
    if args.subject is None:
        print("accord consent: --subject is required for deny and permit", file=sys.stderr)
        return 2
    known = consent.KnownScopes.from_partners(load_partners(settings.partners_file))
    preference = {"purpose": args.purpose, "recipient": args.recipient, "recipient_class": args.recipient_class}
    options = {
        "subject": "--subject", "purpose": "--purpose", "recipient": "--recipient",
        "recipient_class": "--recipient-class", "scope": "--purpose/--recipient/--recipient-class",
        "expires_at": "--expires",
    }

    def refused(exc: consent.InvalidPreference) -> int:
        where = f" (in {settings.partners_file})" if exc.field.startswith("recipient") else ""
        print(f"accord consent: {options.get(exc.field, exc.field)}: {exc.reason}{where}; nothing recorded",
              file=sys.stderr)
        return 2

    try:  # before connecting: a mistyped preference is refused even with the database down
        consent.check_preference(args.subject, known, **preference)
    except consent.InvalidPreference as exc:
        return refused(exc)
    # Consent history is append-only like the ledger: its writers refuse to run as the
    # tables' owner, a superuser or a role that could change it (PostgreSQL).
    engine = engine_for(settings)
    require_app_role(engine)
    try:
        rec = consent.record(
            engine,
            args.subject,
            consent.ConsentDecision.DENY if args.action == "deny" else consent.ConsentDecision.PERMIT,
            known=known,
            **preference,
            expires_at=args.expires,
            collected_by=args.collected_by,
            method=args.method,
            evidence_ref=args.evidence,
        )
    except consent.InvalidPreference as exc:
        return refused(exc)
    scope = rec.recipient or (f"class:{rec.recipient_class}" if rec.recipient_class else "*")
    print(f"consent record {rec.id}: {rec.decision.value} subject={rec.subject_key} "
          f"purpose={rec.purpose or '*'} recipient={scope}")
    return 0


# `accord ledger ACTION`: one function per action, registered in _ledger_parsers.


def cmd_ledger_init(args: argparse.Namespace, settings: Settings) -> int:
    from accord.provision import app_grants, setup_database
    from bus.database import app_role_of, owner_engine_for

    owner = owner_engine_for(settings)
    where = owner.url.render_as_string(hide_password=True)
    if owner.dialect.name != "postgresql":
        setup_database(owner, None)
        print(f"ledger ready at {where} (SQLite: a development-only store, no roles to separate)")
        return 0
    # The app role: named by the setting, else ledger_url's user when the owner has its own URL.
    app_role = settings.ledger_app_role or (app_role_of(settings) if settings.ledger_owner_url else None)
    setup_database(owner, app_role)
    print(f"ledger ready at {where} (tables owned by {owner.url.username!r})")
    if app_role is None:
        print(
            "warning: no application role granted. The bus refuses to run as the tables' owner: set "
            "ACCORD_LEDGER_OWNER_URL to the owner's URL and ACCORD_LEDGER_URL to the application role's, "
            "then run `accord ledger init` again",
            file=sys.stderr,
        )
        return 0
    for g in app_grants():
        print(f"granted {app_role!r} {', '.join(g.privileges)} on {g.table}")
    return 0


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import verify

    engine = _ledger_engine(settings)
    from accord.processor.checkpointer import read_published_notes, verifier_from_settings
    from bus.topics import TopicNames
    from ledger.checkpoint import open_checkpoint
    from ledger.note import NoteError

    verifier = verifier_from_settings(settings)
    notes = [(name, Path(name).read_text(encoding="utf-8")) for name in args.notes]
    if args.from_topic:
        names = TopicNames(settings.topic_prefix)
        notes += [(names.ledger_checkpoints, n) for n in read_published_notes(settings, names)]
    if notes and verifier is None:
        print("accord ledger verify: checking kept notes needs the ledger's public key "
              "(ACCORD_LEDGER_VERIFIER_KEY)", file=sys.stderr)
        return 2
    kept = []
    for where, note in notes:
        try:
            kept.append(open_checkpoint(note, verifier, settings.ledger_origin))
        except NoteError as exc:
            print(f"ledger BROKEN: a checkpoint note from {where} does not verify: {exc}")
            return 1
    result = verify(engine, verifier, settings.ledger_origin, kept)
    print(result.describe())
    return 0 if result.ok else 1


def cmd_ledger_pending_receipts(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from ledger.receipts import pending_receipts

    engine = _ledger_engine(settings)
    older = timedelta(seconds=args.older_than) if args.older_than is not None else None
    pending = pending_receipts(engine, partner=args.partner, older_than=older)
    for e in pending:
        d = e.draft
        line = {"seq": e.seq, "disclosure_id": d.disclosure_id, "recipient": d.recipient, "outcome": d.outcome,
                "agreement": f"{d.agreement_id}@v{d.agreement_version}", "event_type": d.event_type,
                "decided_at": d.decided_at.isoformat()}
        print(json.dumps(line) if args.json else
              f"{e.seq:>8} {d.disclosure_id} {d.recipient:28} {d.outcome:9} {line['agreement']:36} {line['decided_at']}")
    print(f"{len(pending)} awaiting a receipt", file=sys.stderr)
    return 0


def _ledger_engine(settings: Settings):
    """The ledger of a command that reads it: refuses (exit 2) one that does not exist, never creates it."""
    from accord.provision import open_ledger

    return open_ledger(settings)


def cmd_ledger_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.checkpointer import signer_from_settings
    from ledger.checkpoint import KEY_FILE_NAME, generate_key_file

    name = args.name or settings.ledger_origin
    if args.out is None and name == settings.ledger_origin:
        existing = signer_from_settings(settings)
        if existing is not None:
            print(f"the ledger already has a signing key; its public key (ACCORD_LEDGER_VERIFIER_KEY):\n"
                  f"{existing.verifier.vkey}")
            return 0
    path = Path(args.out) if args.out else settings.state_dir / KEY_FILE_NAME
    try:
        signer = generate_key_file(path, name)
    except FileExistsError:
        print(f"accord ledger keygen: {path} exists; not overwritten", file=sys.stderr)
        return 2
    print(f"signing key for {name} written to {path} (keep it secret)")
    print(f"public key, for verifiers (ACCORD_LEDGER_VERIFIER_KEY) and auditors:\n{signer.verifier.vkey}")
    return 0


def cmd_ledger_checkpoint(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.checkpointer import publish_checkpoint, signer_from_settings
    from bus import kafka
    from bus.topics import TopicNames
    from ledger.checkpoint import CheckpointRefused, latest_checkpoint, make_checkpoint

    signer = signer_from_settings(settings)
    if signer is None:
        print("accord ledger checkpoint: no signing key; set ACCORD_LEDGER_SIGNING_KEY or run "
              "`accord ledger keygen`", file=sys.stderr)
        return 2
    engine = _ledger_engine(settings)
    try:
        made = make_checkpoint(engine, signer, settings.ledger_origin)
    except CheckpointRefused as exc:
        print(f"accord ledger checkpoint: refused, nothing signed: {exc}", file=sys.stderr)
        return 1
    checkpoint = made or latest_checkpoint(engine)
    if checkpoint is None:
        print("the ledger is empty: no checkpoint made")
        return 0
    if made is not None and not args.no_publish:
        # A broker that is down fails the publication within 10 s (NotDelivered: one line from main()).
        producer = kafka.producer(settings, **_quiet_kafka(settings), **{"message.timeout.ms": 10_000})
        publish_checkpoint(producer, TopicNames(settings.topic_prefix), made, settings.ledger_origin)
    state = "new" if made else "no new entries; newest"
    print(f"{state} checkpoint at tree size {checkpoint.tree_size:,}"
          f"{' (published)' if made and not args.no_publish else ''}:\n")
    print(checkpoint.note, end="")
    return 0


def cmd_ledger_prove(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import checkpoint_at
    from ledger.proofs import LedgerMismatch, NotCovered, prove_consistency, prove_entry

    engine = _ledger_engine(settings)
    try:
        if args.entry is not None:
            at = None
            if args.size is not None:
                at = checkpoint_at(engine, args.size)
                if at is None:
                    raise NotCovered(f"no checkpoint of tree size {args.size:,}")
            proof = prove_entry(engine, args.entry, at).to_dict()
        elif args.from_size is not None:
            proof = prove_consistency(engine, args.from_size, args.to_size).to_dict()
        else:
            print("accord ledger prove: give --entry N, or --from-size M [--to-size N]", file=sys.stderr)
            return 2
    except NotCovered as exc:
        print(f"accord ledger prove: {exc}", file=sys.stderr)
        return 2
    except LedgerMismatch as exc:
        print(f"accord ledger prove: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(proof, indent=2))
    return 0


def cmd_ledger_cosign(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import add_cosignature, checkpoint_at, latest_checkpoint
    from ledger.note import NoteError, NoteSigner, SignedNote

    engine = _ledger_engine(settings)
    checkpoint = checkpoint_at(engine, args.size) if args.size is not None else latest_checkpoint(engine)
    if checkpoint is None:
        print("accord ledger cosign: no such checkpoint", file=sys.stderr)
        return 2
    try:
        if args.sign_with:
            auditor = NoteSigner.parse(Path(args.sign_with).read_text(encoding="utf-8"))
            line = auditor.signature(SignedNote.parse(checkpoint.note).text).line
            vkey = auditor.verifier.vkey
        elif args.line and args.vkey:
            line, vkey = args.line, args.vkey
        else:
            print("accord ledger cosign: give --sign-with KEYFILE, or --line and --vkey", file=sys.stderr)
            return 2
        cosig = add_cosignature(engine, checkpoint.tree_size, line, vkey)
    except NoteError as exc:
        print(f"accord ledger cosign: refused: {exc}", file=sys.stderr)
        return 1
    print(f"cosignature of {cosig.cosigner} stored on checkpoint {checkpoint.tree_size:,}:")
    print(cosig.signature_line)
    return 0


def cmd_ledger_report(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import load_dir
    from ledger.report import collect, render_html, render_json
    from schemas.subject_keys import InvalidSubjectKey, normalise

    try:  # any subject-key kind the ledger holds; a bare NHS number means nhs:<number>
        key = normalise(args.subject)
    except InvalidSubjectKey as exc:
        print(f"accord ledger report: --subject: {exc.reason}", file=sys.stderr)
        return 2
    engine = _ledger_engine(settings)
    agreements = {a.key: a for a in load_dir(settings.agreements_dir)}
    from ledger.proofs import LedgerMismatch

    try:
        report = collect(engine, key, agreements, as_of=args.as_of)
    except LedgerMismatch as exc:  # no proof that would not verify is ever handed out
        print(f"accord ledger report: the ledger does not match its signed checkpoint ({exc}); "
              "no report given: run `accord ledger verify`", file=sys.stderr)
        return 1
    text = render_html(report) if args.format == "html" else render_json(report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(report.items)} entries, {report.left_out_deferred} left out until their agreement's "
              f"transparency date; written to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_ledger_export(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.export import export_rows, render_csv, render_jsonl
    from ledger.proofs import LedgerMismatch, NotCovered

    engine = _ledger_engine(settings)
    try:
        export = export_rows(engine, args.from_seq, args.to_seq, since=args.since or ())
    except (NotCovered, ValueError) as exc:
        print(f"accord ledger export: {exc}", file=sys.stderr)
        return 2
    except LedgerMismatch as exc:
        print(f"accord ledger export: {exc}", file=sys.stderr)
        return 1
    chunks = render_csv(export) if args.format == "csv" else render_jsonl(export)
    out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        # Streamed: an entry missing or changed part-way is found while writing.
        for chunk in chunks:
            out.write(chunk)
    except LedgerMismatch as exc:
        print(f"accord ledger export: {exc}; the output is incomplete", file=sys.stderr)
        return 1
    finally:
        if args.out:
            out.close()
    print(f"{len(export.rows):,} entries exported, proven against the checkpoint of {export.checkpoint.tree_size:,} "
          "entries (check offline: accord ledger verify-export FILE)", file=sys.stderr)
    return 0


def cmd_ledger_verify_export(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.checkpointer import verifier_from_settings
    from ledger.export import verify_export
    from ledger.note import NoteVerifier

    verifier = NoteVerifier.parse(args.key) if args.key else verifier_from_settings(settings)
    # Read as it is checked, in bounded memory (a missing file is main()'s one-line error).
    with open(args.file, encoding="utf-8", newline="") as lines:
        result = verify_export(lines, verifier)
    print(result.describe())
    return 0 if result.ok else 1


def _ledger_parsers(ledger_sub: argparse._SubParsersAction) -> None:
    p = ledger_sub.add_parser(
        "init", help="as the owner role (ACCORD_LEDGER_OWNER_URL): create the tables and guards, grant the app role"
    )
    p.set_defaults(func=cmd_ledger_init)

    p = ledger_sub.add_parser("pending-receipts", help="disclosures no partner has acknowledged yet, oldest first")
    p.add_argument("--partner", default=None, help="only those sent to this partner")
    p.add_argument("--older-than", type=float, default=None, metavar="SECONDS",
                   help="only those recorded at least this many seconds ago")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_ledger_pending_receipts)

    p = ledger_sub.add_parser("report", help="a citizen's subject report: every decision about them, with proofs")
    p.add_argument("--subject", required=True, metavar="KEY",
                   help="the person's subject key: an NHS number (bare or nhs:...), pnc:<PNC id> or local:<agency>:<id>")
    p.add_argument("--format", choices=["json", "html"], default="json")
    p.add_argument("--out", default=None, help="write to this file (default standard output)")
    p.add_argument("--as-of", type=date.fromisoformat, default=None,
                   help="the day deferred transparency is judged on (default today)")
    p.set_defaults(func=cmd_ledger_report)

    p = ledger_sub.add_parser("export", help="entries FROM..TO with their leaves and inclusion proofs, checkable offline")
    p.add_argument("--from", dest="from_seq", type=int, required=True, metavar="SEQ")
    p.add_argument("--to", dest="to_seq", type=int, required=True, metavar="SEQ")
    p.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    p.add_argument("--out", default=None, help="write to this file (default standard output)")
    p.add_argument("--since", type=int, action="append", default=None, metavar="SIZE",
                   help="tree size of a checkpoint the reader holds: include a consistency proof from it (repeatable)")
    p.set_defaults(func=cmd_ledger_export)

    p = ledger_sub.add_parser("verify-export", help="re-check an export file offline (leaves, chain, proofs, signature)")
    p.add_argument("file")
    p.add_argument("--key", default=None, help="the ledger's public key (vkey); default ACCORD_LEDGER_VERIFIER_KEY")
    p.set_defaults(func=cmd_ledger_verify_export)

    p = ledger_sub.add_parser(
        "verify", help="check the hash chain and every signed checkpoint; name the first bad entry or checkpoint"
    )
    p.add_argument("--notes", nargs="*", default=[], metavar="FILE",
                   help="checkpoint notes kept outside the ledger (one per file): the tree must match them too")
    p.add_argument("--from-topic", action="store_true",
                   help="also check every checkpoint published on accord.ledger.checkpoints")
    p.set_defaults(func=cmd_ledger_verify)

    p = ledger_sub.add_parser("keygen", help="make the ledger's checkpoint signing key (or an auditor's) and print its public key")
    p.add_argument("--name", default=None, help="key name (default ACCORD_LEDGER_ORIGIN)")
    p.add_argument("--out", default=None, help="key file (default <state_dir>/ledger-signing.key)")
    p.set_defaults(func=cmd_ledger_keygen)

    p = ledger_sub.add_parser("checkpoint", help="sign a checkpoint of the ledger's Merkle tree now, and publish it")
    p.add_argument("--no-publish", action="store_true", help="store it without publishing to accord.ledger.checkpoints")
    p.set_defaults(func=cmd_ledger_checkpoint)

    p = ledger_sub.add_parser("prove", help="inclusion proof of an entry, or consistency proof between two checkpoints (JSON)")
    p.add_argument("--entry", type=int, default=None, help="ledger seq of the entry to prove")
    p.add_argument("--size", type=int, default=None, help="against the checkpoint of this tree size (default the newest)")
    p.add_argument("--from-size", type=int, default=None, help="consistency: the older checkpoint's tree size")
    p.add_argument("--to-size", type=int, default=None, help="consistency: the newer one's (default the newest)")
    p.set_defaults(func=cmd_ledger_prove)

    p = ledger_sub.add_parser("cosign", help="store an auditor's verified cosignature on a checkpoint")
    p.add_argument("--size", type=int, default=None, help="checkpoint tree size (default the newest)")
    p.add_argument("--sign-with", default=None, help="an auditor's key file (from `accord ledger keygen --name ... --out ...`)")
    p.add_argument("--line", default=None, help="a signature line '\u2014 <name> <base64>' made elsewhere")
    p.add_argument("--vkey", default=None, help="the cosigner's public key, <name>+<id>+<base64>")
    p.set_defaults(func=cmd_ledger_cosign)


# `accord agreements ACTION`: one function per action, registered in _agreements_parsers.


def _agreements_dir(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.dir) if args.dir else settings.agreements_dir


def cmd_agreements_list(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import load_dir

    for a in sorted(load_dir(_agreements_dir(args, settings)), key=lambda a: (a.id, a.version)):
        print(f"{a.key:40} {a.status.value:9} {a.consent_mode.value:12} {a.purpose.value:34} "
              f"{','.join(a.providers)} -> {','.join(a.recipients)} [{','.join(a.event_types)}]")
    return 0


def cmd_agreements_publish(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.agreement_feed import publish_agreements
    from agreements import load_dir

    directory = _agreements_dir(args, settings)
    count = publish_agreements(settings, load_dir(directory))
    print(f"{count} agreements published from {directory}")
    return 0


def cmd_agreements_validate(args: argparse.Namespace, settings: Settings) -> int:
    from agreements import validate_dir

    directory = _agreements_dir(args, settings)
    problems = validate_dir(directory)
    for problem in problems:
        print(problem, file=sys.stderr)
    files = len(list(directory.glob("*.yaml")))
    if problems:
        print(f"{len(problems)} problems in {directory} ({files} files)")
        return 1
    print(f"{files} agreements in {directory}: all valid")
    return 0


def cmd_agreements_explain(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import UTC, time

    from accord.sharing.decide import Context, subject_key
    from accord.sharing.explain import EventError, explain, parse_event, render_text
    from agreements import IdentifierTreatment, load_dir
    from agreements.partners import load_partners

    path = Path(args.event)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        event_type, record = parse_event(data, args.type)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        print(f"accord agreements explain: {path}: not valid JSON: {exc}", file=sys.stderr)
        return 2
    except EventError as exc:
        print(f"accord agreements explain: {path}: {exc}", file=sys.stderr)
        return 2
    now = datetime.combine(args.date, time(12), tzinfo=UTC) if args.date else datetime.now(UTC)
    consents = []
    if not args.no_consent:
        import consent

        engine = _ledger_engine(settings)  # reads consent; refuses a database that does not exist
        consents = consent.history(engine, [subject_key(event_type, record)]).get(subject_key(event_type, record), [])
    agreements = load_dir(_agreements_dir(args, settings))
    pseudonym_key = settings.pseudonym_key.get_secret_value().encode()
    if not pseudonym_key and any(
        a.identifier_treatment is IdentifierTreatment.PSEUDONYMISED and event_type in a.event_types for a in agreements
    ):
        print(f"accord agreements explain: an agreement pseudonymises {event_type} identifiers; set "
              "ACCORD_PSEUDONYM_KEY (the processor's) to see the tokens its recipients would get", file=sys.stderr)
        return 2
    context = Context(now, load_partners(settings.partners_file), pseudonym_key)
    result = explain(event_type, record, agreements, consents, context)
    print(json.dumps(result.to_dict(), indent=2) if args.json else render_text(result), end="" if not args.json else "\n")
    return 0


def _agreements_parsers(agreements_sub: argparse._SubParsersAction) -> None:
    folder_help = "folder of agreement YAML files (default ACCORD_AGREEMENTS_DIR)"
    for action, func, help_text in (
        ("list", cmd_agreements_list, "list the agreements of a folder"),
        ("publish", cmd_agreements_publish, "publish them to the running processor (new versions apply at once)"),
        ("validate", cmd_agreements_validate, "check every file and print every problem as file:line: field: problem"),
    ):
        p = agreements_sub.add_parser(action, help=help_text)
        p.add_argument("dir", nargs="?", default=None, help=folder_help)
        p.set_defaults(func=func)

    p = agreements_sub.add_parser(
        "explain", help="which agreements an event matches, which not and why, and what each recipient would receive"
    )
    p.add_argument("event", help="one event as a JSON object (the shape `accord publish` takes per line)")
    p.add_argument("--type", default=None, help="event type; inferred when the event fits exactly one schema")
    p.add_argument("--dir", default=None, help=folder_help)
    p.add_argument("--date", type=date.fromisoformat, default=None, help="decide as on this day (default today)")
    p.add_argument("--no-consent", action="store_true", help="ignore the consent database (as if nothing recorded)")
    p.add_argument("--json", action="store_true", help="the explanation as JSON")
    p.set_defaults(func=cmd_agreements_explain)


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from accord.dev.demo import run_demo

    return run_demo(settings, n_events=args.events)


def _aware_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2027-01-01T00:00:00Z")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="accord", description="Accord: data-sharing bus with a consent ledger")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("dev", help="start, stop or check the embedded broker")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("topics", help="create every topic of the catalogue (idempotent)")
    p.add_argument("action", choices=["create"])
    p.set_defaults(func=cmd_topics)

    p = sub.add_parser("publish", help="publish a JSON-lines file of events")
    p.add_argument("--agency", required=True, help="publishing agency id; must match each event's envelope")
    p.add_argument("--type", required=True, choices=["custody", "referral", "natal_care"])
    p.add_argument("file")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser("run", help="run a stream processor")
    p.add_argument("what", choices=["processor"])
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N processor processes in one consumer group (default 1); with a health "
                        "port set, worker i listens on ACCORD_HEALTH_PORT + i")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("consume", help="print the disclosures a partner receives")
    p.add_argument("--partner", required=True)
    p.add_argument("--max", type=int, default=None, help="stop after N records")
    p.add_argument("--idle", type=float, default=10.0, help="stop after this many seconds with nothing new")
    p.add_argument("--group", default=None, help="consumer group (default accord-partner-<partner>)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("consent", help="record a citizen's consent preference, or serve the consent API")
    p.add_argument("action", choices=["deny", "permit", "serve"])
    p.add_argument("--subject", default=None,
                   help="subject key: nhs:<NHS number> (a bare NHS number is accepted), pnc:<PNC id> or "
                        "local:<agency>:<id>")
    p.add_argument("--purpose", default=None, help="one of the agreement purposes, e.g. research")
    p.add_argument("--recipient", default=None, help="a partner id from the partner registry, e.g. cps")
    p.add_argument("--recipient-class", default=None, help="a class of recipients, e.g. nhs (see agreements/partners.yaml)")
    p.add_argument("--expires", type=_aware_datetime, default=None, help="ISO 8601 time after which the record lapses")
    p.add_argument("--collected-by", default="accord-cli", help="who recorded it (for the consent history)")
    p.add_argument("--method", default=None, help="how it was collected, e.g. paper-form, online, verbal")
    p.add_argument("--evidence", default=None, help="reference to the evidence (form id, call recording id)")
    p.set_defaults(func=cmd_consent)

    p = sub.add_parser("ledger", help="set up, verify and query the disclosure ledger")
    _ledger_parsers(p.add_subparsers(dest="action", required=True, metavar="ACTION"))

    p = sub.add_parser("agreements", help="list, validate, explain or publish the data-sharing agreements")
    _agreements_parsers(p.add_subparsers(dest="action", required=True, metavar="ACTION"))

    p = sub.add_parser("demo", help="run the end-to-end demo on the embedded stack")
    p.add_argument("--events", type=int, default=1200)
    p.set_defaults(func=cmd_demo)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """The command as typed (``ledger verify``, ``topics create``, ``consume``), for error lines."""
    sub = next((v for v in (getattr(args, "action", None), getattr(args, "what", None)) if isinstance(v, str)), None)
    return f"{args.command} {sub}" if sub else args.command


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _settings_problems(exc: Exception) -> str:
    """A refused ACCORD_* setting, named by its variable; the value given is never repeated."""
    parts = []
    for err in exc.errors():  # pydantic ValidationError
        name = "ACCORD_" + "_".join(str(p) for p in err["loc"]).upper()
        parts.append(f"{name}: {err['msg']}")
    return "; ".join(parts) + "; fix the environment variable"


def _kafka_problem(exc: Exception, settings: Settings | None) -> str:
    from confluent_kafka import KafkaError

    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    servers = settings.bootstrap_servers if settings is not None else "ACCORD_BOOTSTRAP_SERVERS"
    detail = _one_line(err.str() if err is not None else exc)
    unreachable = (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT,
                   KafkaError._RESOLVE, KafkaError._MSG_TIMED_OUT)
    if err is not None and err.code() in unreachable:
        return (f"no Kafka broker answered at {servers} ({detail}); start it (`accord dev up` for the "
                "embedded one) or set ACCORD_BOOTSTRAP_SERVERS")
    return f"the Kafka broker at {servers} refused: {detail}"


def _where_raised(exc: BaseException) -> str:
    """``file:line`` of the innermost frame in Accord's own code (not a value, so safe to print)."""
    import traceback

    from bus.settings import PACKAGE_ROOT

    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        if path.is_relative_to(PACKAGE_ROOT) and ".venv" not in path.parts and "site-packages" not in path.parts:
            where = f"{path.relative_to(PACKAGE_ROOT)}:{frame.lineno}"
    return where


def describe_error(exc: Exception, settings: Settings | None, command: str) -> tuple[list[str], int] | None:
    """The lines a person sees for an expected error, and the exit code; None when unexpected.

    One line each (what is wrong, where, what to do); agreements refused print
    every problem as ``file:line: field: problem``, as ``agreements validate`` does.
    Database errors never echo a statement's parameters; no line repeats a
    record's values (I6).
    """
    from confluent_kafka import KafkaException
    from pydantic import ValidationError
    from sqlalchemy.exc import ArgumentError, DBAPIError

    from accord.dev.devstack import DevStackError
    from agreements.loader import AgreementError, AgreementsRefused
    from ledger.roles import LedgerRoleError, LedgerSchemaMissing

    prefix = f"accord {command}: "
    if isinstance(exc, AgreementsRefused):
        lines = [_one_line(p) for p in exc.problems]
        lines.append(f"{prefix}{len(exc.problems)} problem(s) in the agreements of {exc.directory}; nothing done: "
                     f"fix them (`accord agreements validate {exc.directory}` lists them)")
        return lines, 2
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        return [prefix + _settings_problems(exc)], 2
    if isinstance(exc, DBAPIError):
        from bus.database import describe_database_error

        url = ""
        if settings is not None:
            url = settings.ledger_owner_url if command == "ledger init" and settings.ledger_owner_url else (
                settings.resolved_ledger_url)
        return [prefix + describe_database_error(exc, url or "sqlite://")], 2
    if isinstance(exc, ArgumentError):  # a URL SQLAlchemy cannot parse; the text does not echo it
        return [f"{prefix}ACCORD_LEDGER_URL (or ACCORD_LEDGER_OWNER_URL): {_one_line(exc)}; "
                "give a URL such as postgresql+psycopg://user@host:5432/accord"], 2
    if isinstance(exc, KafkaException):
        return [prefix + _kafka_problem(exc, settings)], 2
    if isinstance(exc, OSError) and exc.filename is not None:  # a path the person gave, or the state folder
        reason = (exc.strerror or type(exc).__name__).lower()
        return [f"{prefix}{exc.filename}: {reason}; check the path and its permissions"], 2
    if isinstance(exc, ValidationError):  # pydantic on input: field and message, never the input value
        return [prefix + "; ".join(f"{'.'.join(map(str, e['loc'])) or '(input)'}: {e['msg']}" for e in exc.errors())], 2
    from bus.errors import NotDelivered

    if isinstance(exc, NotDelivered):
        servers = settings.bootstrap_servers if settings is not None else "ACCORD_BOOTSTRAP_SERVERS"
        if exc.what.startswith("checkpoint"):
            return [f"{prefix}{_one_line(exc)}: no Kafka broker took it at {servers}; the checkpoint is stored in "
                    "the ledger, the processor publishes the next one (or start the broker and sign again after "
                    "new entries)"], 2
        return [f"{prefix}{_one_line(exc)}: no Kafka broker took it at {servers}; check that the broker is "
                "running and ACCORD_BOOTSTRAP_SERVERS points at it"], 2
    expected = (AgreementError, DevStackError, LedgerRoleError, LedgerSchemaMissing, PermissionError, TimeoutError,
                ConnectionError, ValueError)  # ValueError covers SerdeError and every refusal of input
    if isinstance(exc, expected):
        return [prefix + _one_line(exc)], 2
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command; an error becomes one line on stderr and exit 2, never a traceback.

    An unexpected error also gives one line (its kind and where, never its text,
    which could hold a record's values) and exit 70; ACCORD_LOG_LEVEL=DEBUG adds
    the traceback.
    """
    args = build_parser().parse_args(argv)
    command = _command_name(args)
    settings: Settings | None = None
    try:
        settings = get_settings()
        from bus.logs import configure_logging

        configure_logging(settings)
        return args.func(args, settings)
    except KeyboardInterrupt:
        print(f"accord {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        debug = (settings.log_level if settings is not None else os.environ.get("ACCORD_LOG_LEVEL", "")).upper() == "DEBUG"
        if debug:
            import traceback

            traceback.print_exc()
        described = describe_error(exc, settings, command)
        if described is not None:
            lines, code = described
            for line in lines:
                print(line, file=sys.stderr)
            return code
        print(f"accord {command}: unexpected error ({type(exc).__name__} at {_where_raised(exc)}); "
              "run with ACCORD_LOG_LEVEL=DEBUG for the traceback", file=sys.stderr)
        return 70

