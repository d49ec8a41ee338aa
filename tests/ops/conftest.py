"""Fixtures of the operator-facing tests (logs, messages, explain, CLI): one small model on
SQLite and PostgreSQL, private table names, private redis-servers where a test breaks Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, ForeignKey, String, Table, create_engine, insert
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from tests.conftest import PG_URL, REDIS_URL, SHARED_REDIS, require_service
from tests.tablenames import random_token
from yokedcache_sa import CacheConfig, YokedCache

P = "ycops" + random_token(lambda t: (f"ycops{t}_team", f"ycops{t}_player")) + "_"

FAST: dict[str, Any] = {
    "socket_timeout": 0.1,
    "socket_connect_timeout": 0.1,
    "circuit_breaker_threshold": 3,
    "circuit_breaker_timeout": 0.3,
}


class Base(DeclarativeBase):
    __table__: ClassVar[Table]  # every model here maps one Table (not any FromClause)


class Team(Base):
    __tablename__ = P + "team"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Player(Base):
    __tablename__ = P + "player"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    team_id: Mapped[int] = mapped_column(ForeignKey(Team.id))


def seed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(Player.__table__.delete())
        conn.execute(Team.__table__.delete())
        conn.execute(insert(Team), [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}])
        conn.execute(
            insert(Player),
            [{"id": i, "name": f"p{i}", "team_id": 1 + i % 2} for i in range(1, 7)],
        )


@dataclass
class Stack:
    name: str
    engine: Engine
    cache: YokedCache


def _engine(name: str, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    if name == "sqlite":
        return create_engine(f"sqlite:///{tmp_path_factory.mktemp('ops') / 'ops.db'}")
    require_service("PostgreSQL", PG_URL, 5432)
    return create_engine(PG_URL)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    eng = _engine(request.param, tmp_path_factory)
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    try:
        yield eng
        Base.metadata.drop_all(eng)
    finally:
        eng.dispose()


@pytest.fixture
def stack(engine: Engine, unique_prefix: str) -> Iterator[Stack]:
    """SQLite with the memory backend, PostgreSQL with Redis (the pairs the brief asks)."""
    seed(engine)
    if engine.dialect.name == "sqlite":
        cache = YokedCache(CacheConfig(key_prefix=unique_prefix, memory_shared=False))
    else:
        require_service("Redis", REDIS_URL, 6379)
        cache = YokedCache(
            CacheConfig(redis_url=REDIS_URL, key_prefix=unique_prefix, **SHARED_REDIS)
        )
    try:
        yield Stack(engine.dialect.name, engine, cache)
    finally:
        try:
            cache.clear_sync()
        finally:
            cache.disconnect_sync()


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'ops1.db'}")
    Base.metadata.create_all(eng)
    seed(eng)
    try:
        yield eng
    finally:
        eng.dispose()
