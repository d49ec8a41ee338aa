"""Isolation set on each new DBAPI connection by the application's own ``connect`` listener
(adversarial case for rule 6).

SQLAlchemy reads ``dialect.default_isolation_level`` from the first connection before the
application's ``connect`` listeners run, so an engine whose listener switches every
connection to REPEATABLE READ still reports READ COMMITTED. Its transactions read one
snapshot all the same: a plain Session keeps the balances of one state, and a caching
session must too — while still serving what it can prove.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event, update
from sqlalchemy.orm import Session, sessionmaker

from tests.orm.ormkit import SQLCounter, root_conftest
from tests.orm.test_snapshot import Account, SBase, balance
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession

_root = root_conftest()


def _repeatable_read_bank(**engine_kw: Any) -> Engine:
    """A PostgreSQL engine whose ``connect`` listener makes every connection REPEATABLE
    READ, with two accounts of 100."""
    _root.require_service("postgresql", _root.PG_URL, 5432)
    engine = create_engine(_root.PG_URL, **engine_kw)

    @event.listens_for(engine, "connect")
    def _repeatable_read(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cur.close()
        dbapi_conn.commit()

    SBase.metadata.drop_all(engine)
    SBase.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Account.__table__.insert(), [{"id": i, "balance": 100} for i in (1, 2)])
    return engine


@pytest.fixture
def rr_engine() -> Iterator[Engine]:
    engine = _repeatable_read_bank()
    try:
        yield engine
    finally:
        SBase.metadata.drop_all(engine)
        engine.dispose()


def _transfer(engine: Engine, cache: YokedCache, amount: int) -> None:
    """Another session (its own pool: the reader's keeps only REPEATABLE READ connections)
    moves *amount* from account 1 to account 2 and commits."""
    writer = create_engine(_root.PG_URL)
    with sessionmaker(writer, class_=CachingSession, cache=cache)() as w:
        w.execute(update(Account).where(Account.id == 1).values(balance=Account.balance - amount))
        w.execute(update(Account).where(Account.id == 2).values(balance=Account.balance + amount))
        w.commit()
    writer.dispose()


def _steps(engine: Engine, cache: YokedCache, s: Session) -> list[int]:
    a = balance(s, 1)
    _transfer(engine, cache, 50)
    b = balance(s, 2)
    return [a, b]


def test_isolation_set_by_a_connect_listener_is_the_transactions(
    rr_engine: Engine, cache: YokedCache
) -> None:
    with Session(rr_engine) as plain:
        expected = _steps(rr_engine, cache, plain)
    assert expected == [100, 100], "the listener did not make transactions REPEATABLE READ"
    _transfer(rr_engine, cache, -50)
    caching = sessionmaker(rr_engine, class_=CachingSession, cache=cache)
    for _ in range(2):  # cached, as READ COMMITTED sessions would see them
        with caching() as s:
            assert [balance(s, 1), balance(s, 2)] == [100, 100]
    with caching() as s:
        got = _steps(rr_engine, cache, s)
        assert got == expected, f"plain Session read {expected}, CachingSession {got}"
    _transfer(rr_engine, cache, -50)
    counter = SQLCounter(rr_engine)
    try:
        for _ in range(2):
            with caching() as s:
                assert [balance(s, 1), balance(s, 2)] == [100, 100]
        with caching() as s:
            n0 = counter.n
            assert [balance(s, 1), balance(s, 2), balance(s, 1)] == [100, 100, 100]
            assert counter.n - n0 == 1, "reads of the snapshot must be served"
    finally:
        counter.remove()


def test_a_connection_reset_after_an_isolation_option_is_asked_again(cache: YokedCache) -> None:
    """A connection the listener made REPEATABLE READ, then used with an ``isolation_level``
    option, comes back at the dialect's default (READ COMMITTED): what it reported first is
    no longer its level, and a READ COMMITTED reader must see the transfer."""
    engine = _repeatable_read_bank(pool_size=1, max_overflow=0)  # one DBAPI connection
    caching = sessionmaker(engine, class_=CachingSession, cache=cache)
    try:
        with caching() as s:  # the connection reports REPEATABLE READ
            assert balance(s, 1) == 100
        with Session(engine) as optioned:
            optioned.connection(execution_options={"isolation_level": "READ COMMITTED"})
            assert balance(optioned, 2) == 100
        # back in the pool at the dialect's default level
        with Session(engine) as plain:
            a = balance(plain, 1)
            _transfer(engine, cache, 50)
            expected = [a, balance(plain, 1)]
        assert expected == [100, 50], "the connection did not come back READ COMMITTED"
        _transfer(engine, cache, -50)
        for _ in range(2):
            with caching() as s:
                assert balance(s, 1) == 100
        with caching() as s:
            a = balance(s, 1)
            _transfer(engine, cache, 50)
            got = [a, balance(s, 1)]
        assert got == expected, f"plain Session read {expected}, CachingSession {got}"
    finally:
        SBase.metadata.drop_all(engine)
        engine.dispose()
