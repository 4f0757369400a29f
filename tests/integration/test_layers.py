"""The import contract (pyproject's [tool.importlinter]) holds, and fails on an upward import.

Run on a copy of the packages, so the test can add the upward import itself: the
foundation (bus/) importing the processor is the kind of arrow the layers forbid.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bus.settings import PACKAGE_ROOT
from tests.copies import copy_packages

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint(copy: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(copy)},
        check=False,
    )


def make_copy(root: Path) -> Path:
    copy = copy_packages(root / "copy", "static", "templates")
    shutil.copy(PACKAGE_ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_the_layers_hold_and_an_upward_import_breaks_them(tmp_path: Path) -> None:
    copy = make_copy(tmp_path)
    kept = lint(copy)
    assert kept.returncode == 0, kept.stdout[-2000:] + kept.stderr[-2000:]
    assert "1 kept, 0 broken" in kept.stdout

    topics = copy / "bus" / "topics.py"
    topics.write_text(
        topics.read_text(encoding="utf-8") + "\nimport accord.processor.loop  # upward\n", encoding="utf-8"
    )
    broken = lint(copy)
    assert broken.returncode != 0
    assert "bus is not allowed to import accord.processor" in broken.stdout
    assert "bus.topics -> accord.processor.loop" in broken.stdout
