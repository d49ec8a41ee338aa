"""A snapshot-isolated transaction reads one snapshot, cache hits included (issue 9, class 6).

Two sessions and a transfer between two account rows: the reader's transaction must see the
balances of one snapshot (their sum never changes), whichever of its reads the cache serves —
and the cache must still serve the reads it can prove belong to that snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Column,
    Engine,
    Integer,
    MetaData,
    Table,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.util import greenlet_spawn

from tests.orm.ormkit import P, SQLCounter, root_conftest, run_in_greenlet
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession, NoCache

_root = root_conftest()


class SBase(DeclarativeBase):
    __table__: ClassVar[Table]


class Account(SBase):
    __tablename__ = P + "snap_accounts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(Integer)


class Note(SBase):
    __tablename__ = P + "snap_notes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


def _sqlite_with_begin(path: Path) -> Engine:
    """SQLite in WAL mode with real transactions (the driver's own BEGIN handling off), the
    setup SQLAlchemy documents for SERIALIZABLE SQLite: a reader keeps its snapshot while a
    writer commits."""
    engine = create_engine(f"sqlite:///{path}")

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        dbapi_conn.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


CASES = [
    ("postgresql", "REPEATABLE READ"),
    ("postgresql", "SERIALIZABLE"),
    ("mariadb", "REPEATABLE READ"),
    # the same sessions over aiomysql, the body in SQLAlchemy's greenlet (Bank.run_async):
    # the snapshot is learned and observed through the async connection and cache calls
    ("mariadb-async", "REPEATABLE READ"),
    ("sqlite", "BEGIN"),
]


@dataclass
class Bank:
    engine: Engine  # the reader's (snapshot-isolated) engine
    writer: Engine
    cache: YokedCache
    sql: SQLCounter
    async_engine: AsyncEngine | None = None
    driver: str = "sync"

    async def run_async(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Run a (sync) test body inside SQLAlchemy's greenlet, then close what is bound to
        the loop (the async pool, the cache's async clients); see tests/orm/conftest.py."""
        assert self.async_engine is not None
        await run_in_greenlet(fn, kwargs, self.cache, self.async_engine)

    def selects(self) -> int:
        """How many SELECTs the database was sent so far (SQLite's BEGIN not counted)."""
        return sum(q.lstrip().upper().startswith("SELECT") for q in self.sql.statements)

    def reader(self) -> Session:
        return sessionmaker(self.engine, class_=CachingSession, cache=self.cache)()

    def transfer(self, amount: int) -> None:
        """Another session moves *amount* from account 1 to account 2 and commits."""
        with sessionmaker(self.writer, class_=CachingSession, cache=self.cache)() as w:
            w.execute(
                update(Account).where(Account.id == 1).values(balance=Account.balance - amount)
            )
            w.execute(
                update(Account).where(Account.id == 2).values(balance=Account.balance + amount)
            )
            w.commit()

    def warm(self) -> None:
        """Cache both balances: a fresh session misses both; the next one is served at least
        one of them."""
        sent = []
        for _ in range(2):
            with self.reader() as s:
                n0 = self.selects()
                assert [balance(s, 1), balance(s, 2)] == [100, 100]
                sent.append(self.selects() - n0)
                s.commit()
        assert sent[0] == 2 and sent[1] < 2, sent

    def warm_after_transfer(self) -> None:
        """Cache the balances as a READ COMMITTED session sees them now."""
        for _ in range(2):
            with sessionmaker(self.writer, class_=CachingSession, cache=self.cache)() as s:
                assert [balance(s, 1), balance(s, 2)] == [50, 150]


def balance(s: Session, ident: int) -> int:
    return s.scalars(select(Account.balance).where(Account.id == ident)).one()


def _ID(case: tuple[str, str]) -> str:
    return f"{case[0]}-{case[1].replace(' ', '_')}"


@pytest.fixture(params=CASES, ids=_ID)
def bank(request: pytest.FixtureRequest, cache: YokedCache, tmp_path: Path) -> Iterator[Bank]:
    name, iso = request.param
    aengine: AsyncEngine | None = None
    if name == "sqlite":
        base = _sqlite_with_begin(tmp_path / "bank.db")
        reader = writer = base
    else:
        url = _root.PG_URL if name == "postgresql" else _root.MARIADB_URL
        _root.require_service(name, url, 5432 if name == "postgresql" else 3306)
        base = talks = create_engine(url)
        if name == "mariadb-async":
            _root.require_service("MariaDB", _root.MARIADB_ASYNC_URL, 3306)
            aengine = create_async_engine(_root.MARIADB_ASYNC_URL)
            talks = aengine.sync_engine
        reader = talks.execution_options(isolation_level=iso)
        writer = talks.execution_options(isolation_level="READ COMMITTED")
    SBase.metadata.drop_all(base)
    SBase.metadata.create_all(base)
    with base.begin() as conn:
        conn.execute(
            Account.__table__.insert(), [{"id": 1, "balance": 100}, {"id": 2, "balance": 100}]
        )
    counter = SQLCounter(base if aengine is None else aengine.sync_engine)
    try:
        yield Bank(reader, writer, cache, counter, aengine, "sync" if aengine is None else "async")
    finally:
        counter.remove()
        SBase.metadata.drop_all(base)
        base.dispose()


def test_a_transfer_between_reads_is_invisible_to_the_reader(bank: Bank) -> None:
    """The reader's first read is cached; a transfer commits before its second read."""
    bank.warm()
    with bank.reader() as s:
        first = balance(s, 1)
        bank.transfer(50)
        second = balance(s, 2)
        assert first + second == 200, f"read across two snapshots: {first}, {second}"
        assert [balance(s, 1), balance(s, 2)] == [first, second]
    with bank.reader() as s:
        assert [balance(s, 1), balance(s, 2)] == [50, 150]


def test_reads_valid_for_the_snapshot_are_served_from_cache(bank: Bank) -> None:
    """Once the transaction's snapshot exists, entries provably of that snapshot are hits."""
    bank.warm()
    with bank.reader() as s:
        n0 = bank.selects()
        assert balance(s, 1) == 100  # starts the database snapshot
        assert bank.selects() - n0 == 1
        n1 = bank.selects()
        assert balance(s, 2) == 100
        assert balance(s, 1) == 100
        assert bank.selects() == n1, "reads valid for the snapshot must be served from the cache"
        bank.transfer(30)
        n2 = bank.selects()
        # the entries are now newer than the snapshot: the database answers, from it
        assert [balance(s, 1), balance(s, 2)] == [100, 100]
        assert bank.selects() > n2
    with bank.reader() as s:
        assert [balance(s, 1), balance(s, 2)] == [70, 130]
        s.commit()
        n3 = bank.selects()
        assert [balance(s, 1), balance(s, 2)] == [70, 130]
        assert bank.selects() - n3 == 1, "only the first read of the new transaction queries"


# SQLite: the reader's write lock keeps the transfer out (nothing to show)
@pytest.mark.parametrize("bank", [c for c in CASES if c[0] != "sqlite"], indirect=True, ids=_ID)
def test_a_write_first_does_not_start_the_snapshot(bank: Bank) -> None:
    """On InnoDB a write creates no read view: a hit after it would precede the snapshot."""
    bank.warm()
    with bank.reader() as s:
        s.add(Note(id=1))
        s.flush()
        first = balance(s, 1)
        bank.transfer(50)
        second = balance(s, 2)
        assert first + second == 200, f"read across two snapshots: {first}, {second}"


@pytest.mark.parametrize("bank", [c for c in CASES if c[0] != "sqlite"], indirect=True, ids=_ID)
def test_a_first_read_that_fails_does_not_count_as_the_snapshot(bank: Bank) -> None:
    """The read that would take the snapshot fails (its table does not exist) inside a
    savepoint that is rolled back: on InnoDB no snapshot exists yet, so a hit served then
    would precede the one the next database read takes."""
    bank.warm()
    missing = Table(P + "snap_missing", MetaData(), Column("id", Integer, primary_key=True))
    with bank.reader() as s:
        sp = s.begin_nested()
        with pytest.raises(DBAPIError):
            s.execute(select(missing.c.id)).all()
        sp.rollback()
        first = balance(s, 1)
        bank.transfer(50)
        uncached = s.scalars(
            select(Account.balance).where(Account.id == 1).options(NoCache())
        ).one()
        assert uncached == first, f"the cache served {first}, the database's snapshot {uncached}"
        second = balance(s, 2)
        assert first + second == 200, f"read across two snapshots: {first}, {second}"


@pytest.mark.parametrize("iso", ["SERIALIZABLE"])
@pytest.mark.parametrize("driver", ["sync", "async"])
@pytest.mark.parametrize("where", ["execution_options", "create_engine"])
def test_mariadb_serializable_reads_are_never_served(
    cache: YokedCache, iso: str, driver: str, where: str
) -> None:
    """InnoDB's SERIALIZABLE makes every SELECT a locking read of the latest rows: a cached
    read takes no lock (another session could change the row before this one commits), so
    every read goes to the database — whether the isolation is an execution option or the
    engine's, on PyMySQL or aiomysql (the body then runs in the greenlet)."""
    _root.require_service("MariaDB", _root.MARIADB_URL, 3306)
    base = create_engine(_root.MARIADB_URL)
    SBase.metadata.drop_all(base)
    SBase.metadata.create_all(base)
    with base.begin() as conn:
        conn.execute(Account.__table__.insert(), [{"id": i, "balance": 100} for i in (1, 2)])
    kw: dict[str, Any] = {"isolation_level": iso} if where == "create_engine" else {}
    aengine = None
    if driver == "async":
        _root.require_service("MariaDB", _root.MARIADB_ASYNC_URL, 3306)
        aengine = create_async_engine(_root.MARIADB_ASYNC_URL, **kw)
        talks = aengine.sync_engine
    else:
        talks = create_engine(_root.MARIADB_URL, **kw)
    counter = SQLCounter(talks)

    def body() -> None:
        plain = talks.execution_options(isolation_level="READ COMMITTED")
        serial = talks if kw else talks.execution_options(isolation_level=iso)
        with sessionmaker(plain, class_=CachingSession, cache=cache)() as warm:
            assert [balance(warm, 1), balance(warm, 2)] == [100, 100]
        with sessionmaker(serial, class_=CachingSession, cache=cache)() as s:
            n0 = counter.n
            assert [balance(s, 1), balance(s, 2), balance(s, 1)] == [100, 100, 100]
            assert counter.n - n0 == 3

    async def run_async(engine: AsyncEngine) -> None:
        try:
            await greenlet_spawn(body)
        finally:
            await cache.disconnect()
            await engine.dispose()

    try:
        if aengine is None:
            body()
        else:
            asyncio.run(run_async(aengine))
    finally:
        counter.remove()
        if aengine is None:
            talks.dispose()
        SBase.metadata.drop_all(base)
        base.dispose()


@pytest.mark.parametrize("bank", [c for c in CASES if c[0] != "sqlite"], indirect=True, ids=_ID)
def test_a_session_joining_a_snapshot_already_taken_is_never_served(bank: Bank) -> None:
    """A session bound to a connection whose transaction already read has no usable horizon:
    entries cached after that snapshot must not be served to it."""
    with bank.engine.connect() as conn:
        assert conn.scalar(select(func.sum(Account.balance))) == 200  # the snapshot starts
        bank.transfer(50)
        bank.warm_after_transfer()
        s = CachingSession(bind=conn, cache=bank.cache)
        n0 = bank.selects()
        assert [balance(s, 1), balance(s, 2)] == [100, 100], "served data newer than the snapshot"
        assert bank.selects() - n0 == 2
        s.close()
