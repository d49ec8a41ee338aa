"""Backend suite fixtures. The generic contract binds to every backend through the ``cache``
fixture of ``tests/conftest.py`` (memory and Redis); ``timed`` is the same cache family with
time that can pass."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.backends.kit import FakeClock, Timed, is_redis
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.memory import MemoryBackend


@pytest.fixture
def timed(cache: YokedCache, request: pytest.FixtureRequest) -> Iterator[Timed]:
    """A cache on the same backend as *cache* whose TTLs and write leases can run out."""
    prefix = cache.config.key_prefix + "x"
    if is_redis(cache):
        span = 0.2
        c = YokedCache(
            CacheConfig(
                redis_url=request.getfixturevalue("redis_url"), key_prefix=prefix, write_lease=span
            )
        )
        t = Timed(c, span, None)
    else:
        clock = FakeClock()
        span = 30.0
        c = YokedCache(
            CacheConfig(key_prefix=prefix, write_lease=span), backend=MemoryBackend(clock=clock)
        )
        t = Timed(c, span, clock)
    yield t
    try:
        c.clear_sync()
    finally:
        c.disconnect_sync()
