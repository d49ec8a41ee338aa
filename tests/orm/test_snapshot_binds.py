"""Two binds in one session, the second joining a database transaction that already read
(adversarial case for rule 6): its snapshot predates the horizon the first bind observed, so
nothing computed after it may be served on it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session

from tests.orm.test_snapshot import _ID, CASES, Account, Bank, Note, balance
from tests.orm.test_snapshot import bank as bank  # the fixture
from yokedcache_sa.orm import CachingSession


@pytest.mark.parametrize("bank", [c for c in CASES if c[0] != "sqlite"], indirect=True, ids=_ID)
def test_a_second_bind_that_already_read_is_never_served(bank: Bank) -> None:
    iso = bank.engine.get_execution_options()["isolation_level"]
    try:  # its own bind, at the reader's isolation
        other: Engine = bank.engine.execution_options(logging_token="second bind")
    except InvalidRequestError:
        # SQLAlchemy 2.0.30 cannot make an option engine of one with an isolation_level
        # ("No such event 'engine_connect'"): another engine on the same database
        if bank.driver == "async":
            pytest.skip("SQLAlchemy 2.0.30: no option engine of an isolated option engine")
        other = create_engine(bank.engine.url, isolation_level=iso)
    try:
        _second_bind_steps(bank, other)
    finally:
        if other.pool is not bank.engine.pool:
            other.dispose()


def _second_bind_steps(bank: Bank, other: Engine) -> None:
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
