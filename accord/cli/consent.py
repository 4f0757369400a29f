"""``accord consent deny|permit|token|serve``: a preference recorded, a sign-in token made, or the API served.

``register`` adds the command to the parser; the consent store does the checking and recording.
"""

from __future__ import annotations

import argparse
import sys

from accord.cli.common import Subparsers, aware_datetime, load_agreements
from bus.settings import Settings

__all__ = ["cmd_consent", "cmd_consent_token", "register"]


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

    if args.action == "token":
        return cmd_consent_token(args, settings)
    if args.action == "serve":
        from accord.web.app import run_app
        from accord.web.consent_api import ApiSettingsError, app_from_settings

        try:
            # Checks ACCORD_API_SECRET, then refuses to serve as a role that could change
            # the consent history (require_app_role), however the API is started.
            app = app_from_settings()
            run_app(app, settings.api_host, settings.api_port)
        except ApiSettingsError as exc:
            print(f"accord consent serve: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.subject is None:
        print("accord consent: --subject is required for deny and permit", file=sys.stderr)
        return 2
    known = consent.KnownScopes.from_partners(load_partners(settings.partners_file))
    preference = {"purpose": args.purpose, "recipient": args.recipient, "recipient_class": args.recipient_class}
    options = {
        "subject": "--subject",
        "purpose": "--purpose",
        "recipient": "--recipient",
        "recipient_class": "--recipient-class",
        "scope": "--purpose/--recipient/--recipient-class",
        "expires_at": "--expires",
        "collected_by": "--collected-by",
        "method": "--method",
        "evidence_ref": "--evidence",
    }

    def refused(exc: consent.InvalidPreference) -> int:
        where = f" (in {settings.partners_file})" if exc.field.startswith("recipient") else ""
        print(
            f"accord consent: {options.get(exc.field, exc.field)}: {exc.reason}{where}; nothing recorded",
            file=sys.stderr,
        )
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
    print(
        f"consent record {rec.id}: {rec.decision.value} subject={rec.subject_key} "
        f"purpose={rec.purpose or '*'} recipient={scope}"
        + (f" expires={rec.expires_at.isoformat()}" if rec.expires_at else "")
    )
    from datetime import UTC, datetime

    from accord.sharing.explain import cannot_stop
    from agreements import AgreementError

    try:  # the record is made: a folder that does not load only leaves the note out
        note = cannot_stop(load_agreements(settings), rec, datetime.now(UTC).date(), known.class_of)
    except AgreementError:
        note = None
    if note is not None:
        print(f"note: {note}")
    return 0


def cmd_consent_token(args: argparse.Namespace, settings: Settings) -> int:
    """A signed token on stdout and a one-time sign-in link on stderr, for a citizen (--subject) or staff."""
    from accord.web.consent_api import ApiSettingsError, secret_from_settings
    from consent.tokens import CITIZEN, MAX_LIFETIME_S, STAFF, sign_in_link
    from schemas.subject_keys import normalise

    if args.staff == (args.subject is not None):
        print("accord consent token: give --subject KEY (a citizen) or --staff, not both", file=sys.stderr)
        return 2
    if not 0 < args.ttl <= MAX_LIFETIME_S:
        print(
            f"accord consent token: --ttl must be 1 to {MAX_LIFETIME_S} seconds (24 hours), not {args.ttl}",
            file=sys.stderr,
        )
        return 2
    try:
        subject = None if args.staff else normalise(args.subject)
        made = sign_in_link(
            secret_from_settings(settings),
            STAFF if args.staff else CITIZEN,
            subject,
            base_url=f"http://{settings.api_host}:{settings.api_port}",
            ttl_s=args.ttl,
        )
    except (ApiSettingsError, ValueError) as exc:
        print(f"accord consent token: {exc}", file=sys.stderr)
        return 2
    print(made.token)
    print(f"sign-in link (works once, for {made.expires_in_s // 60} minutes): {made.link}", file=sys.stderr)
    return 0


def register(sub: Subparsers) -> None:
    """``consent deny|permit|token|serve``."""
    p = sub.add_parser("consent", help="record a citizen's consent preference, or serve the consent API")
    p.add_argument("action", choices=["deny", "permit", "token", "serve"])
    p.add_argument(
        "--subject",
        default=None,
        help="subject key: nhs:<NHS number> (a bare NHS number is accepted), pnc:<PNC id> or local:<agency>:<id>",
    )
    p.add_argument("--purpose", default=None, help="one of the agreement purposes, e.g. research")
    p.add_argument("--recipient", default=None, help="a partner id from the partner registry, e.g. cps")
    p.add_argument(
        "--recipient-class", default=None, help="a class of recipients, e.g. nhs (see agreements/partners.yaml)"
    )
    p.add_argument("--expires", type=aware_datetime, default=None, help="ISO 8601 time after which the record lapses")
    p.add_argument("--collected-by", default="accord-cli", help="who recorded it (for the consent history)")
    p.add_argument("--method", default=None, help="how it was collected, e.g. paper-form, online, verbal")
    p.add_argument("--evidence", default=None, help="reference to the evidence (form id, call recording id)")
    p.add_argument("--staff", action="store_true", help="token: for staff (the dashboard), not a citizen")
    p.add_argument(
        "--ttl",
        type=int,
        default=900,
        metavar="SECONDS",
        help="token: how long it is valid (default 900; at most 86400)",
    )
    p.set_defaults(func=cmd_consent)
