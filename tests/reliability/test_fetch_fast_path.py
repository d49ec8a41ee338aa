"""The Redis backend's sync fetch sends the fetch script's EVALSHA itself (the hit path's fast
path): a server that lost its scripts, and a dead server must behave as through the generic
command flow (the script loaded again and the entry served; BackendUnavailable naming the
read)."""

from __future__ import annotations

import uuid

import pytest

from tests.redis_process import RedisProcess
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.redis_lua import SHAS
from yokedcache_sa.errors import BackendUnavailable


def _cache(url: str) -> YokedCache:
    return YokedCache(
        CacheConfig(
            redis_url=url,
            key_prefix="ff" + uuid.uuid4().hex[:10],
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
    )


def test_a_server_without_the_script_loads_it_and_answers(redis_server: RedisProcess) -> None:
    cache = _cache(redis_server.url)
    try:
        assert cache.set_sync("k", {"v": 1}, tags=["table:t"])
        assert cache.get_sync("k") == {"v": 1}
        admin = redis_server.client()
        admin.script_flush()  # a private server: as after a restart or a failover
        assert admin.script_exists(SHAS["fetch"]) == [False]
        hits = cache.get_stats_sync().hits
        assert cache.get_sync("k") == {"v": 1}  # read by the script, loaded again
        assert admin.script_exists(SHAS["fetch"]) == [True]
        stats = cache.get_stats_sync()
        assert stats.hits == hits + 1 and stats.errors == 0
    finally:
        cache.disconnect_sync()


def test_a_dead_server_is_backend_unavailable_naming_the_read(
    redis_server: RedisProcess,
) -> None:
    cache = _cache(redis_server.url)
    try:
        assert cache.set_sync("k", 1)
        redis_server.kill()
        with pytest.raises(BackendUnavailable, match="did not answer a read") as info:
            cache.backend.fetch("k")
        assert redis_server.url.split("@")[-1].split("/")[0] in str(info.value)
        assert cache.get_sync("k") is None  # the façade: a miss, never an exception
    finally:
        cache.disconnect_sync()
