"""Bounded memory: the memory backend's limits, the ORM statement-shape table, and no growth
over a repeated workload (tracemalloc)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, select
from sqlalchemy.orm import aliased
from sqlalchemy.pool import StaticPool

from tests.reliability.relkit import Base, User, reseed
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.memory import MemoryBackend
from yokedcache_sa.orm import CachingSession
from yokedcache_sa.orm import shapes as orm_shapes


@pytest.mark.parametrize(
    ("max_entries", "max_bytes"),
    [(1000, 64 * 1024 * 1024), (100_000, 256 * 1024)],
    ids=["entry-bound", "byte-bound"],
)
def test_memory_backend_stays_within_its_bounds(max_entries: int, max_bytes: int) -> None:
    cache = YokedCache(
        CacheConfig(key_prefix="soak", memory_max_entries=max_entries, memory_max_bytes=max_bytes)
    )
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    for i in range(20_000):
        assert cache.set_sync(f"key-{i}", {"i": i, "pad": "x" * (i % 300)}, tags=[f"t{i % 50}"])
        if i % 1000 == 0:
            assert backend.key_count() <= max_entries
            assert backend.bytes_used <= max_bytes
    assert 0 < backend.key_count() <= max_entries
    assert backend.bytes_used <= max_bytes
    assert cache.get_sync("key-19999") == {"i": 19999, "pad": "x" * (19999 % 300)}
    assert cache.get_sync("key-0") is None  # evicted (least recently used)
    assert cache.get_stats_sync().key_count == backend.key_count()


@pytest.fixture(scope="module")
def sqlite() -> Iterator[Engine]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    reseed(engine)
    yield engine
    engine.dispose()


def run_shapes(engine: Engine, cache: YokedCache, n: int) -> None:
    """Execute *n* structurally distinct ORM queries (each a differently named alias)."""
    with CachingSession(engine, cache=cache) as s:
        for i in range(n):
            u = aliased(User, name=f"u{i}")
            got = s.execute(select(u.name).where(u.id == 1 + i % 5)).scalar_one()
            assert got == ("ada", "bob", "cy", "dee", "eve")[i % 5]


def test_orm_statement_shapes_are_bounded(sqlite: Engine) -> None:
    cache = YokedCache(CacheConfig(key_prefix="shapes", memory_max_entries=1000))
    run_shapes(sqlite, cache, 5000)
    assert len(orm_shapes._shapes) <= orm_shapes._MAX_SHAPES
    assert cache.get_stats_sync().key_count <= 1000
    # the cache still works for a shape seen before
    with CachingSession(sqlite, cache=cache) as s:
        assert s.execute(select(User.name).where(User.id == 3)).scalar_one() == "cy"
    hits = cache.get_stats_sync().hits
    with CachingSession(sqlite, cache=cache) as s:
        assert s.execute(select(User.name).where(User.id == 3)).scalar_one() == "cy"
    assert cache.get_stats_sync().hits == hits + 1


def test_no_growth_over_a_repeated_batch(sqlite: Engine) -> None:
    """A steady workload (new shapes, many parameter values, entries churning through a full
    backend) reaches a plateau: an identical batch later allocates next to nothing more."""
    cache = YokedCache(CacheConfig(key_prefix="growth", memory_max_entries=500))

    def batch() -> None:
        run_shapes(sqlite, cache, 100)
        with CachingSession(sqlite, cache=cache) as s:
            for i in range(600):  # one shape, 600 keys: misses, stores, LRU evictions
                stmt = select(User.id).where(User.id == 1 + i % 5, User.name != f"n{i}")
                assert s.execute(stmt).scalar_one() == 1 + i % 5
        for i in range(1500):
            cache.set_sync(f"k{i}", "v" * 100, tags=[f"tag{i % 20}"])
            cache.get_sync(f"k{i}")
        cache.invalidate_tags_sync([f"tag{i}" for i in range(20)])

    batch()
    gc.collect()
    tracemalloc.start()
    try:
        batch()  # warm-up under tracing
        gc.collect()
        first = tracemalloc.get_traced_memory()[0]
        batch()
        gc.collect()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    growth = second - first
    assert growth < 256 * 1024, f"grew {growth} bytes over an identical batch"
    assert len(orm_shapes._shapes) <= orm_shapes._MAX_SHAPES
