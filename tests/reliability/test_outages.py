"""Redis dies or hangs under a CachingSession on PostgreSQL: reads stay correct and bounded,
the circuit breaker opens, and caching resumes once Redis answers again.

Latency asserts are hang guards (a bound far above the configured timeouts), not benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from tests.reliability.conftest import FAST
from tests.reliability.relkit import READS, CountingBackend, RedisProcess, SQLCounter
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession

BOUND = 2.0
"""Seconds any single request may take while the cache is sick (socket_timeout is 0.1 s)."""


def expected(engine: Engine) -> dict[str, Any]:
    with Session(engine) as s:
        return {name: fn(s) for name, fn in READS.items()}


def timed_read(engine: Engine, cache: YokedCache, name: str) -> tuple[Any, float]:
    t0 = time.monotonic()
    with CachingSession(engine, cache=cache) as s:
        value = READS[name](s)
    return value, time.monotonic() - t0


def read_checked(engine: Engine, cache: YokedCache, truth: dict[str, Any], name: str) -> None:
    value, took = timed_read(engine, cache, name)
    assert value == truth[name]
    assert took < BOUND, f"{name} took {took:.2f}s with a sick cache"


def assert_cached(engine: Engine, cache: YokedCache, sql: SQLCounter, truth: dict[str, Any]):
    """Every read is served from the cache (0 SQL statements) once it has been read."""
    for name in READS:
        read_checked(engine, cache, truth, name)
        with sql.delta() as n:
            read_checked(engine, cache, truth, name)
        assert n[0] == 0, f"{name} was not served from the cache"


def recovers(
    engine: Engine, cache: YokedCache, sql: SQLCounter, truth: dict[str, Any], within: float
) -> bool:
    """Keep reading (steady traffic, every 20 ms) until a repeated read costs no SQL."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        read_checked(engine, cache, truth, "by_id")
        with sql.delta() as n:
            read_checked(engine, cache, truth, "by_id")
        if n[0] == 0:
            return True
        time.sleep(0.02)
    return False


def counted_cache(make_cache: Callable[..., YokedCache], url: str) -> tuple[YokedCache, Any]:
    cache = make_cache(url)
    counting = CountingBackend(cache.backend)
    cache.backend = counting  # a counting proxy of the real one
    return cache, counting


def test_killed_redis_reads_fall_back_breaker_opens_then_recovers(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    truth = expected(pg)
    cache, counting = counted_cache(make_cache, redis_server.url)
    assert_cached(pg, cache, sql, truth)
    assert cache.health_sync() is True

    redis_server.kill()
    threshold = FAST["circuit_breaker_threshold"]
    for i in range(threshold):
        before = counting.calls
        read_checked(pg, cache, truth, list(READS)[i % len(READS)])
        assert counting.calls > before  # still trying the store
    assert cache.health_sync() is False
    stats = cache.get_stats_sync()
    assert stats.healthy is False and stats.errors >= threshold

    # Breaker open: reads go straight to the database, without touching the store.
    before = counting.calls
    for name in READS:
        with sql.delta() as n:
            read_checked(pg, cache, truth, name)
        assert n[0] >= 1
    assert counting.calls == before

    redis_server.start()  # same port, no data
    assert recovers(pg, cache, sql, truth, within=10 * FAST["circuit_breaker_timeout"])
    assert cache.health_sync() is True
    assert cache.get_stats_sync().healthy is True
    assert_cached(pg, cache, sql, truth)


def test_breaker_closes_under_steady_traffic(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    """Calls refused by the open breaker must not postpone its next probe.

    Reads arrive every 20 ms, far more often than circuit_breaker_timeout (1 s): the breaker
    must still let a probe through about 1 s after opening and close once Redis is back.
    """
    truth = expected(pg)
    cache = make_cache(redis_server.url)
    assert_cached(pg, cache, sql, truth)
    redis_server.kill()
    deadline = time.monotonic() + 1.5  # several breaker periods of steady failing traffic
    while time.monotonic() < deadline:
        read_checked(pg, cache, truth, "by_id")
        time.sleep(0.02)
    assert cache.health_sync() is False
    redis_server.start()
    t0 = time.monotonic()
    assert recovers(pg, cache, sql, truth, within=10.0)
    assert time.monotonic() - t0 < 3 * FAST["circuit_breaker_timeout"] + 1.0


def test_paused_redis_times_out_to_the_database_then_recovers(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    truth = expected(pg)
    cache, counting = counted_cache(make_cache, redis_server.url)
    assert_cached(pg, cache, sql, truth)

    redis_server.pause()
    try:
        for _ in range(3):
            for name in READS:
                with sql.delta() as n:
                    read_checked(pg, cache, truth, name)
                assert n[0] >= 1  # answered by the database, not by a hung cache
        assert cache.health_sync() is False
        before = counting.calls
        read_checked(pg, cache, truth, "list")
        assert counting.calls == before  # breaker open: not even tried
    finally:
        redis_server.resume()
    assert recovers(pg, cache, sql, truth, within=10 * FAST["circuit_breaker_timeout"])
    assert cache.health_sync() is True
    assert_cached(pg, cache, sql, truth)


async def test_paused_redis_async_calls_time_out(
    redis_server: RedisProcess, make_cache: Callable[..., YokedCache]
) -> None:
    cache = make_cache(redis_server.url, circuit_breaker_threshold=100)
    assert await cache.set("k", 1, tags=["t"])
    redis_server.pause()
    try:
        for _ in range(3):
            t0 = time.monotonic()
            assert await cache.get("k") is None
            assert time.monotonic() - t0 < BOUND
        assert await cache.health() is False
    finally:
        redis_server.resume()
    assert await cache.get("k") == 1
    await cache.disconnect()
