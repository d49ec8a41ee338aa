"""Issue 13, item 7: misconfigurations produce messages that say what happened and what to do;
and item 3: a Redis outage logs one WARNING per change of state, not one per request."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest
from sqlalchemy import Engine, select, update

from tests.conftest import require_redis_server
from tests.ops.conftest import FAST, Player
from tests.redis_process import RedisProcess
from yokedcache_sa import BackendError, BackendUnavailable, CacheConfig, YokedCache
from yokedcache_sa.errors import InvalidationError
from yokedcache_sa.orm import CachingSession

PW = "s3cret-" + uuid.uuid4().hex[:8]


@pytest.fixture
def locked_redis():
    require_redis_server()
    server = RedisProcess(password=PW)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def _connect_error(url: str) -> BackendUnavailable:
    cache = YokedCache(CacheConfig(redis_url=url, key_prefix="ops", **FAST))
    try:
        with pytest.raises(BackendUnavailable) as info:
            cache.connect_sync()
        return info.value
    finally:
        cache.disconnect_sync()


@pytest.mark.parametrize("how", ["no password", "wrong password"])
def test_wrong_password_is_an_authentication_failure(locked_redis: RedisProcess, how: str) -> None:
    port = locked_redis.port
    url = (
        f"redis://127.0.0.1:{port}/0"
        if how == "no password"
        else f"redis://:wrong-{PW}@127.0.0.1:{port}/0"
    )
    msg = str(_connect_error(url))
    assert "authentication failure" in msg
    assert ("NOAUTH" in msg) if how == "no password" else ("WRONGPASS" in msg or "invalid" in msg)
    assert "did not answer" not in msg
    assert "redis://:PASSWORD@host:6379/0" in msg  # the fix
    assert PW not in msg


def test_right_password_connects(locked_redis: RedisProcess) -> None:
    cache = YokedCache(
        CacheConfig(redis_url=f"redis://:{PW}@127.0.0.1:{locked_redis.port}/0", key_prefix="o")
    )
    try:
        cache.connect_sync()
        assert cache.health_sync()
    finally:
        cache.disconnect_sync()


def test_acl_user_without_permission_is_named(locked_redis: RedisProcess) -> None:
    with locked_redis.client() as r:
        r.execute_command("ACL", "SETUSER", "pinger", "on", ">pw-pinger", "+ping", "~*")
    cache = YokedCache(
        CacheConfig(redis_url=f"redis://pinger:pw-pinger@127.0.0.1:{locked_redis.port}/0")
    )
    try:
        cache.connect_sync()  # PING is allowed
        with pytest.raises(BackendError) as info:
            cache.backend.fetch("k:x")
        msg = str(info.value)
        assert "ACL permission denied" in msg and "ACL SETUSER" in msg
        assert "pw-pinger" not in msg
    finally:
        cache.disconnect_sync()


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("yokedcache_sa")
    ]


def _read(engine: Engine, cache: YokedCache) -> list[str]:
    with CachingSession(engine, cache=cache) as s:
        return list(s.scalars(select(Player.name).where(Player.id < 4).order_by(Player.id)))


def test_outage_logs_one_warning_per_transition(
    redis_server: RedisProcess, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(CacheConfig(redis_url=redis_server.url, key_prefix="out", **FAST))
    try:
        expected = _read(sqlite_engine, cache)
        _read(sqlite_engine, cache)
        with caplog.at_level(logging.DEBUG, logger="yokedcache_sa"):
            redis_server.kill()
            for _ in range(25):
                assert _read(sqlite_engine, cache) == expected
            down = _warnings(caplog)
            assert len(down) == 2, down
            assert "is unreachable (read failed" in down[0]
            assert "reads use the database" in down[0]
            assert "circuit breaker opened after 3 consecutive failures" in down[1]
            assert not any("using the database" in m for m in down)
            caplog.clear()
            redis_server.start()
            deadline = time.monotonic() + 10
            while cache._breaker.failures and time.monotonic() < deadline:
                assert _read(sqlite_engine, cache) == expected
                time.sleep(0.05)
            for _ in range(10):
                assert _read(sqlite_engine, cache) == expected
            up = _warnings(caplog)
            assert sorted(up) == sorted(
                [
                    "yokedcache: circuit breaker closed: "
                    f"{cache.backend.url_redacted} is used again",  # type: ignore[attr-defined]
                    f"yokedcache: the cache store {cache.backend.url_redacted} answers again",  # type: ignore[attr-defined]
                ]
            ), up
    finally:
        cache.disconnect_sync()


def test_pending_invalidations_warn_once_then_once_on_delivery(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(
        CacheConfig(
            redis_url=redis_server.url,
            key_prefix="pend",
            **{**FAST, "enable_circuit_breaker": False},
        )
    )
    try:
        cache.connect_sync()
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            redis_server.kill()
            for i in range(5):
                with pytest.raises(InvalidationError, match="not delivered"):
                    cache.invalidate_tags_sync([f"t{i}"])
            pending = [m for m in _warnings(caplog) if "not delivered" in m]
            assert len(pending) == 1, _warnings(caplog)
            assert "bypassed in this process and retried" in pending[0]
            redis_server.start()
            deadline = time.monotonic() + 10
            while cache.flush_pending_sync() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert cache.flush_pending_sync() == 0
            delivered = [m for m in _warnings(caplog) if "pending invalidations delivered" in m]
            assert len(delivered) == 1, _warnings(caplog)
    finally:
        cache.disconnect_sync()


def test_strict_refusal_is_not_preceded_by_a_misleading_warning(
    redis_server: RedisProcess, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(
        CacheConfig(
            redis_url=redis_server.url, key_prefix="strict", strict_invalidation=True, **FAST
        )
    )
    try:
        cache.connect_sync()
        redis_server.kill()
        with (
            caplog.at_level(logging.WARNING, logger="yokedcache_sa"),
            CachingSession(sqlite_engine, cache=cache) as s,
        ):
            s.execute(update(Player).where(Player.id == 1).values(name="changed"))
            with pytest.raises(InvalidationError, match="the transaction is not committed"):
                s.commit()
        logged = _warnings(caplog)
        assert not any("using the database" in m for m in logged), logged
        assert any("strict_invalidation refuses commits" in m for m in logged), logged
        with CachingSession(sqlite_engine) as s:  # rolled back
            assert s.scalar(select(Player.name).where(Player.id == 1)) == "p1"
    finally:
        cache.disconnect_sync()


async def test_connect_required_false_starts_while_redis_is_down(
    redis_server: RedisProcess, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    redis_server.kill()
    cache = YokedCache(CacheConfig(redis_url=redis_server.url, key_prefix="boot", **FAST))
    try:
        with pytest.raises(BackendUnavailable, match="did not answer PING"):
            await cache.connect()
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            assert await cache.connect(required=False) is cache
        assert not cache.connected
        logged = _warnings(caplog)
        assert len(logged) == 1 and "starting anyway (required=False)" in logged[0], logged
        from yokedcache_sa import get_default_cache

        assert get_default_cache() is cache
        redis_server.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not await cache.set("k", 1):
            await asyncio.sleep(0.05)
        assert await cache.get("k") == 1  # caching started once Redis answered
    finally:
        await cache.disconnect()


def test_commits_during_an_outage_warn_once_not_per_commit(
    redis_server: RedisProcess, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(CacheConfig(redis_url=redis_server.url, key_prefix="wout", **FAST))
    try:
        cache.connect_sync()
        redis_server.kill()
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            for i in range(10):
                with CachingSession(sqlite_engine, cache=cache) as s:
                    s.execute(update(Player).where(Player.id == 1).values(name=f"n{i}"))
                    s.commit()  # committed; invalidation pending
                assert _read(sqlite_engine, cache)[0] == f"n{i}"  # never stale here
        logged = _warnings(caplog)
        assert len([m for m in logged if "is unreachable" in m]) == 1, logged
        assert len([m for m in logged if "circuit breaker opened" in m]) == 1, logged
        assert len([m for m in logged if "not delivered" in m]) == 1, logged
        assert len(logged) == 3, logged
        redis_server.start()  # deliver, so no retry timer keeps this cache alive
        deadline = time.monotonic() + 10
        while cache.flush_pending_sync() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        cache.disconnect_sync()


def test_a_dropped_cache_is_freed_at_once() -> None:
    """No reference cycle through the breaker callbacks: the weak registry of
    get_default_cache forgets a cache as soon as its last reference goes."""
    import gc
    import weakref

    gc.disable()
    try:
        cache = YokedCache(CacheConfig(memory_shared=False))
        cache.connect_sync()
        ref = weakref.ref(cache)
        del cache
        assert ref() is None
    finally:
        gc.enable()
