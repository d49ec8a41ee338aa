"""Fixtures of the change-notification suite: real PostgreSQL, tables with a per-process
prefix in ``public`` (read by bare name) and one in a private schema (read qualified), the
notify function in that private schema; triggers, function and tables removed after."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Engine, Integer, MetaData, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tests.conftest import PG_URL, require_service
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession
from yokedcache_sa.pgnotify import NotifyListener, install, uninstall

TAG = uuid.uuid4().hex[:8]
PREFIX = f"ycpn{TAG}_"
SCHEMA = f"ycpn_{TAG}"


class Base(DeclarativeBase):
    metadata = MetaData()


class Item(Base):
    """In the default schema, read as ``table:<name>``."""

    __tablename__ = PREFIX + "items"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    v: Mapped[int] = mapped_column(Integer, default=0)


class Other(Base):
    """Never written by the tests that read it: proves what a reconnect invalidates."""

    __tablename__ = PREFIX + "other"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Sentinel(Base):
    """Written to learn that every earlier notification was handled (they arrive in order)."""

    __tablename__ = PREFIX + "sentinel"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class Qualified(Base):
    """In a private schema, read as ``table:<schema>.<name>``."""

    __tablename__ = "qualified"
    __table_args__ = {"schema": SCHEMA}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


WATCHED = [
    f"public.{Item.__tablename__}",
    f"public.{Other.__tablename__}",
    f"public.{Sentinel.__tablename__}",
    f"{SCHEMA}.qualified",
]


class SQLCount:
    """Statements an engine sends (``before_cursor_execute``)."""

    def __init__(self, engine: Engine) -> None:
        self.n = 0
        self.engine = engine
        event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, *args: Any) -> None:
        self.n += 1

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)


@pytest.fixture(scope="module")
def pg() -> Iterator[Engine]:
    """The engine, with this module's tables and triggers."""
    require_service("PostgreSQL", PG_URL, 5432)
    engine = create_engine(PG_URL, pool_size=5)
    with engine.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{SCHEMA}"')
    try:
        Base.metadata.create_all(engine)
        install(engine, tables=WATCHED, schema=SCHEMA)
        yield engine
    finally:
        try:
            uninstall(engine, tables=WATCHED, schema=SCHEMA)
        finally:
            Base.metadata.drop_all(engine)
            with engine.begin() as c:
                c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
            engine.dispose()


@dataclass
class World:
    engine: Engine
    cache: YokedCache
    sql: SQLCount
    Session: sessionmaker[CachingSession]

    def read(self, model: type[Any] = Item, id_: int = 1) -> tuple[Any, int]:
        """(name, v) or name of row *id_* through a fresh caching session, and how many
        statements it sent (0 = served from the cache)."""
        before = self.sql.n
        with self.Session() as s:
            row = s.execute(select(model).where(model.id == id_)).scalar_one()
            out = (row.name, row.v) if model is Item else row.name
        return out, self.sql.n - before

    def warm(self, model: type[Any] = Item, id_: int = 1) -> Any:
        """Read twice; assert the second read was a hit."""
        self.read(model, id_)
        value, n = self.read(model, id_)
        assert n == 0, "expected a cache hit"
        return value

    def outside(self, sql: str, **params: Any) -> None:
        """A plain connection of the same engine (no caching session) writes and commits."""
        from sqlalchemy import text

        with self.engine.begin() as c:
            c.execute(text(sql), params)


@pytest.fixture
def world(pg: Engine, cache: YokedCache) -> Iterator[World]:
    from sqlalchemy import delete, insert

    with pg.begin() as c:
        for t in (Item, Other, Qualified, Sentinel):
            c.execute(delete(t))
        c.execute(insert(Item), [{"id": 1, "name": "a", "v": 0}, {"id": 2, "name": "b", "v": 0}])
        c.execute(insert(Other), [{"id": 1, "name": "o"}])
        c.execute(insert(Qualified), [{"id": 1, "name": "q"}])
    sql = SQLCount(pg)
    try:
        yield World(pg, cache, sql, sessionmaker(pg, class_=CachingSession, cache=cache))
    finally:
        sql.remove()


@pytest.fixture
def listener(world: World) -> Iterator[NotifyListener]:
    with NotifyListener(world.cache, world.engine, tables=WATCHED) as lst:
        assert lst.wait_ready(10), "the listener did not connect"
        yield lst
