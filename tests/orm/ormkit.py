"""Models, seed data and helpers shared by the ORM suite (and its subprocess scripts).

Table names carry a per-process prefix (``YC_TEST_TABLE_PREFIX`` overrides it, so a child
process can map the same tables) so parallel workers sharing a database never clash.
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Protocol, TypeVar

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Engine,
    Enum,
    ForeignKey,
    Integer,
    Numeric,
    String,
    Table,
    TypeDecorator,
    Uuid,
    event,
    insert,
)
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.util import greenlet_spawn

from tests.sqlcount import Box, SQLCounter  # noqa: F401  (re-exported)
from tests.tablenames import random_token
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingQuery, CachingSession, listen_on_session

_TABLES = [
    "addr_trg",
    "addresses",
    "deferred_child",
    "employees",
    "managers",
    "mv_names",
    "notes",
    "order_lines",
    "rt_groups",
    "rt_members",
    "rt_membership",
    "snap_accounts",
    "snap_notes",
    "tags",
    "tdocs",
    "things",
    "titems",
    "typed",
    "user_tags",
    "users",
    "v_alice",
    "v_emails",
    "v_late",
    "v_noisy",
    "v_quoted",
]
"""The relations the ORM suites create under :data:`P` (tables and views)."""
_WORKER = "yc" + os.environ.get("PYTEST_XDIST_WORKER", "")
P = os.environ.get("YC_TEST_TABLE_PREFIX") or (
    _WORKER + random_token(lambda t: [f"{_WORKER}{t}_{name}" for name in _TABLES]) + "_"
)
HERE = Path(__file__).resolve().parent
S_co = TypeVar("S_co", bound=Session, covariant=True)
AnySession = Session
Read = Callable[[Session], Any]
"""A read a test runs in a session: the session in, the result out."""


def root_conftest() -> ModuleType:
    """The top-level ``tests/conftest.py`` (service URLs, ``require_service``)."""
    import tests.conftest

    return tests.conftest


class Status(enum.Enum):
    active = "active"
    archived = "archived"


class ExactDecimal(TypeDecorator[Decimal]):
    """Decimal stored as text on SQLite (which has no exact decimal type)."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Decimal | None, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Any) -> Decimal | None:
        return None if value is None else Decimal(value)


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every model here maps one Table (not any FromClause)


user_tags = Table(
    P + "user_tags",
    Base.metadata,
    Column("user_id", ForeignKey(P + "users.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey(P + "tags.id", ondelete="CASCADE"), primary_key=True),
)


class User(Base):
    __tablename__ = P + "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    age: Mapped[int | None] = mapped_column(Integer, nullable=True)
    addresses: Mapped[list[Address]] = relationship(
        back_populates="user", order_by="Address.id", passive_deletes=True
    )
    tags: Mapped[list[Tag]] = relationship(secondary=user_tags, order_by="Tag.id")


class Address(Base):
    __tablename__ = P + "addresses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey(P + "users.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(80))
    user: Mapped[User] = relationship(back_populates="addresses")


class Tag(Base):
    __tablename__ = P + "tags"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


class Employee(Base):
    __tablename__ = P + "employees"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = P + "managers"
    id: Mapped[int] = mapped_column(ForeignKey(P + "employees.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "manager", "polymorphic_load": "inline"}


class OrderLine(Base):
    """Composite primary key."""

    __tablename__ = P + "order_lines"
    order_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    line_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    qty: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(30), nullable=True)


class Thing(Base):
    """DateTime, Numeric (Decimal), Uuid, JSON, Enum and nullable columns."""

    __tablename__ = P + "things"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[dt.datetime] = mapped_column(DateTime)
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2).with_variant(ExactDecimal(), "sqlite"))
    uid: Mapped[uuid.UUID] = mapped_column(Uuid)
    data: Mapped[Any] = mapped_column(JSON)
    status: Mapped[Status] = mapped_column(Enum(Status, name=P + "status"))
    note: Mapped[str | None] = mapped_column(String(30), nullable=True)


assert {P + name for name in _TABLES} >= set(Base.metadata.tables), "list new tables in _TABLES"


UID1 = uuid.UUID("1b4e28ba-2fa1-41d2-883f-0016d3cca427")
UID2 = uuid.UUID("6fa459ea-ee8a-4ca4-894e-db77e160355e")

SEED: list[tuple[Any, list[dict[str, Any]]]] = [
    (
        User.__table__,
        [
            {"id": 1, "name": "alice", "age": 30},
            {"id": 2, "name": "bob", "age": None},
            {"id": 3, "name": "carol", "age": 25},
            {"id": 4, "name": "dave", "age": 41},
        ],
    ),
    (Tag.__table__, [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]),
    (
        Address.__table__,
        [
            {"id": 1, "user_id": 1, "email": "a1@x"},
            {"id": 2, "user_id": 1, "email": "a2@x"},
            {"id": 3, "user_id": 3, "email": "c@x"},
        ],
    ),
    (
        user_tags,
        [{"user_id": 1, "tag_id": 1}, {"user_id": 1, "tag_id": 2}, {"user_id": 3, "tag_id": 2}],
    ),
    (
        Employee.__table__,
        [
            {"id": 1, "name": "eve", "type": "employee"},
            {"id": 2, "name": "mallory", "type": "manager"},
        ],
    ),
    (Manager.__table__, [{"id": 2, "budget": 100}]),
    (
        OrderLine.__table__,
        [
            {"order_id": 1, "line_no": 1, "qty": 5, "note": "a"},
            {"order_id": 1, "line_no": 2, "qty": 3, "note": None},
            {"order_id": 2, "line_no": 1, "qty": 7, "note": "b"},
        ],
    ),
    (
        Thing.__table__,
        [
            {
                "id": 1,
                "created": dt.datetime(2024, 1, 2, 3, 4, 5),
                "price": Decimal("12.34"),
                "uid": UID1,
                "data": {"a": [1, 2], "b": None, "c": "é"},
                "status": Status.active,
                "note": None,
            },
            {
                "id": 2,
                "created": dt.datetime(2023, 12, 31, 23, 59, 59),
                "price": Decimal("0.10"),
                "uid": UID2,
                "data": [1, "two", 3.5],
                "status": Status.archived,
                "note": "n",
            },
        ],
    ),
]


def reseed(engine: Engine) -> None:
    """Delete every row and insert the seed data (plain connection: no cache involved)."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
        for table, rows in SEED:
            conn.execute(insert(table), rows)


def enable_sqlite_fks(engine: Engine) -> None:
    """SQLite enforces FOREIGN KEY (and ON DELETE CASCADE) only when asked, per connection."""

    @event.listens_for(engine, "connect")
    def _fk_on(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


# -- statement counting ---------------------------------------------------------------------


@dataclass
class DB:
    name: str
    url: str
    engine: Engine


class SessionFactory(Protocol[S_co]):
    """What tests call on ``env.Session`` / ``env.Plain``: a ``sessionmaker``'s surface."""

    def __call__(self, **kw: Any) -> S_co: ...

    def begin(self) -> AbstractContextManager[S_co]: ...


class AsyncSide:
    """``env.Session`` under the async driver: each call makes an ``AsyncSession`` over
    ``CachingSession`` (``async_sessionmaker(sync_session_class=CachingSession, ...)``) and
    returns the ``CachingSession`` it drives. The test body runs inside SQLAlchemy's greenlet
    (see ``Env.run_async``), where that Session's calls go through the async driver exactly as
    the ``AsyncSession`` methods (each a ``greenlet_spawn`` of the same call) send them."""

    def __init__(self, maker: async_sessionmaker[Any]) -> None:
        self.maker = maker

    def __call__(self, **kw: Any) -> Any:
        if isinstance(kw.get("bind"), Engine):  # a test's variant of env.engine
            kw["bind"] = AsyncEngine(kw["bind"])
        return self.maker(**kw).sync_session

    @contextmanager
    def begin(self) -> Iterator[Any]:
        with self() as session, session.begin():
            yield session


@dataclass
class Env:
    """Everything a test needs: the database, the cache, session factories, the counter.

    *driver* is ``"sync"`` (the database's sync DBAPI, the cache's sync calls) or ``"async"``
    (the async DBAPI of *async_engine*, the cache's async calls awaited from the greenlet).
    ``engine``, ``Session`` and ``Plain`` use the driver's engine, so a test body reads the
    same under both."""

    db: DB
    cache: YokedCache
    sql: SQLCounter
    driver: str = "sync"
    async_engine: AsyncEngine | None = None
    kind: str = "CachingSession"  # or "listen_on_session": a plain sessionmaker with listeners
    Session: SessionFactory[Any] = field(init=False)
    Plain: SessionFactory[AnySession] = field(init=False)

    def __post_init__(self) -> None:
        self.Session = self.factory()
        if self.async_engine is None:
            self.Plain = sessionmaker(self.db.engine, query_cls=CachingQuery)
        else:
            self.Plain = AsyncSide(async_sessionmaker(self.async_engine, query_cls=CachingQuery))

    def factory(self, **settings: Any) -> SessionFactory[Any]:
        """A session factory of this env's driver and kind with session-level *settings*
        (tags=, table_name=, default_ttl=, vary_on=)."""
        if self.async_engine is not None:
            return AsyncSide(
                async_sessionmaker(
                    self.async_engine,
                    sync_session_class=CachingSession,
                    cache=self.cache,
                    **settings,
                )
            )
        if self.kind == "listen_on_session":
            factory: sessionmaker[Any] = sessionmaker(self.db.engine, query_cls=CachingQuery)
            listen_on_session(factory, cache=self.cache, **settings)
            return factory
        return sessionmaker(self.db.engine, class_=CachingSession, cache=self.cache, **settings)

    @property
    def engine(self) -> Engine:
        """The engine the sessions use (under the async driver, its ``sync_engine``)."""
        return self.db.engine if self.async_engine is None else self.async_engine.sync_engine

    async def run_async(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Run a test body inside SQLAlchemy's greenlet on this loop, then close what is bound
        to the loop (the async engine's pool, the cache's async clients)."""
        assert self.async_engine is not None
        await run_in_greenlet(fn, kwargs, self.cache, self.async_engine)

    def cached(self, fn: Callable[[], Any]) -> Any:
        """Call *fn*, assert it sent no SQL (served from the cache), return its result."""
        out, n = self.sql.run(fn)
        assert n == 0, f"expected a cache hit (0 statements), got {n}: {self.sql.statements[-n:]}"
        return out

    def queried(self, fn: Callable[[], Any]) -> Any:
        """Call *fn*, assert it sent at least one statement, return its result."""
        out, n = self.sql.run(fn)
        assert n >= 1, "expected the database to be queried, got a cache hit"
        return out

    def warm(self, read: Read) -> Any:
        """Run *read* in a fresh session (a miss that stores), then again in another fresh
        session where it must be a hit; return the (equal) result."""
        with self.Session() as s:
            first = plain(self.queried(lambda: read(s)))
        with self.Session() as s:
            second = plain(self.cached(lambda: read(s)))
        assert first == second
        return second

    def fresh_read(self, read: Read) -> Any:
        """Run *read* in a fresh caching session; it must query the database."""
        with self.Session() as s:
            return plain(self.queried(lambda: read(s)))

    def hit(self, read: Read) -> Any:
        """Run *read* in a fresh caching session; it must be served from the cache."""
        with self.Session() as s:
            return plain(self.cached(lambda: read(s)))

    def three_ways(
        self,
        read: Read,
        check: Callable[[Any, int], Any] = lambda out, n: out,
        statements: int | None = None,
    ) -> list[Any]:
        """*read* in a plain Session, then in a caching session on a miss and on a hit (which
        must send no SQL); *check(result, statements sent)* must give the same answer each
        time. The plain read and the miss must send *statements* statements (at least one
        when None). Returns the three answers."""
        answers = []
        for name, factory in (("plain", self.Plain), ("miss", self.Session), ("hit", self.Session)):
            with factory() as s:
                out, n = self.sql.run(partial(read, s))
                if name == "hit":
                    assert n == 0, f"expected a hit, sent {self.sql.statements[-n:]}"
                elif statements is None:
                    assert n >= 1, f"the {name} read sent no statement"
                else:
                    assert n == statements, self.sql.statements[-n:]
                answers.append(check(out, n))
        assert answers[1] == answers[0], answers
        assert answers[2] == answers[0], answers
        return answers

    def truth(self, read: Read) -> Any:
        """Run *read* in a plain (uncached) Session."""
        with self.Plain() as s:
            return plain(read(s))


def plain(value: Any) -> Any:
    """Comparable plain data for results: mapped objects become (class, column values)."""
    if isinstance(value, Row):
        return tuple(plain(v) for v in value)
    if isinstance(value, list | tuple):
        return type(value)(plain(v) for v in value)
    if hasattr(type(value), "_sa_class_manager"):
        state = instance_state(value)
        cols = {p.key: getattr(value, p.key) for p in state.mapper.column_attrs}
        return (type(value).__name__, tuple(sorted(cols.items())))
    return value


async def run_in_greenlet(
    fn: Callable[..., Any], kwargs: dict[str, Any], cache: Any, async_engine: Any
) -> None:
    """Run a (sync) test body inside SQLAlchemy's greenlet on this loop, then close what is
    bound to the loop (the async engine's pool, the cache's async clients)."""
    try:
        await greenlet_spawn(fn, **kwargs)
    finally:
        await cache.disconnect()
        await async_engine.dispose()
