"""`accord demo` on PostgreSQL with owner and application roles, as docs/ledger.md sets them up.

The demo runs `accord ledger init` as the owner (ACCORD_LEDGER_OWNER_URL) and everything
else, its processor included, as the application role (ACCORD_LEDGER_URL). Without the
owner's URL, or with one that cannot connect, it refuses in one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url

from ledger.migrations import head
from tests.conftest import fresh_role_database
from tests.integration.test_migrations import problems


def demo(broker: str, state: Path, **urls: str) -> subprocess.CompletedProcess[str]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    env = {
        **os.environ,
        "ACCORD_BOOTSTRAP_SERVERS": broker,
        "ACCORD_TOPIC_PREFIX": prefix,
        "ACCORD_STATE_DIR": str(state),
        "ACCORD_PROCESSOR_GROUP": f"{prefix}processor",
        "ACCORD_LEDGER_OWNER_URL": "",
        "ACCORD_LEDGER_APP_ROLE": "",
        **urls,
    }
    return subprocess.run(
        [sys.executable, "-m", "accord.cli", "demo", "--events", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_on_postgres_inits_as_the_owner_and_runs_as_the_app_role(broker: str, tmp_path: Path) -> None:
    with fresh_role_database(setup=False) as db:
        result = demo(broker, tmp_path, ACCORD_LEDGER_URL=db.app_url, ACCORD_LEDGER_OWNER_URL=db.owner_url)
        assert result.returncode == 0, result.stdout[-1500:] + result.stderr[-1500:]
        assert "Traceback" not in result.stderr
        assert re.search(r"^ledger verify:\s+ledger OK", result.stdout, flags=re.M), result.stdout
        pairs = re.findall(r"^  \S+\s+(\d+) / (\d+)$", result.stdout, flags=re.M)
        assert pairs and all(a == b for a, b in pairs), result.stdout
        with db.admin.connect() as conn:
            owners = set(
                conn.execute(
                    text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = :s"), {"s": db.schema}
                ).scalars()
            )
            version = conn.execute(text(f'SELECT version_num FROM "{db.schema}".alembic_version')).scalar_one()
            entries = conn.execute(text(f'SELECT count(*) FROM "{db.schema}".ledger_entries')).scalar_one()
        assert owners == {db.owner_role}  # the app role created nothing
        assert version == head() and entries > 0
        # The processor ran as the app role: the owner's role would have been refused at its start.
        log = (tmp_path / "processor.log").read_text(encoding="utf-8")
        assert "refusing to run" not in log


def test_demo_on_postgres_without_an_owner_url_says_so_in_one_line(broker: str, tmp_path: Path) -> None:
    with fresh_role_database(setup=False) as db:
        result = demo(broker, tmp_path, ACCORD_LEDGER_URL=db.app_url)
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = problems(result.stderr, "demo")
        assert len(lines) == 1, result.stderr
        assert "set ACCORD_LEDGER_OWNER_URL to the owner role's URL" in lines[0]
        with db.admin.connect() as conn:
            made = conn.execute(text("SELECT count(*) FROM pg_tables WHERE schemaname = :s"), {"s": db.schema})
            assert made.scalar_one() == 0


def test_demo_on_postgres_with_a_wrong_owner_url_says_so_in_one_line(broker: str, tmp_path: Path) -> None:
    with fresh_role_database(setup=False) as db:
        wrong = make_url(db.owner_url).set(username=f"no_such_owner_{uuid.uuid4().hex[:6]}")
        result = demo(
            broker,
            tmp_path,
            ACCORD_LEDGER_URL=db.app_url,
            ACCORD_LEDGER_OWNER_URL=wrong.render_as_string(hide_password=False),
        )
        assert result.returncode == 2
        assert "Traceback" not in result.stderr
        lines = problems(result.stderr, "demo")
        assert len(lines) == 1, result.stderr
        assert "ACCORD_LEDGER_OWNER_URL" in lines[0] and "no_such_owner_" in lines[0]


def test_demo_with_the_app_role_as_owner_is_refused_in_one_line(broker: str, tmp_path: Path) -> None:
    with fresh_role_database(setup=False) as db:
        result = demo(broker, tmp_path, ACCORD_LEDGER_URL=db.app_url, ACCORD_LEDGER_OWNER_URL=db.app_url)
        assert result.returncode == 2
        lines = problems(result.stderr, "demo")
        assert len(lines) == 1 and "run init as a separate owner role" in lines[0], result.stderr
