"""The read-only views of a cache that exporters and operator tools use instead of its
private state: ``resolved()``, ``breaker_open``, ``pending_count``, ``entry_header()``."""

from __future__ import annotations

from typing import Any

import pytest

from yokedcache_sa import CacheConfig, YokedCache, codec
from yokedcache_sa.errors import BackendUnavailable, InvalidationError
from yokedcache_sa.keys import normalize_key


def _cache(prefix: str, **cfg: Any) -> YokedCache:
    return YokedCache(CacheConfig(key_prefix=prefix, memory_shared=False, **cfg))


def test_resolved_follows_a_redirect_and_its_removal() -> None:
    first, second = _cache("viewsa"), _cache("viewsb")
    assert first.resolved() is first
    first.redirect_to(second)
    assert first.resolved() is second
    first.redirect_to(None)
    assert first.resolved() is first


def test_breaker_open_reports_failed_reads() -> None:
    cache = _cache("viewsbrk", circuit_breaker_threshold=2, circuit_breaker_timeout=60)
    backend: Any = cache.backend

    def fetch(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("down on purpose")

    backend.fetch = fetch
    assert cache.breaker_open is False
    cache.get_sync("k")
    assert cache.breaker_open is False
    cache.get_sync("k")
    assert cache.breaker_open is True


def test_pending_count_is_the_undelivered_invalidations() -> None:
    cache = _cache("viewspend")
    backend: Any = cache.backend
    real = backend.end_write

    def end_write(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("down on purpose")

    backend.end_write = end_write
    assert cache.pending_count == 0
    with pytest.raises(InvalidationError):
        cache.invalidate_tags_sync(["a", "b"])
    assert cache.pending_count == 2  # one per tag, as CacheStats.pending_invalidations
    backend.end_write = real
    cache.flush_pending_sync()
    assert cache.pending_count == 0


def test_entry_header_verifies_an_entry_for_its_key() -> None:
    cache = _cache("viewshdr")
    cache.set_sync("k", {"v": 1}, tags=["t"])
    key = normalize_key("k")
    payload = cache.backend.fetch(key).payload
    assert payload is not None
    header = cache.entry_header(key, payload)
    assert header.tags == cache.backend.fetch(key).tags and "t" in header.tags
    assert codec.unpack_value(payload[header.body_start : header.body_end]) == {"v": 1}
    with pytest.raises(codec.KeyMismatch):
        cache.entry_header(normalize_key("other"), payload)
