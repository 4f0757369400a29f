"""Database URLs a person mistypes: refused by name before any driver sees them, and never printed with a secret."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bus.database import shown_url
from bus.settings import Settings

SECRET = "s3cr3t-do-not-print"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql+psycopg://u@127.0.0.1:notaport/x", "not a database URL SQLAlchemy can read"),
        ("no url at all", "not a database URL SQLAlchemy can read"),
        (f"postgresql+psycopg://u:p@{SECRET}@127.0.0.1:5432/x", "holds an '@' that is not percent-encoded"),
        ("mysql://u@127.0.0.1/x", "Accord's database is PostgreSQL or SQLite, not mysql"),
        ("postgresql://u@127.0.0.1/x", "begin the URL with postgresql+psycopg://"),
    ],
)
def test_a_url_that_cannot_work_is_refused_naming_the_setting_not_repeating_it(url: str, problem: str) -> None:
    for field in ("ledger_url", "ledger_owner_url"):
        with pytest.raises(ValidationError) as refused:
            Settings.model_validate({field: url})
        [error] = refused.value.errors()
        assert error["loc"] == (field,) and problem in error["msg"]
        assert SECRET not in error["msg"] and "notaport" not in error["msg"]


def test_urls_that_work_are_taken_as_given() -> None:
    for url in ("postgresql+psycopg://u:p%40ss@db.example:5432/accord?sslmode=verify-full", "sqlite:///x.db", ""):
        assert Settings(ledger_url=url).ledger_url == url


def test_a_shown_url_has_no_password_in_its_userinfo_or_query() -> None:
    shown = shown_url(f"postgresql+psycopg://u:{SECRET}@db:5432/a?password={SECRET}&sslmode=require&sslpassword=x")
    assert SECRET not in shown
    assert shown == "postgresql+psycopg://u:***@db:5432/a?password=***&sslmode=require&sslpassword=***"
