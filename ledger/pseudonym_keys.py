"""Which pseudonym key is in force: a processor with another one is refused before it pseudonymises.

A pseudonym is an HMAC under ACCORD_PSEUDONYM_KEY (accord/sharing/pseudonymise.py). A
processor started with another key (a mistyped secret, half of the workers given a new
one) would give partners other pseudonyms for the same people, also when it delivers
again what the ledger recorded, and nothing downstream could tell. So the ledger
database keeps the key's check value (never the key), one row per key taken into use,
the newest in force.

:func:`require_key`, at every processor start:

1. read the newest check value;
2. none yet (a new ledger, or one from before this table): record this key's, as its
   first use, and read the newest again (two workers starting at once with different
   keys: the one whose row is not the newest is refused);
3. the same as this key's: go on;
4. another: refuse (PseudonymKeyChanged), naming both check values.

A change on purpose is ``accord ledger accept-pseudonym-key`` (:func:`accept_key`), run
with the new key before the processors start with it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError

from ledger.tables import PseudonymKeyCheck

__all__ = ["PseudonymKeyChanged", "accept_key", "key_in_force", "require_key"]


class PseudonymKeyChanged(ValueError):
    """This processor's pseudonym key is not the one in force."""

    def __init__(self, in_force: str, given: str) -> None:
        self.in_force, self.given = in_force, given
        super().__init__(
            f"ACCORD_PSEUDONYM_KEY is not the key in force (check {given}; the ledger's is {in_force}): its "
            "pseudonyms would differ from those partners already hold for the same people. Start with the key "
            "in force, or, to change it on purpose, run `accord ledger accept-pseudonym-key` with the new one first"
        )


def key_in_force(engine: Engine) -> str | None:
    """The newest recorded check value, None before any processor pseudonymised."""
    with engine.connect() as conn:
        return conn.execute(
            select(PseudonymKeyCheck.check_value).order_by(PseudonymKeyCheck.recorded_at.desc()).limit(1)
        ).scalar_one_or_none()


def _record(engine: Engine, check: str, reason: str) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(PseudonymKeyCheck).values(recorded_at=datetime.now(UTC), check_value=check, reason=reason)
            )
    except IntegrityError:
        pass  # another worker recorded the same key at the same instant: the row this one would add


def require_key(engine: Engine, check: str) -> None:
    """Refuse a key other than the one in force (see the module's steps); record the first one."""
    in_force = key_in_force(engine)  # 1.
    if in_force is None:  # 2.
        _record(engine, check, "first use")
        in_force = key_in_force(engine)
    if in_force != check:  # 3. / 4.
        raise PseudonymKeyChanged(in_force or "none", check)


def accept_key(engine: Engine, check: str) -> str | None:
    """Put this key in force from now on; returns the check value it replaces (None if there was none)."""
    before = key_in_force(engine)
    if before != check:
        _record(engine, check, "accepted")
    return before
