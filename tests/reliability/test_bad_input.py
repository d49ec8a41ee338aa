"""Odd tags and keys on both backends; a hung Redis and a wrong server on the port."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine

from tests.conftest import IN_CI
from tests.reliability.relkit import RedisProcess, read_user
from yokedcache_sa import BackendUnavailable, YokedCache
from yokedcache_sa.orm import CachingSession

ODD_TAGS = [
    "line\nbreak",
    "cr\rlf\r\n",
    "nul\x00byte",
    "\x01",
    "x" * 10_000,
    "t" * 120,
    "t" * 121,
    "ключ",
    "标签🙂",
    " spaced tag ",
    "semi;colon:and:colons",
    "",
    "*",
    "table:users",
]
ODD_KEYS = ["ключ", "🙂" * 3, "k" * 10_000, "k" * 9_999, "a\nb", "a\x00b", "", " ", "{brace}"]


def test_odd_tags_round_trip_and_invalidate_independently(cache: YokedCache) -> None:
    for i, tag in enumerate(ODD_TAGS):
        assert cache.set_sync(f"k{i}", i, tags=[tag]), repr(tag[:20])
    assert [cache.get_sync(f"k{i}") for i in range(len(ODD_TAGS))] == list(range(len(ODD_TAGS)))
    # Invalidating one odd tag drops exactly the entries carrying it ("*" is every entry).
    for i, tag in enumerate(ODD_TAGS):
        if tag == "*":
            continue
        cache.invalidate_tags_sync([tag])
        assert cache.get_sync(f"k{i}") is None, repr(tag[:20])
        later = range(i + 1, len(ODD_TAGS))
        assert all(cache.get_sync(f"k{j}") == j for j in later), repr(tag[:20])
    assert cache.get_stats_sync().errors == 0


def test_near_colliding_tags_stay_distinct(cache: YokedCache) -> None:
    pairs = [("a\nb", "a b"), ("x" * 10_000, "x" * 9_999), ("ключ", "kluch"), ("a\x00", "a")]
    for n, (t1, t2) in enumerate(pairs):
        assert cache.set_sync(f"p{n}", n, tags=[t2])
        cache.invalidate_tags_sync([t1])
        assert cache.get_sync(f"p{n}") == n, f"invalidating {t1[:10]!r} hit {t2[:10]!r}"


def test_odd_keys(cache: YokedCache) -> None:
    for i, key in enumerate(ODD_KEYS):
        assert cache.set_sync(key, {"i": i, "key": key}, tags=["t"])
    for i, key in enumerate(ODD_KEYS):
        assert cache.get_sync(key) == {"i": i, "key": key}
    assert cache.delete_sync("k" * 10_000) is True
    assert cache.get_sync("k" * 10_000) is None
    assert cache.get_sync("k" * 9_999) == {"i": 3, "key": "k" * 9_999}


async def test_odd_keys_and_tags_async(cache: YokedCache) -> None:
    for i, (key, tag) in enumerate(zip(ODD_KEYS, ODD_TAGS)):
        assert await cache.set(key, i, tags=[tag])
        assert await cache.get(key) == i
        await cache.invalidate_tags([tag])
        assert await cache.get(key) is None


def test_hung_redis_is_a_quick_miss_and_connect_fails(
    redis_server: RedisProcess, make_cache: Callable[..., YokedCache]
) -> None:
    cache = make_cache(redis_server.url, circuit_breaker_threshold=100)
    assert cache.set_sync("k", 1)
    redis_server.pause()
    try:
        for _ in range(3):
            t0 = time.monotonic()
            assert cache.get_sync("k") is None
            assert time.monotonic() - t0 < 2.0
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match=str(redis_server.port)):
            cache.connect_sync()
        assert time.monotonic() - t0 < 2.0
        assert cache.set_sync("k", 2) is False
        assert cache.health_sync() is False
    finally:
        redis_server.resume()
    assert cache.get_sync("k") == 1


def _postgres_port() -> int:
    try:
        socket.create_connection(("127.0.0.1", 5432), 1).close()
    except OSError:
        if IN_CI:
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable; CI=true requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    return 5432


def test_wrong_server_on_the_port(make_cache: Callable[..., YokedCache]) -> None:
    port = _postgres_port()
    cache = make_cache(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0)
    with pytest.raises(BackendUnavailable) as info:
        cache.connect_sync()
    msg = str(info.value)
    assert f"127.0.0.1:{port}" in msg and "YOKEDCACHE_REDIS_URL" in msg
    assert cache.get_sync("k") is None
    assert cache.set_sync("k", 1) is False
    assert cache.health_sync() is False


async def test_wrong_server_on_the_port_async(make_cache: Callable[..., YokedCache]) -> None:
    port = _postgres_port()
    cache = make_cache(f"redis://127.0.0.1:{port}/0", socket_timeout=1.0)
    with pytest.raises(BackendUnavailable, match=f"127.0.0.1:{port}"):
        await cache.connect()
    assert await cache.get("k") is None
    await cache.disconnect()


def test_orm_reads_work_with_the_wrong_server(
    pg: Engine, make_cache: Callable[..., YokedCache]
) -> None:
    cache = make_cache(f"redis://127.0.0.1:{_postgres_port()}/0", socket_timeout=1.0)
    for _ in range(5):
        t0 = time.monotonic()
        with CachingSession(pg, cache=cache) as s:
            assert read_user(s, 3) == (3, "cy", 1)
        assert time.monotonic() - t0 < 5.0
