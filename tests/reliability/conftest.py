"""Reliability fixtures: a private redis-server per test, private PostgreSQL tables per module.

The redis-server is always killed at teardown (also when a test paused it). Caches made with
``make_cache`` use short timeouts and a small breaker so outages are quick to observe.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine

from tests.conftest import PG_URL, require_service
from tests.reliability.relkit import Base, SQLCounter, reseed
from yokedcache_sa import CacheConfig, YokedCache

FAST: dict[str, Any] = {
    "socket_timeout": 0.1,
    "socket_connect_timeout": 0.1,
    "circuit_breaker_threshold": 3,
    "circuit_breaker_timeout": 1.0,
}
"""Cache settings of the outage tests: a sick Redis costs at most ~0.1 s per call."""


@pytest.fixture(scope="module")
def pg_engine() -> Iterator[Engine]:
    """PostgreSQL with this run's private tables (created for the module, dropped after)."""
    require_service("PostgreSQL", PG_URL, 5432)
    engine = create_engine(PG_URL, pool_size=5)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        yield engine
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture
def pg(pg_engine: Engine) -> Engine:
    """The PostgreSQL engine with the seed rows restored."""
    reseed(pg_engine)
    return pg_engine


@pytest.fixture
def sql(pg: Engine) -> Iterator[SQLCounter]:
    counter = SQLCounter(pg)
    try:
        yield counter
    finally:
        counter.remove()


@pytest.fixture
def make_cache() -> Iterator[Callable[..., YokedCache]]:
    """Build caches (fast timeouts, private prefix unless given); all disconnected after."""
    made: list[YokedCache] = []
    default_prefix = "rel" + uuid.uuid4().hex[:10]

    def make(url: str | None, **overrides: Any) -> YokedCache:
        kw: dict[str, Any] = {**FAST, "key_prefix": default_prefix, **overrides}
        if url is not None:
            kw["redis_url"] = url
        cache = YokedCache(CacheConfig(**kw))
        made.append(cache)
        return cache

    yield make
    for cache in made:
        cache.disconnect_sync()
