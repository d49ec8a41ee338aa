"""What the ``YokedCache`` core adds over its backend, on each backend (the ``cache`` fixture):
TTL rules and defaults, statistics, signed entries, values that cannot be cached, and
invalidations that could not be delivered."""

from __future__ import annotations

from typing import Any

import pytest

from tests.backends.kit import FakeClock, Unserializable
from yokedcache_sa import (
    BackendUnavailable,
    CacheConfig,
    InvalidationError,
    SerializationError,
    YokedCache,
    codec,
)
from yokedcache_sa.backends.memory import MemoryBackend
from yokedcache_sa.keys import normalize_key as _normalize_key

# -- TTL ------------------------------------------------------------------------------------


def test_default_ttl_comes_from_config() -> None:
    clock = FakeClock()
    c = YokedCache(CacheConfig(default_ttl=10), backend=MemoryBackend(clock=clock))
    assert c.set_sync("k", 1)
    clock.advance(9.9)
    assert c.get_sync("k") == 1
    clock.advance(0.2)
    assert c.get_sync("k") is None


@pytest.mark.parametrize("ttl", [0, -1, -0.5])
def test_non_positive_ttl_is_rejected(cache: YokedCache, ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        cache.set_sync("k", 1, ttl=ttl)
    assert cache.get_sync("k") is None


# -- stats ----------------------------------------------------------------------------------


def test_stats(cache: YokedCache) -> None:
    s = cache.get_stats_sync()
    assert (s.hits, s.misses, s.sets, s.invalidations, s.errors, s.key_count) == (0, 0, 0, 0, 0, 0)
    assert s.hit_rate == 0.0
    assert s.backend == cache.backend.name
    assert s.healthy is True
    cache.set_sync("a", 1, tags=["t"])
    cache.set_sync("b", 2)
    cache.get_sync("a")
    cache.get_sync("a")
    cache.get_sync("b")
    cache.get_sync("nope")
    cache.invalidate_tags_sync(["t"])
    cache.get_sync("a")  # stale now: a miss
    s = cache.get_stats_sync()
    assert (s.hits, s.misses, s.sets, s.invalidations, s.errors) == (3, 2, 2, 1, 0)
    assert s.hit_rate == pytest.approx(0.6)
    assert 0.0 <= s.hit_rate <= 1.0
    assert s.key_count == 2  # the stale entry still occupies a key until it expires
    assert s.pending_invalidations == 0
    cache.reset_stats()
    s = cache.get_stats_sync()
    assert (s.hits, s.misses, s.sets, s.invalidations, s.errors) == (0, 0, 0, 0, 0)
    assert s.key_count == 2


# -- signed entries -------------------------------------------------------------------------


def test_entry_signed_with_another_secret_is_a_miss(cache: YokedCache) -> None:
    cfg = cache.config.model_dump()
    cfg["redis_url"] = cache.config.redis_url.get_secret_value() if cache.config.redis_url else None
    one = YokedCache(CacheConfig(**{**cfg, "signing_secret": "one"}), backend=cache.backend)
    two = YokedCache(CacheConfig(**{**cfg, "signing_secret": "two"}), backend=cache.backend)
    unsigned = YokedCache(CacheConfig(**{**cfg, "signing_secret": None}), backend=cache.backend)
    assert one.set_sync("k", "signed by one")
    assert one.get_sync("k") == "signed by one"
    assert two.get_sync("k") is None
    assert two.get_stats_sync().errors == 1
    assert unsigned.get_sync("k") is None
    assert unsigned.get_stats_sync().errors == 1
    assert unsigned.set_sync("u", "plain")
    assert one.get_sync("u") is None
    assert one.get_stats_sync().errors == 1


def test_forged_entry_claiming_a_later_seq_is_rejected_when_signed(cache: YokedCache) -> None:
    cfg = cache.config.model_dump()
    cfg["redis_url"] = cache.config.redis_url.get_secret_value() if cache.config.redis_url else None
    signed = YokedCache(CacheConfig(**{**cfg, "signing_secret": "k3y"}), backend=cache.backend)
    assert signed.set_sync("k", "v", tags=["t"])
    signed.invalidate_tags_sync(["t"])
    assert signed.get_sync("k") is None
    snap = signed.observe_sync()
    assert snap is not None
    # an attacker with store access writes an entry claiming the current seq, without the key
    forged = codec.encode(
        "forged",
        key=signed._key_scope + _normalize_key("k"),
        epoch=snap.epoch,
        seq=snap.seq,
        tags=("*", "t"),
        created=0.0,
        secret=b"guess",
        max_bytes=1 << 20,
    )
    cache.backend.store(_normalize_key("k"), forged, None, ("*", "t"), snap.epoch, snap.seq)
    assert signed.get_sync("k") is None
    assert signed.get_stats_sync().errors == 1


# -- values that cannot be cached -----------------------------------------------------------


def test_unserializable_value_raises_and_stores_nothing(cache: YokedCache) -> None:
    with pytest.raises(SerializationError, match="Unserializable"):
        cache.set_sync("k", {"ok": 1, "bad": Unserializable()})
    assert cache.get_sync("k") is None
    s = cache.get_stats_sync()
    assert (s.key_count, s.sets) == (0, 0)


def test_oversized_value_raises_and_stores_nothing(cache: YokedCache) -> None:
    cfg = cache.config.model_dump()
    cfg["redis_url"] = cache.config.redis_url.get_secret_value() if cache.config.redis_url else None
    small = YokedCache(CacheConfig(**{**cfg, "max_value_bytes": 256}), backend=cache.backend)
    assert small.set_sync("fits", "x" * 10)
    with pytest.raises(SerializationError, match="max_value_bytes"):
        small.set_sync("big", "x" * 1000)
    assert small.get_sync("big") is None
    assert small.get_stats_sync().key_count == 1
    # a large entry written by a cache with a bigger limit is not read by the small one
    assert cache.set_sync("big", "x" * 1000)
    assert small.get_sync("big") is None
    assert small.get_stats_sync().errors == 1


async def test_unserializable_value_async(cache: YokedCache) -> None:
    with pytest.raises(SerializationError):
        await cache.set("k", Unserializable())
    assert await cache.get("k") is None


# -- undelivered invalidations --------------------------------------------------------------


class FlakyBackend:
    """Delegates to a real backend; end_write fails while ``down`` is set."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def end_write(self, tags: Any, writer: str) -> int:
        if self.down:
            raise BackendUnavailable("simulated outage")
        return int(self.inner.end_write(tags, writer))


def test_undelivered_invalidation_bypasses_the_tag_until_delivered(cache: YokedCache) -> None:
    flaky = FlakyBackend(cache.backend)
    c = YokedCache(cache.config, backend=flaky)
    assert c.set_sync("a", 1, tags=["t"])
    assert c.set_sync("b", 2, tags=["u"])
    flaky.down = True
    with pytest.raises(InvalidationError, match="bypassed"):
        c.invalidate_tags_sync(["t"])
    assert c.get_stats_sync().pending_invalidations == 1
    assert c.get_sync("a") is None  # bypassed here even though the store still holds it
    assert c.get_sync("b") == 2
    assert c.set_sync("a", 10, tags=["t"]) is False
    flaky.down = False
    assert c.flush_pending_sync() == 0
    assert c.get_stats_sync().pending_invalidations == 0
    assert c.get_sync("a") is None  # delivered: stale for every process now
    other = YokedCache(cache.config, backend=cache.backend)
    assert other.get_sync("a") is None
    assert c.set_sync("a", 10, tags=["t"])
    assert c.get_sync("a") == 10
