"""A copy of the project's packages in a temporary folder, for tests that change the project itself.

Run as ``PYTHONPATH=<copy>``, a copy shows what a change of data (a new event type, a
bad schema version, an upward import) does to the real commands, without touching the
checkout the other tests run from.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bus.settings import PACKAGE_ROOT

PACKAGES = ("accord", "bus", "schemas", "producers", "agreements", "consent", "ledger", "consumers")


def copy_packages(dest: Path, *ignore: str) -> Path:
    """Every package of the project under ``dest`` (without caches and anything matching ``ignore``)."""
    for package in PACKAGES:
        shutil.copytree(PACKAGE_ROOT / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", *ignore))
    return dest
