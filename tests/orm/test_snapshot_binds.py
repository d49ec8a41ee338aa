"""Two binds in one session, the second joining a database transaction that already read
(adversarial case for rule 6): its snapshot predates the horizon the first bind observed, so
nothing computed after it may be served on it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tests.orm.test_snapshot import _ID, CASES, Account, Bank, Note, balance
from tests.orm.test_snapshot import bank as bank  # the fixture
from yokedcache_sa.orm import CachingSession


@pytest.mark.parametrize("bank", [c for c in CASES if c[0] != "sqlite"], indirect=True, ids=_ID)
def test_a_second_bind_that_already_read_is_never_served(bank: Bank) -> None:
    other = bank.engine.execution_options(isolation_level="REPEATABLE READ")  # its own bind
    answers = []
    for cls in (Session, CachingSession):
        with bank.engine.connect() as conn:
            assert conn.scalar(select(func.sum(Account.balance))) == 200  # the snapshot
            bank.transfer(50)
            bank.warm_after_transfer()
            binds: dict[Any, Any] = {Account: conn, Note: other}
            s = (
                CachingSession(binds=binds, cache=bank.cache)
                if cls is CachingSession
                else Session(binds=binds)
            )
            s.scalars(select(Note)).all()  # the first bind: begins, observes a horizon
            answers.append([balance(s, 1), balance(s, 2)])
            s.close()
        bank.transfer(-50)
    expected, got = answers
    assert expected == [100, 100]
    assert got == expected, f"plain Session read {expected}, CachingSession {got}"
