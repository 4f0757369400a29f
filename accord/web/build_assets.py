"""Vendor the GOV.UK Design System's compiled CSS and JS into accord/web/static/govuk/.

Accord's pages work offline, so every asset they load is served by Accord itself:
no CDN. This script is the build step that produces those files (their output is
committed, so running Accord needs neither node nor npm)::

    .venv/bin/python -m accord.web.build_assets          # needs node and npm on PATH

It installs ``govuk-frontend`` (pinned below) and ``sass`` into a temporary folder
with npm, compiles govuk-frontend's Sass with three settings, and copies the
JavaScript bundle:

- ``$govuk-font-family: arial, sans-serif`` and no ``@font-face``: the GDS
  Transport font may be used only by services on service.gov.uk, which an Accord
  deployment is not necessarily; so no font files are shipped;
- ``$govuk-assets-path`` points at ``/static/govuk/assets/``; no image is copied
  (the pages use no crown, crest or GOV.UK favicon, which are GOV.UK's alone);
- compressed output, no source maps.

Output: ``govuk-frontend.min.css`` (about 138 KB), ``govuk-frontend.min.js``
(about 48 KB, an ES module), and ``VERSION`` (the versions and govuk-frontend's MIT licence).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

GOVUK_FRONTEND = "5.14.0"
SASS = "1.108.2"
OUT = Path(__file__).resolve().parent / "static" / "govuk"

SCSS = """\
$govuk-font-family: arial, sans-serif;
$govuk-include-default-font-face: false;
$govuk-assets-path: "/static/govuk/assets/";
@import "node_modules/govuk-frontend/dist/govuk/index";
"""


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True)


def build(out: Path = OUT) -> list[Path]:
    """Install, compile and copy; returns the files written."""
    for tool in ("node", "npm", "npx"):
        if shutil.which(tool) is None:
            raise SystemExit(f"build_assets: {tool} is not on PATH (install Node.js 18 or later)")
    with tempfile.TemporaryDirectory(prefix="accord-assets-") as tmp:
        work = Path(tmp)
        (work / "package.json").write_text(json.dumps({"private": True}), encoding="utf-8")
        _run(["npm", "install", "--no-audit", "--no-fund", f"govuk-frontend@{GOVUK_FRONTEND}", f"sass@{SASS}"], work)
        (work / "accord.scss").write_text(SCSS, encoding="utf-8")
        _run(
            [
                "npx",
                "sass",
                "--no-source-map",
                "--style=compressed",
                "--quiet-deps",
                "--silence-deprecation=import",
                "accord.scss",
                "govuk-frontend.min.css",
            ],
            work,
        )
        dist = work / "node_modules" / "govuk-frontend"
        out.mkdir(parents=True, exist_ok=True)
        written = [
            Path(shutil.copyfile(work / "govuk-frontend.min.css", out / "govuk-frontend.min.css")),
            Path(shutil.copyfile(dist / "dist" / "govuk" / "govuk-frontend.min.js", out / "govuk-frontend.min.js")),
        ]
        version = out / "VERSION"
        version.write_text(
            f"govuk-frontend {GOVUK_FRONTEND}, MIT licence, (c) Crown copyright (npm package govuk-frontend)\n"
            f"compiled by accord/web/build_assets.py with sass {SASS}\n",
            encoding="utf-8",
        )
        written.append(version)
    return written


def main() -> int:
    for path in build():
        print(f"{path.relative_to(OUT.parent.parent.parent.parent)}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
