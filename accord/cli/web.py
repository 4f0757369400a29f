"""``accord serve``: the web application (dashboard, citizens' page, consent API) on one port.

The address is ACCORD_API_HOST:ACCORD_API_PORT; the tokens are signed with
ACCORD_API_SECRET (``accord consent token`` makes one and a sign-in link).
"""

from __future__ import annotations

import argparse
import sys

from accord.cli.common import Subparsers
from bus.settings import Settings

__all__ = ["cmd_serve", "register"]


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from accord.web.app import serve
    from accord.web.consent_api import ApiSettingsError

    try:
        serve(settings)  # prints its address; refuses a role that could change the history
    except ApiSettingsError as exc:
        print(f"accord serve: {exc}", file=sys.stderr)
        return 2
    return 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser("serve", help="serve the flows dashboard (/dashboard), citizens' page (/me) and consent API")
    p.set_defaults(func=cmd_serve)
