"""``accord ledger ACTION``: set up, verify, checkpoint, prove and query the disclosure ledger.

One function per action, each a thin shell over ``ledger`` (and the checkpointer's key
helpers); ``register`` adds them under ``accord ledger``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sized
from datetime import date
from pathlib import Path

from accord.cli.common import Subparsers, ledger_engine, quiet_kafka
from accord.cli.progress import progress, shown
from bus.settings import Settings

__all__ = [
    "cmd_ledger_checkpoint",
    "cmd_ledger_cosign",
    "cmd_ledger_export",
    "cmd_ledger_init",
    "cmd_ledger_accept_pseudonym_key",
    "cmd_ledger_keygen",
    "cmd_ledger_pending_receipts",
    "cmd_ledger_prove",
    "cmd_ledger_report",
    "cmd_ledger_verify",
    "cmd_ledger_verify_export",
    "register",
]


def cmd_ledger_init(args: argparse.Namespace, settings: Settings) -> int:
    """``alembic upgrade head`` as the owner (a database from before migrations is stamped first), then the grants."""
    from accord.provision import app_grants, setup_database
    from bus.database import app_role_of, owner_engine_for, shown_url
    from ledger.migrations import head, schema_state

    owner = owner_engine_for(settings)
    where = shown_url(owner.url)
    with owner.connect() as conn:
        before = schema_state(conn).current
    if owner.dialect.name != "postgresql":
        setup_database(owner, None)
        print(f"ledger ready at {where} ({_revision(before, head())}; SQLite: a development-only store, no roles)")
        return 0
    # The app role: named by the setting, else ledger_url's user when the owner has its own URL.
    app_role = settings.ledger_app_role or (app_role_of(settings) if settings.ledger_owner_url else None)
    setup_database(owner, app_role)
    print(f"ledger ready at {where} ({_revision(before, head())}; tables owned by {owner.url.username!r})")
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


def _revision(before: str | None, now: str) -> str:
    if before == now:
        return f"schema at revision {now}, nothing to upgrade"
    return f"schema upgraded from revision {before or 'none'} to {now}"


def cmd_ledger_verify(args: argparse.Namespace, settings: Settings) -> int:
    from ledger import verify

    engine = ledger_engine(settings)
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
        print(
            "accord ledger verify: checking kept notes needs the ledger's public key (ACCORD_LEDGER_VERIFIER_KEY)",
            file=sys.stderr,
        )
        return 2
    kept = []
    for where, note in notes:
        assert verifier is not None  # refused above: kept notes need the public key
        try:
            kept.append(open_checkpoint(note, verifier, settings.ledger_origin))
        except NoteError as exc:
            print(f"ledger BROKEN: a checkpoint note from {where} does not verify: {exc}")
            return 1
    from ledger.checkpoint import ledger_size

    with progress(ledger_size(engine) if shown() else None, "verifying ledger entries", unit="entries") as tick:
        result = verify(engine, verifier, settings.ledger_origin, kept, on_progress=tick)
    print(result.describe())
    return 0 if result.ok else 1


def cmd_ledger_pending_receipts(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from agreements.partners import load_partners
    from ledger.receipts import pending_receipts

    if args.older_than is not None and args.older_than < 0:
        print(
            f"accord ledger pending-receipts: --older-than must be 0 or more seconds, not {args.older_than:g}",
            file=sys.stderr,
        )
        return 2
    if args.partner is not None and args.partner not in load_partners(settings.partners_file):
        print(
            f"accord ledger pending-receipts: --partner {args.partner[:40]!r} is not in {settings.partners_file}",
            file=sys.stderr,
        )
        return 2
    engine = ledger_engine(settings)
    older = timedelta(seconds=args.older_than) if args.older_than is not None else None
    pending = pending_receipts(engine, partner=args.partner, older_than=older)
    for e in pending:
        d = e.draft
        line = {
            "seq": e.seq,
            "disclosure_id": d.disclosure_id,
            "recipient": d.recipient,
            "outcome": d.outcome,
            "agreement": f"{d.agreement_id}@v{d.agreement_version}",
            "event_type": d.event_type,
            "decided_at": d.decided_at.isoformat(),
        }
        print(
            json.dumps(line)
            if args.json
            else f"{e.seq:>8} {d.disclosure_id} {d.recipient:28} {d.outcome:9} {line['agreement']:36} {line['decided_at']}"
        )
    print(f"{len(pending)} awaiting a receipt", file=sys.stderr)
    return 0


def cmd_ledger_accept_pseudonym_key(args: argparse.Namespace, settings: Settings) -> int:
    from accord.sharing.pseudonymise import key_check
    from ledger.pseudonym_keys import accept_key

    secret = settings.pseudonym_key.get_secret_value().encode()
    if not secret:
        print("accord ledger accept-pseudonym-key: set ACCORD_PSEUDONYM_KEY to the new key", file=sys.stderr)
        return 2
    check = key_check(secret)
    before = accept_key(ledger_engine(settings), check)
    if before == check:
        print(f"the key in force is already this one (check {check}); nothing recorded")
    else:
        was = f"it replaces {before}" if before else "no key was in force"
        print(
            f"pseudonym key {check} is in force from now on ({was}); restart every processor with it. "
            "Partners get new pseudonyms for the same people from now on, also for what is delivered again"
        )
    return 0


def cmd_ledger_keygen(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.checkpointer import signer_from_settings
    from ledger.checkpoint import KEY_FILE_NAME, generate_key_file

    name = args.name or settings.ledger_origin
    if args.out is None and name == settings.ledger_origin:
        existing = signer_from_settings(settings)
        if existing is not None:
            print(
                f"the ledger already has a signing key; its public key (ACCORD_LEDGER_VERIFIER_KEY):\n"
                f"{existing.verifier.vkey}"
            )
            return 0
    path = Path(args.out) if args.out else settings.state_dir / KEY_FILE_NAME
    try:
        signer = generate_key_file(path, name, make_folder=args.out is None)
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
        print(
            "accord ledger checkpoint: no signing key; set ACCORD_LEDGER_SIGNING_KEY or run `accord ledger keygen`",
            file=sys.stderr,
        )
        return 2
    engine = ledger_engine(settings)
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
        producer = kafka.producer(settings, **quiet_kafka(settings), **{"message.timeout.ms": 10_000})
        publish_checkpoint(producer, TopicNames(settings.topic_prefix), made, settings.ledger_origin)
    state = "new" if made else "no new entries; newest"
    print(
        f"{state} checkpoint at tree size {checkpoint.tree_size:,}"
        f"{' (published)' if made and not args.no_publish else ''}:\n"
    )
    print(checkpoint.note, end="")
    return 0


def cmd_ledger_prove(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.checkpoint import checkpoint_at
    from ledger.proofs import LedgerMismatch, NotCovered, no_checkpoint_of, prove_consistency, prove_entry

    if args.entry is not None and (args.from_size is not None or args.to_size is not None):
        print(
            "accord ledger prove: give --entry N (an inclusion proof) or --from-size M (a consistency proof), not both",
            file=sys.stderr,
        )
        return 2
    engine = ledger_engine(settings)
    try:
        if args.entry is not None:
            at = None
            if args.size is not None:
                at = checkpoint_at(engine, args.size)
                if at is None:
                    raise no_checkpoint_of(engine, args.size)
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

    engine = ledger_engine(settings)
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
    engine = ledger_engine(settings)
    agreements = {a.key: a for a in load_dir(settings.agreements_dir)}
    from ledger.proofs import LedgerMismatch

    try:
        with progress(None, "proving the subject's entries", unit="entries") as tick:
            report = collect(engine, key, agreements, as_of=args.as_of, on_progress=tick)
    except LedgerMismatch as exc:  # no proof that would not verify is ever handed out
        print(
            f"accord ledger report: the ledger does not match its signed checkpoint ({exc}); "
            "no report given: run `accord ledger verify`",
            file=sys.stderr,
        )
        return 1
    text = render_html(report) if args.format == "html" else render_json(report)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(
            f"{len(report.items)} entries, {report.left_out_deferred} left out until their agreement's "
            f"transparency date; written to {args.out}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def cmd_ledger_export(args: argparse.Namespace, settings: Settings) -> int:
    from ledger.export import export_rows, render_csv, render_jsonl
    from ledger.proofs import LedgerMismatch, NotCovered

    engine = ledger_engine(settings)
    try:
        export = export_rows(engine, args.from_seq, args.to_seq, since=args.since or ())
    except (NotCovered, ValueError) as exc:
        print(f"accord ledger export: {exc}", file=sys.stderr)
        return 2
    except LedgerMismatch as exc:
        print(f"accord ledger export: {exc}", file=sys.stderr)
        return 1
    render = render_csv if args.format == "csv" else render_jsonl
    out = open(args.out, "w", encoding="utf-8", newline="") if args.out else sys.stdout  # noqa: SIM115 - closed in the finally below; stdout is not ours to close
    try:
        # Streamed: an entry missing or changed part-way is found while writing.
        assert isinstance(export.rows, Sized)  # ExportRows knows its length (see below)
        with progress(len(export.rows), "exporting ledger entries", unit="entries") as tick:
            for chunk in render(export, on_progress=tick):
                out.write(chunk)
    except LedgerMismatch as exc:
        print(f"accord ledger export: {exc}; the output is incomplete", file=sys.stderr)
        return 1
    finally:
        if args.out:
            out.close()
    # ExportRows knows its length; ledger.export.Export types its rows as a plain Iterable.
    assert isinstance(export.rows, Sized)
    print(
        f"{len(export.rows):,} entries exported, proven against the checkpoint of {export.checkpoint.tree_size:,} "
        "entries (check offline: accord ledger verify-export FILE)",
        file=sys.stderr,
    )
    return 0


def cmd_ledger_verify_export(args: argparse.Namespace, settings: Settings) -> int:
    from accord.processor.checkpointer import verifier_from_settings
    from ledger.export import verify_export
    from ledger.note import NoteVerifier

    if (args.from_seq is None) != (args.to_seq is None):
        print("accord ledger verify-export: give both --from and --to, or neither", file=sys.stderr)
        return 2
    expected = None if args.from_seq is None else (args.from_seq, args.to_seq)
    verifier = NoteVerifier.parse(args.key) if args.key else verifier_from_settings(settings)
    # Read as it is checked, in bounded memory (a missing file is main()'s one-line error).
    with open(args.file, encoding="utf-8", newline="") as lines:
        result = verify_export(lines, verifier, expected=expected)
    print(result.describe())
    return 0 if result.ok else 1


def register(sub: Subparsers) -> None:
    """``ledger ACTION``: one parser per action, each calling its ``cmd_ledger_*``."""
    ledger_sub = sub.add_parser("ledger", help="set up, verify and query the disclosure ledger").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )

    p = ledger_sub.add_parser(
        "init", help="as the owner role (ACCORD_LEDGER_OWNER_URL): create the tables and guards, grant the app role"
    )
    p.set_defaults(func=cmd_ledger_init)

    p = ledger_sub.add_parser("pending-receipts", help="disclosures no partner has acknowledged yet, oldest first")
    p.add_argument("--partner", default=None, help="only those sent to this partner")
    p.add_argument(
        "--older-than",
        type=float,
        default=None,
        metavar="SECONDS",
        help="only those recorded at least this many seconds ago",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_ledger_pending_receipts)

    p = ledger_sub.add_parser("report", help="a citizen's subject report: every decision about them, with proofs")
    p.add_argument(
        "--subject",
        required=True,
        metavar="KEY",
        help="the person's subject key: an NHS number (bare or nhs:...), pnc:<PNC id> or local:<agency>:<id>",
    )
    p.add_argument("--format", choices=["json", "html"], default="json")
    p.add_argument("--out", default=None, help="write to this file (default standard output)")
    p.add_argument(
        "--as-of",
        type=date.fromisoformat,
        default=None,
        help="the day deferred transparency is judged on (default today)",
    )
    p.set_defaults(func=cmd_ledger_report)

    p = ledger_sub.add_parser(
        "export", help="entries FROM..TO with their leaves and inclusion proofs, checkable offline"
    )
    p.add_argument("--from", dest="from_seq", type=int, required=True, metavar="SEQ")
    p.add_argument("--to", dest="to_seq", type=int, required=True, metavar="SEQ")
    p.add_argument("--format", choices=["csv", "jsonl"], default="jsonl")
    p.add_argument("--out", default=None, help="write to this file (default standard output)")
    p.add_argument(
        "--since",
        type=int,
        action="append",
        default=None,
        metavar="SIZE",
        help="tree size of a checkpoint the reader holds: include a consistency proof from it (repeatable)",
    )
    p.set_defaults(func=cmd_ledger_export)

    p = ledger_sub.add_parser(
        "verify-export", help="re-check an export file offline (leaves, chain, proofs, signature)"
    )
    p.add_argument("file")
    p.add_argument("--key", default=None, help="the ledger's public key (vkey); default ACCORD_LEDGER_VERIFIER_KEY")
    p.add_argument("--from", dest="from_seq", type=int, default=None, help="the first entry the file must hold")
    p.add_argument("--to", dest="to_seq", type=int, default=None, help="the last entry the file must hold")
    p.set_defaults(func=cmd_ledger_verify_export)

    p = ledger_sub.add_parser(
        "verify", help="check the hash chain and every signed checkpoint; name the first bad entry or checkpoint"
    )
    p.add_argument(
        "--notes",
        nargs="*",
        default=[],
        metavar="FILE",
        help="checkpoint notes kept outside the ledger (one per file): the tree must match them too",
    )
    p.add_argument(
        "--from-topic", action="store_true", help="also check every checkpoint published on accord.ledger.checkpoints"
    )
    p.set_defaults(func=cmd_ledger_verify)

    p = ledger_sub.add_parser(
        "accept-pseudonym-key",
        help="put ACCORD_PSEUDONYM_KEY in force: processors with another key are refused from now on",
    )
    p.set_defaults(func=cmd_ledger_accept_pseudonym_key)

    p = ledger_sub.add_parser(
        "keygen", help="make the ledger's checkpoint signing key (or an auditor's) and print its public key"
    )
    p.add_argument("--name", default=None, help="key name (default ACCORD_LEDGER_ORIGIN)")
    p.add_argument("--out", default=None, help="key file (default <state_dir>/ledger-signing.key)")
    p.set_defaults(func=cmd_ledger_keygen)

    p = ledger_sub.add_parser("checkpoint", help="sign a checkpoint of the ledger's Merkle tree now, and publish it")
    p.add_argument("--no-publish", action="store_true", help="store it without publishing to accord.ledger.checkpoints")
    p.set_defaults(func=cmd_ledger_checkpoint)

    p = ledger_sub.add_parser(
        "prove", help="inclusion proof of an entry, or consistency proof between two checkpoints (JSON)"
    )
    p.add_argument("--entry", type=int, default=None, help="ledger seq of the entry to prove")
    p.add_argument(
        "--size", type=int, default=None, help="against the checkpoint of this tree size (default the newest)"
    )
    p.add_argument("--from-size", type=int, default=None, help="consistency: the older checkpoint's tree size")
    p.add_argument("--to-size", type=int, default=None, help="consistency: the newer one's (default the newest)")
    p.set_defaults(func=cmd_ledger_prove)

    p = ledger_sub.add_parser("cosign", help="store an auditor's verified cosignature on a checkpoint")
    p.add_argument("--size", type=int, default=None, help="checkpoint tree size (default the newest)")
    p.add_argument(
        "--sign-with", default=None, help="an auditor's key file (from `accord ledger keygen --name ... --out ...`)"
    )
    p.add_argument("--line", default=None, help="a signature line '\u2014 <name> <base64>' made elsewhere")
    p.add_argument("--vkey", default=None, help="the cosigner's public key, <name>+<id>+<base64>")
    p.set_defaults(func=cmd_ledger_cosign)
