"""Memory-backend behaviour beyond the contract: the LRU bounds by entries and by bytes, and
exact byte accounting."""

from __future__ import annotations

from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.memory import MemoryBackend


def test_memory_lru_bound_by_entries() -> None:
    c = YokedCache(CacheConfig(memory_max_entries=3))
    for k in "abc":
        assert c.set_sync(k, k)
    assert c.get_sync("a") == "a"  # touch: b is now the least recently used
    assert c.set_sync("d", "d")
    assert c.get_sync("b") is None
    assert [c.get_sync(k) for k in "acd"] == ["a", "c", "d"]
    assert c.get_stats_sync().key_count == 3


def test_memory_lru_bound_by_bytes() -> None:
    c = YokedCache(CacheConfig(memory_max_bytes=1024, memory_max_entries=1000))
    backend = c.backend
    assert isinstance(backend, MemoryBackend)
    blob = "x" * 300
    for k in "abcdef":
        assert c.set_sync(k, blob)
        assert backend.bytes_used <= 1024
        assert c.get_sync(k) == blob  # the newest entry always survives
    stats = c.get_stats_sync()
    assert 1 <= stats.key_count < 6
    assert c.get_sync("a") is None
    assert backend.bytes_used == sum(
        len(item[1]) for item in backend._entries.values()
    )  # accounting stays exact


def test_memory_entry_larger_than_the_byte_budget_does_not_flush_the_cache() -> None:
    c = YokedCache(CacheConfig(memory_max_bytes=1024, memory_max_entries=1000))
    assert c.set_sync("small", "s")
    assert c.set_sync("big", "y" * 5000) is False  # cannot be kept: not stored
    assert c.get_sync("small") == "s"
    assert c.get_sync("big") is None


def test_memory_bytes_accounting_on_overwrite_and_delete() -> None:
    c = YokedCache(CacheConfig())
    backend = c.backend
    assert isinstance(backend, MemoryBackend)
    c.set_sync("k", "x" * 100)
    one = backend.bytes_used
    c.set_sync("k", "x" * 100)
    assert backend.bytes_used == one
    c.delete_sync("k")
    assert backend.bytes_used == 0
