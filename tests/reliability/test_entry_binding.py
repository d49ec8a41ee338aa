"""An entry is bound to its key: its raw bytes copied under another key (straight in the
store) are a counted miss, never served — on memory and Redis, with and without a secret."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.keys import normalize_key as _normalize_key


def keys_of(cache: YokedCache) -> set[str]:
    """The (normalized) entry keys in the store."""
    b: Any = cache.backend
    if b.name == "memory":
        return set(b._entries)
    n = len(b.entry_key(""))
    return {k.decode()[n:] for k in b.client.scan_iter(match=b.entry_key("*"))}


def copy_raw(cache: YokedCache, src: str, dst: str) -> None:
    """Copy the stored bytes of entry *src* over entry *dst*, bypassing the library."""
    b: Any = cache.backend
    if b.name == "memory":
        b._entries[dst] = b._entries[src]
    else:
        raw = b.client.get(b.entry_key(src))
        assert raw is not None
        b.client.set(b.entry_key(dst), raw)


def with_secret(cache: YokedCache, secret: str | None) -> YokedCache:
    cfg = cache.config
    url = cfg.redis_url.get_secret_value() if cfg.redis_url else None
    return YokedCache(
        CacheConfig(redis_url=url, key_prefix=cfg.key_prefix, signing_secret=secret),
        backend=cache.backend,
    )


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["plain", "signed"])
def test_entry_copied_under_another_key_is_a_counted_miss(
    cache: YokedCache, secret: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    c = with_secret(cache, secret)
    assert c.set_sync("user:1", {"name": "alice"}, tags=["users"])
    assert c.set_sync("user:2", {"name": "bob"}, tags=["users"])
    copy_raw(c, _normalize_key("user:1"), _normalize_key("user:2"))
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        assert c.get_sync("user:2") is None
        assert c.get_sync("user:2") is None
        assert c.get_sync("user:1") == {"name": "alice"}
    assert c.get_stats_sync().errors == 2
    assert len([r for r in caplog.records if "another key" in r.getMessage()]) == 1  # once
    assert c.set_sync("user:2", {"name": "bob"}, tags=["users"])
    assert c.get_sync("user:2") == {"name": "bob"}


async def test_entry_copied_under_another_key_async(cache: YokedCache) -> None:
    assert await cache.set("a", "alice")
    assert await cache.set("b", "bob")
    copy_raw(cache, _normalize_key("a"), _normalize_key("b"))
    assert await cache.get("b") is None
    assert await cache.get("a") == "alice"


def test_entry_of_a_cache_with_another_prefix_is_refused() -> None:
    # One memory store shared by two key prefixes (on Redis the prefix is part of the stored
    # key): the entry names its prefix, so the other cache refuses it.
    mine = YokedCache(CacheConfig(key_prefix="mine"))
    other = YokedCache(CacheConfig(key_prefix="other"), backend=mine.backend)
    assert other.set_sync("k", "theirs")
    assert mine.get_sync("k") is None
    assert mine.get_stats_sync().errors == 1
