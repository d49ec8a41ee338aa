"""Shared pieces of the integration tests: per-run table names, a statement counter, and the
database + cache stacks the tests bind to (SQLite file + memory, PostgreSQL + Redis).

Table names carry a random suffix so that other suites running against the same databases
never collide with these tests; every stack drops its tables when it is torn down.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Engine, Integer, MetaData, String, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.conftest import PG_ASYNC_URL, PG_URL, REDIS_URL, SHARED_REDIS, require_service
from tests.sqlcount import SQLCounter
from tests.tablenames import random_token
from yokedcache_sa import CacheConfig, YokedCache

SUFFIX = random_token(lambda s: (f"it_users_{s}", f"it_items_{s}"), length=8)
USERS = f"it_users_{SUFFIX}"
ITEMS = f"it_items_{SUFFIX}"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = USERS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class Item(Base):
    """A second table with no relation to users: writes to it must not touch user results."""

    __tablename__ = ITEMS
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(100))


@dataclass
class Stack:
    """One database (sync and async engines) and one cache."""

    name: str
    engine: Engine
    aengine: AsyncEngine
    cache: YokedCache
    counter: SQLCounter
    acounter: SQLCounter

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"


STACKS = ["sqlite-memory", "postgresql-redis"]


def new_cache(redis: bool, prefix: str | None = None) -> YokedCache:
    prefix = prefix or "it" + uuid.uuid4().hex[:12]
    if redis:
        return YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=prefix, **SHARED_REDIS))
    return YokedCache(CacheConfig(key_prefix=prefix))


def urls(name: str, tmp_path: Path) -> tuple[str, str]:
    """(sync URL, async URL) of *name* ("sqlite" or "postgresql"); skips if unreachable."""
    if name.startswith("sqlite"):
        f = tmp_path / "it.db"
        return f"sqlite:///{f}", f"sqlite+aiosqlite:///{f}"
    require_service("PostgreSQL", PG_URL, 5432)
    return PG_URL, PG_ASYNC_URL


def engine_kw(url: str) -> dict[str, Any]:
    """Engine arguments: a SQLite connection may be used by FastAPI's threadpool and loop."""
    return {"connect_args": {"check_same_thread": False}} if url.startswith("sqlite") else {}


def open_stack(name: str, tmp_path: Path, metadata: MetaData = Base.metadata) -> Iterator[Stack]:
    """Create the tables and a private cache for *name*; drop and close everything after."""
    redis = name.endswith("redis")
    if redis:
        require_service("Redis", REDIS_URL, 6379)
    url, aurl = urls(name, tmp_path)
    engine = create_engine(url, **engine_kw(url))
    aengine = create_async_engine(aurl)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    cache = new_cache(redis)
    counter = SQLCounter(engine)
    acounter = SQLCounter(aengine.sync_engine)
    try:
        yield Stack(name, engine, aengine, cache, counter, acounter)
    finally:
        counter.remove()
        acounter.remove()
        cache.redirect_to(None)
        try:
            cache.clear_sync()
        finally:
            cache.disconnect_sync()
        metadata.drop_all(engine)
        engine.dispose()
        # the async engine is disposed by the ``astack`` fixture, in the test's event loop
