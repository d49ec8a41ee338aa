"""One backend contract, bound to the memory and the Redis backend through ``YokedCache``.

Every test that takes the ``cache`` fixture runs against both stores. The reader/writer
interleavings are driven by the order of calls (no threads, no sleeps). Time is faked on the
memory backend; on Redis a short TTL or lease plus a bounded poll is used instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis as redis_py

from tests.redis_process import RedisProcess, free_port
from yokedcache_sa import (
    BackendUnavailable,
    CacheConfig,
    InvalidationError,
    SerializationError,
    YokedCache,
    codec,
)
from yokedcache_sa.backends.memory import MemoryBackend
from yokedcache_sa.cache import MISSING, _normalize_key
from yokedcache_sa.tags import tag_id

PW = "hunter2-Secret"


# -- helpers ---------------------------------------------------------------------------------


def is_redis(cache: YokedCache) -> bool:
    return cache.backend.name == "redis"


def raw_client(cache: YokedCache) -> redis_py.Redis:
    return cache.backend.client  # type: ignore[attr-defined,no-any-return]


def raw_entry_key(cache: YokedCache, key: str) -> str:
    """The Redis key of a plain (``get``/``set``) key: layout from backends/redis.py."""
    return f"{cache.config.key_prefix}:e:{_normalize_key(key)}"


def meta_key(cache: YokedCache) -> str:
    return f"{{{cache.config.key_prefix}}}:meta"


def hit(cache: YokedCache, key: str) -> bool:
    return cache.lookup_sync(_normalize_key(key)).hit


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Timed:
    """A cache whose time can pass: a fake clock on memory, real (short) time on Redis."""

    cache: YokedCache
    span: float
    """The TTL / write lease to use: long on the fake clock, short on Redis."""
    clock: FakeClock | None

    def pass_part_of_span(self) -> None:
        if self.clock is not None:
            self.clock.advance(self.span * 0.5)

    def eventually(self, predicate: Callable[[], bool]) -> bool:
        """Let the span elapse, then report whether *predicate* holds."""
        if self.clock is not None:
            self.clock.advance(self.span + 0.001)
            return predicate()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # bounded poll, only on the real store
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


@pytest.fixture
def timed(cache: YokedCache, request: pytest.FixtureRequest) -> Iterator[Timed]:
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


RedisServer = RedisProcess


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server this test owns, on a free port; NOT started yet."""
    server = RedisServer(free_port())
    yield server
    server.stop()


# -- get / set / delete ----------------------------------------------------------------------


def test_set_get_delete(cache: YokedCache) -> None:
    assert cache.get_sync("k") is None
    assert cache.get_sync("k", "dflt") == "dflt"
    assert cache.set_sync("k", {"a": [1, 2]}) is True
    assert cache.get_sync("k") == {"a": [1, 2]}
    assert cache.set_sync("k", "replaced") is True
    assert cache.get_sync("k") == "replaced"
    assert cache.delete_sync("k") is True
    assert cache.delete_sync("k") is False
    assert cache.get_sync("k") is None


def test_none_and_falsy_values_are_cached(cache: YokedCache) -> None:
    falsy: list[Any] = [None, 0, "", [], {}, False]
    for i, v in enumerate(falsy):
        assert cache.set_sync(f"f{i}", v)
        look = cache.lookup_sync(_normalize_key(f"f{i}"))
        assert look.hit and look.value == v and type(look.value) is type(v)
    assert cache.lookup_sync(_normalize_key("absent")).value is MISSING


def test_odd_keys_are_distinct(cache: YokedCache) -> None:
    keys = ["", " ", "a b", "ключ", "x" * 5000, "x" * 4999, "a:b", "a\nb", "a\x00b", "🙂"]
    for i, k in enumerate(keys):
        assert cache.set_sync(k, i)
    assert [cache.get_sync(k) for k in keys] == list(range(len(keys)))


def test_many_types_round_trip_through_the_store(cache: YokedCache) -> None:
    import datetime as dt
    import uuid
    from decimal import Decimal

    value = {
        "when": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        "d": dt.date(2024, 1, 2),
        "price": Decimal("9.99"),
        "id": uuid.UUID(int=42),
        "blob": b"\x00\xff",
        "pair": (1, 2),
        "tags": frozenset({"a"}),
    }
    assert cache.set_sync("rich", value)
    assert cache.get_sync("rich") == value


# -- TTL -------------------------------------------------------------------------------------


def test_ttl_expiry(timed: Timed) -> None:
    c = timed.cache
    assert c.set_sync("short", "v", ttl=timed.span)
    assert c.set_sync("forever", "v", ttl=None)
    assert c.set_sync("long", "v", ttl=timed.span * 1000)
    timed.pass_part_of_span()
    assert c.get_sync("short") == "v"
    assert timed.eventually(lambda: c.get_sync("short") is None)
    assert c.get_sync("forever") == "v"
    assert c.get_sync("long") == "v"
    assert c.get_stats_sync().key_count == 2


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


# -- memory bounds (LRU by entries and by bytes) ---------------------------------------------


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


# -- tags ------------------------------------------------------------------------------------


def test_tag_invalidation(cache: YokedCache) -> None:
    cache.set_sync("a", 1, tags=["t1"])
    cache.set_sync("b", 2, tags=["t2"])
    cache.set_sync("c", 3, tags=["t1", "t2"])
    cache.set_sync("d", 4)
    cache.invalidate_tags_sync(["t1"])
    assert [cache.get_sync(k) for k in "abcd"] == [None, 2, None, 4]
    # a value stored after the invalidation is served again
    assert cache.set_sync("a", 10, tags=["t1"])
    assert cache.get_sync("a") == 10
    cache.invalidate_tags_sync(["unrelated"])
    assert cache.get_sync("a") == 10
    cache.invalidate_all_sync()
    assert [cache.get_sync(k) for k in "abcd"] == [None] * 4


def test_odd_tags_invalidate(cache: YokedCache) -> None:
    odd = ["", "é", "x" * 10_000, "a\nb", "table:x"]
    for i, t in enumerate(odd):
        cache.set_sync(f"k{i}", i, tags=[t])
    for i, t in enumerate(odd):
        assert cache.get_sync(f"k{i}") == i
        cache.invalidate_tags_sync([t])
        assert cache.get_sync(f"k{i}") is None
        assert all(cache.get_sync(f"k{j}") == j for j in range(i + 1, len(odd)))


def test_invalidate_tables(cache: YokedCache) -> None:
    cache.set_sync("users", "u", tags=["table:users"])
    cache.set_sync("qualified", "q", tags=["table:public.users"])
    cache.set_sync("orders", "o", tags=["table:orders"])
    assert cache.get_sync("users") == "u"
    cache.invalidate_tables_sync(["users"])
    assert cache.get_sync("users") is None
    assert cache.get_sync("qualified") == "q"
    assert cache.get_sync("orders") == "o"
    cache.invalidate_tables_sync(["public.users"])
    assert cache.get_sync("qualified") is None
    stats = cache.get_stats_sync()
    assert stats.table_invalidations == {"table:users": 1, "table:public.users": 1}
    assert stats.table_hits == {"table:users": 1, "table:public.users": 1, "table:orders": 1}


# -- clear -----------------------------------------------------------------------------------


def test_clear_removes_own_entries(cache: YokedCache) -> None:
    for i in range(20):
        cache.set_sync(f"k{i}", i, tags=["t"])
    assert cache.get_stats_sync().key_count == 20
    snap = cache.observe_sync()
    assert snap is not None
    cache.clear_sync()
    assert cache.get_stats_sync().key_count == 0
    assert cache.get_sync("k0") is None
    # a snapshot taken before the clear belongs to the old version space: refused
    assert not cache.store_sync("late", 1, tags=["t"], snapshot=snap)
    assert cache.set_sync("k0", "again")
    assert cache.get_sync("k0") == "again"


def test_clear_leaves_other_apps_keys_alone(redis_cache: YokedCache, redis_url: str) -> None:
    cache = redis_cache
    r = raw_client(cache)
    p = cache.config.key_prefix
    foreign = {
        "other:app:key": b"keep me",
        f"{p}x:e:k:z": b"a longer prefix",
        f"other:{p}:e:k:z": b"prefix inside",
        f"{{{p}x}}:meta": b"another meta",
    }
    other = YokedCache(CacheConfig(redis_url=redis_url, key_prefix=p + "2"))
    try:
        r.mset(foreign)
        assert other.set_sync("mine", "other cache", tags=["t"])
        cache.set_sync("k", 1, tags=["t"])
        cache.clear_sync()
        assert {k: r.get(k) for k in foreign} == foreign
        assert other.get_sync("mine") == "other cache"
        assert other.get_stats_sync().key_count == 1
    finally:
        r.delete(*foreign)
        other.clear_sync()
        other.disconnect_sync()


def test_clear_with_glob_characters_in_prefix(redis_url: str, unique_prefix: str) -> None:
    star = YokedCache(CacheConfig(redis_url=redis_url, key_prefix=unique_prefix + "*"))
    plain = YokedCache(CacheConfig(redis_url=redis_url, key_prefix=unique_prefix + "abc"))
    try:
        plain.set_sync("k", "survives")
        star.set_sync("k", "goes")
        assert star.get_stats_sync().key_count == 1
        star.clear_sync()
        assert plain.get_sync("k") == "survives"
        assert star.get_sync("k") is None
    finally:
        for c in (star, plain):
            c.clear_sync()
            c.disconnect_sync()


# -- stats and health ------------------------------------------------------------------------


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


def test_health(cache: YokedCache) -> None:
    assert cache.health_sync() is True
    assert cache.connect_sync() is cache
    assert cache.connected


# -- reader/writer interleavings -------------------------------------------------------------


def _observe(cache: YokedCache, key: str) -> Any:
    look = cache.lookup_sync(key)
    assert not look.hit
    assert look.snapshot is not None
    return look.snapshot


def test_observe_store_read(cache: YokedCache) -> None:
    snap = _observe(cache, "k")
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v"


def test_observe_begin_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = _observe(cache, "k")
    cache.begin_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit


def test_observe_begin_end_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = _observe(cache, "k")
    cache.begin_write_sync(["t"], w)
    cache.end_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit
    # a reader that observes after the write may store
    snap2 = _observe(cache, "k")
    assert cache.store_sync("k", "v2", tags=["t"], snapshot=snap2)
    assert cache.lookup_sync("k").value == "v2"


def test_observe_begin_release_store_accepted(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = _observe(cache, "k")
    cache.begin_write_sync(["t"], w)
    cache.release_sync(["t"], w)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v"


def test_begin_observe_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    cache.begin_write_sync(["t"], w)
    snap = _observe(cache, "k")
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.end_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit


def test_end_write_on_another_tag_does_not_disturb(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = _observe(cache, "k")
    cache.begin_write_sync(["other"], w)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.end_write_sync(["other"], w)
    assert cache.lookup_sync("k").value == "v"


def test_stored_entry_not_served_while_being_written(cache: YokedCache) -> None:
    snap = _observe(cache, "k")
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    w = cache.new_writer()
    cache.begin_write_sync(["t"], w)
    assert not cache.lookup_sync("k").hit
    cache.release_sync(["t"], w)  # rolled back: the entry is still right
    assert cache.lookup_sync("k").value == "v"
    cache.begin_write_sync(["t"], w)
    cache.end_write_sync(["t"], w)
    assert not cache.lookup_sync("k").hit


def test_multi_tag_write_marks_each_tag(cache: YokedCache) -> None:
    for k, t in [("ka", "a"), ("kb", "b"), ("kc", "c")]:
        assert cache.store_sync(k, k, tags=[t], snapshot=_observe(cache, k))
    w = cache.new_writer()
    cache.begin_write_sync(["a", "b"], w)
    assert [cache.lookup_sync(k).hit for k in ("ka", "kb", "kc")] == [False, False, True]
    cache.end_write_sync(["a", "b"], w)
    assert [cache.lookup_sync(k).hit for k in ("ka", "kb", "kc")] == [False, False, True]


def test_two_writers_one_end_does_not_release_the_other(cache: YokedCache) -> None:
    assert cache.store_sync("k", "v", tags=["t"], snapshot=_observe(cache, "k"))
    w1, w2 = cache.new_writer(), cache.new_writer()
    cache.begin_write_sync(["t"], w1)
    cache.begin_write_sync(["t"], w2)
    cache.end_write_sync(["t"], w1)
    snap = _observe(cache, "k")
    assert not cache.store_sync("k", "v1", tags=["t"], snapshot=snap)  # w2 still writes
    assert not cache.lookup_sync("k").hit
    cache.end_write_sync(["t"], w2)
    assert not cache.store_sync("k", "v1", tags=["t"], snapshot=snap)  # w2 bumped after snap
    snap = _observe(cache, "k")
    assert cache.store_sync("k", "v2", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v2"


def test_two_writers_one_release_does_not_release_the_other(cache: YokedCache) -> None:
    w1, w2 = cache.new_writer(), cache.new_writer()
    cache.begin_write_sync(["t"], w1)
    cache.begin_write_sync(["t"], w2)
    cache.release_sync(["t"], w1)
    cache.release_sync(["t"], w1)  # idempotent, still not w2's
    snap = _observe(cache, "k")
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.release_sync(["t"], w2)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)


def test_same_writer_begins_twice(cache: YokedCache) -> None:
    w = cache.new_writer()
    cache.begin_write_sync(["t"], w)
    cache.begin_write_sync(["t"], w)  # re-entrant: one mark per writer
    cache.release_sync(["t"], w)
    snap = _observe(cache, "k")
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)


def _merges(a: list[str], b: list[str]) -> Iterator[tuple[str, ...]]:
    n = len(a) + len(b)
    for positions in itertools.combinations(range(n), len(a)):
        ia, ib = iter(a), iter(b)
        yield tuple(next(ia) if i in positions else next(ib) for i in range(n))


INTERLEAVINGS = [
    order
    for finish in ("end", "release")
    for order in _merges(["observe", "store", "read"], ["begin", finish])
]


@pytest.mark.parametrize("order", INTERLEAVINGS, ids=lambda o: "-".join(o))
def test_every_interleaving(cache: YokedCache, order: tuple[str, ...]) -> None:
    """Model check: one reader (observe, store, read) against one writer (begin, end|release)."""
    w = cache.new_writer()
    marked = bumped = stored = False
    observed = False
    snap = None
    for step in order:
        if step == "observe":
            snap = _observe(cache, "k")
            observed = True
        elif step == "begin":
            cache.begin_write_sync(["t"], w)
            marked = True
        elif step == "end":
            cache.end_write_sync(["t"], w)
            marked = False
            bumped = bumped or observed
        elif step == "release":
            cache.release_sync(["t"], w)
            marked = False
        elif step == "store":
            assert snap is not None
            stored = cache.store_sync("k", "v", tags=["t"], snapshot=snap)
            assert stored is (not marked and not bumped), step
        elif step == "read":
            assert cache.lookup_sync("k").hit is (stored and not marked and not bumped)
    # after the writer finished, the entry is served iff it was stored and never outdated
    assert cache.lookup_sync("k").hit is (stored and not bumped)


def test_lease_expiry_makes_the_tag_usable_again(timed: Timed) -> None:
    c = timed.cache
    assert c.store_sync("k", "v", tags=["t"], snapshot=_observe(c, "k"))
    c.begin_write_sync(["t"], c.new_writer())  # this writer dies without end/release
    assert not c.lookup_sync("k").hit
    snap = c.lookup_sync("k2").snapshot
    assert snap is not None
    assert not c.store_sync("k2", "v2", tags=["t"], snapshot=snap)
    assert timed.eventually(lambda: c.lookup_sync("k").hit)
    assert c.store_sync("k2", "v2", tags=["t"], snapshot=snap)
    assert c.lookup_sync("k2").value == "v2"


def test_expired_lease_does_not_hide_a_live_one(timed: Timed) -> None:
    c = timed.cache
    dead, live = c.new_writer(), c.new_writer()
    c.begin_write_sync(["t"], dead)

    def can_store() -> bool:
        snap = c.observe_sync()
        assert snap is not None
        return c.store_sync("p", 1, tags=["t"], snapshot=snap)

    assert timed.eventually(can_store)
    c.begin_write_sync(["t"], live)
    snap = c.observe_sync()
    assert snap is not None
    assert not c.store_sync("k", "v", tags=["t"], snapshot=snap)
    c.release_sync(["t"], dead)  # a late release by the dead writer drops only its own mark
    assert not c.store_sync("k", "v", tags=["t"], snapshot=snap)
    c.end_write_sync(["t"], live)
    snap = c.observe_sync()
    assert snap is not None
    assert c.store_sync("k", "v", tags=["t"], snapshot=snap)


# -- lost version state ----------------------------------------------------------------------


def test_lost_meta_hash_makes_old_entries_misses(redis_cache: YokedCache) -> None:
    cache = redis_cache
    r = raw_client(cache)
    for _ in range(5):
        cache.invalidate_tags_sync(["warmup"])
    cache.set_sync("k", "old", tags=["t"])
    snap = cache.observe_sync()
    assert snap is not None and snap.seq == 5
    old_raw = r.get(raw_entry_key(cache, "k"))
    assert old_raw is not None
    assert cache.get_sync("k") == "old"
    r.delete(meta_key(cache))
    assert cache.get_sync("k") is None
    assert not cache.store_sync(_normalize_key("k2"), "late", tags=["t"], snapshot=snap)
    # the hash is recreated and the write sequence grows past the old one
    for _ in range(20):
        cache.invalidate_tags_sync(["other"])
    new = cache.observe_sync()
    assert new is not None and new.seq > snap.seq and new.epoch != snap.epoch
    r.set(raw_entry_key(cache, "k"), old_raw)  # the old entry reappears verbatim
    assert cache.get_sync("k") is None
    assert cache.get_stats_sync().errors == 0  # stale, not corrupt
    assert cache.set_sync("k", "new", tags=["t"])
    assert cache.get_sync("k") == "new"


def test_flushdb_and_restart_never_serve_old_entries(own_redis: RedisServer) -> None:
    own_redis.start()
    c = YokedCache(CacheConfig(redis_url=own_redis.url, key_prefix="own"))
    try:
        for _ in range(3):
            c.invalidate_tags_sync(["warmup"])
        assert c.set_sync("k", "old", tags=["t"])
        r = raw_client(c)
        old_raw = r.get(raw_entry_key(c, "k"))
        old_meta = r.hgetall(meta_key(c))
        assert old_raw is not None and c.get_sync("k") == "old"

        r.flushdb()  # this server is ours alone
        assert c.get_sync("k") is None
        r.set(raw_entry_key(c, "k"), old_raw)  # as if the entry survived and the hash did not
        assert c.get_sync("k") is None
        for _ in range(10):
            c.invalidate_tags_sync(["x"])
        assert c.get_sync("k") is None

        own_redis.stop()
        assert c.get_sync("k") is None  # down: a miss, not an exception
        own_redis.start()
        assert c.get_sync("k") is None
        r = raw_client(c)
        r.set(raw_entry_key(c, "k"), old_raw)
        for _ in range(10):
            c.invalidate_tags_sync(["x"])
        assert c.get_sync("k") is None
        # even an old meta hash restored verbatim could only revive entries of its own epoch,
        # and the first read after the restart already created a new one
        assert r.hget(meta_key(c), "epoch") != old_meta[b"epoch"]
        assert c.set_sync("k", "new", tags=["t"])
        assert c.get_sync("k") == "new"
    finally:
        c.disconnect_sync()


# -- corrupt, forged and truncated entries ---------------------------------------------------


def _valid_framed(cache: YokedCache, key: str) -> tuple[bytes, bytes]:
    """Store a valid entry and return (tags part, payload) of its raw Redis value."""
    assert cache.set_sync(key, {"v": 1}, tags=["t"])
    raw = raw_client(cache).get(raw_entry_key(cache, key))
    assert isinstance(raw, bytes)
    tags, _, payload = raw.partition(b"\x00")
    return tags, payload


def _redis_defects(tags: bytes, payload: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "no-separator": b"garbage without a separator",
        "only-separator": b"\x00",
        "garbage-payload": tags + b"\x00garbage",
        "truncated": tags + b"\x00" + payload[: len(payload) // 2],
        "truncated-by-one": tags + b"\x00" + payload[:-1],
        "foreign-magic": tags + b"\x00XX" + payload[2:],
        "other-version": tags + b"\x00" + payload[:2] + b"\x09" + payload[3:],
        "bit-flip-in-body": tags
        + b"\x00"
        + payload[:-3]
        + bytes([payload[-3] ^ 0x40])
        + payload[-2:],
        "tags-disagree": b"*\x00" + payload,
        "tags-stripped": b"\x00" + payload,
        "pickle": tags + b"\x00\x80\x04\x95pickle",
    }


DEFECTS = list(_redis_defects(b"*\nt", b"YK\x01\x00" + b"\x00" * 30))


@pytest.mark.parametrize("defect", DEFECTS)
def test_corrupt_raw_redis_entries_are_misses_and_counted(
    redis_cache: YokedCache, defect: str
) -> None:
    cache = redis_cache
    tags, payload = _valid_framed(cache, "k")
    raw = _redis_defects(tags, payload)[defect]
    raw_client(cache).set(raw_entry_key(cache, "k"), raw)
    before = cache.get_stats_sync().errors
    assert cache.get_sync("k") is None
    assert cache.lookup_sync(_normalize_key("k")).hit is False
    assert cache.get_stats_sync().errors == before + 2


async def test_corrupt_raw_redis_entry_async(redis_cache: YokedCache) -> None:
    cache = redis_cache
    raw_client(cache).set(raw_entry_key(cache, "k"), b"*\x00YKjunk")
    assert await cache.get("k") is None
    assert (await cache.get_stats()).errors == 1


@pytest.mark.parametrize(
    "payload",
    [b"", b"junk", b"YK", b"YK\x01\x00\xff\xff\xff\xff", b"YK\x02\x00\x00\x00\x00\x01\x90"],
    ids=["empty", "junk", "magic-only", "huge-header", "other-version"],
)
def test_corrupt_payloads_through_the_backend_are_misses(cache: YokedCache, payload: bytes) -> None:
    snap = cache.observe_sync()
    assert snap is not None
    key = _normalize_key("k")
    ids = ("*", tag_id("t"))
    cache.backend.store(key, payload, None, ids, snap.epoch, snap.seq)
    assert cache.get_sync("k") is None
    assert cache.get_stats_sync().errors == 1


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


# -- values that cannot be cached ------------------------------------------------------------


class Unserializable:
    pass


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


# -- an unreachable or wrong server ----------------------------------------------------------


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


def test_unreachable_redis(own_redis: RedisServer) -> None:
    url = f"redis://:{PW}@127.0.0.1:{own_redis.port}/0"
    c = YokedCache(CacheConfig(redis_url=url, key_prefix="down"))
    try:
        with pytest.raises(BackendUnavailable) as info:
            c.connect_sync()
        msg = str(info.value)
        assert PW not in msg
        assert f"127.0.0.1:{own_redis.port}" in msg and "YOKEDCACHE_REDIS_URL" in msg
        assert c.health_sync() is False

        t0 = time.monotonic()
        assert c.get_sync("k") is None
        assert time.monotonic() - t0 < 5  # a hang guard, not a speed test
        assert c.set_sync("k", 1, tags=["t"]) is False
        with pytest.raises(SerializationError):
            c.set_sync("k", Unserializable())
        with pytest.raises(InvalidationError) as inv:
            c.invalidate_tags_sync(["t"])
        assert PW not in str(inv.value)
        s = c.get_stats_sync()
        assert s.pending_invalidations == 1
        assert s.key_count == -1 and s.healthy is False
        assert s.errors >= 3

        own_redis.start()
        # other tags work at once; the pending tag is delivered by the background retry or
        # by flush_pending_sync, whichever comes first (bypassed until then: see
        # test_undelivered_invalidation_bypasses_the_tag_until_delivered)
        assert c.set_sync("k2", 2, tags=["u"]) is True
        assert c.flush_pending_sync() == 0
        assert c.get_stats_sync().invalidations == 1
        assert c.set_sync("k", 1, tags=["t"]) is True
        assert c.get_sync("k") == 1
        assert c.health_sync() is True
        assert c.connect_sync() is c
    finally:
        c.disconnect_sync()


async def test_unreachable_redis_async(own_redis: RedisServer) -> None:
    c = YokedCache(CacheConfig(redis_url=f"redis://:{PW}@127.0.0.1:{own_redis.port}/0"))
    try:
        with pytest.raises(BackendUnavailable) as info:
            await c.connect()
        assert PW not in str(info.value)
        assert await c.get("k") is None
        assert await c.set("k", 1) is False
        with pytest.raises(InvalidationError):
            await c.invalidate_tags(["t"])
        assert (await c.get_stats()).key_count == -1
        assert await c.health() is False
    finally:
        await c.disconnect()


def test_wrong_server_postgres_is_unavailable() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5432), 1).close()
    except OSError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("PostgreSQL at 127.0.0.1:5432 is not reachable; CI=true requires it")
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
    c = YokedCache(CacheConfig(redis_url="redis://127.0.0.1:5432/0"))
    try:
        with pytest.raises(BackendUnavailable, match="5432"):
            c.connect_sync()
        assert c.get_sync("k") is None
        assert c.set_sync("k", 1) is False
    finally:
        c.disconnect_sync()


@contextlib.contextmanager
def _http_server() -> Iterator[int]:
    """A TCP server that answers anything with an HTTP error and hangs up."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield int(srv.getsockname()[1])
    finally:
        stop.set()
        th.join(5)
        srv.close()


def test_wrong_protocol_server_is_unavailable() -> None:
    with _http_server() as port:
        c = YokedCache(CacheConfig(redis_url=f"redis://:{PW}@127.0.0.1:{port}/0"))
        try:
            with pytest.raises(BackendUnavailable) as info:
                c.connect_sync()
            assert PW not in str(info.value)
            assert c.get_sync("k") is None
        finally:
            c.disconnect_sync()


# -- async twins -----------------------------------------------------------------------------


async def test_async_twins(cache: YokedCache) -> None:
    assert await cache.connect() is cache
    assert await cache.set("k", {"a": 1}, tags=["t"])
    assert await cache.get("k") == {"a": 1}
    assert await cache.get("nope", "d") == "d"
    await cache.invalidate_tags(["t"])
    assert await cache.get("k") is None
    assert await cache.set("k2", 2, tags=["table:users"])
    await cache.invalidate_tables(["users"])
    assert await cache.get("k2") is None
    assert await cache.set("k3", 3)
    assert await cache.delete("k3") is True
    assert await cache.delete("k3") is False
    s = await cache.get_stats()
    assert (s.hits, s.sets, s.invalidations, s.errors) == (1, 3, 2, 0)
    assert s.key_count == 2
    assert await cache.health() is True
    await cache.invalidate_all()
    await cache.clear()
    assert (await cache.get_stats()).key_count == 0


async def test_async_interleaving(cache: YokedCache) -> None:
    w = cache.new_writer()
    look = await cache.lookup("k")
    assert look.snapshot is not None and not look.hit
    await cache.begin_write(["t"], w)
    assert not await cache.store("k", "v", tags=["t"], snapshot=look.snapshot)
    await cache.release(["t"], w)
    assert await cache.store("k", "v", tags=["t"], snapshot=look.snapshot)
    assert (await cache.lookup("k")).value == "v"
    await cache.begin_write(["t"], w)
    await cache.end_write(["t"], w)
    assert not (await cache.lookup("k")).hit
    snap = await cache.observe()
    assert snap is not None
    assert await cache.store("k", "v2", tags=["t"], snapshot=snap)


def test_async_from_two_event_loops(cache: YokedCache) -> None:
    async def work(i: int) -> Any:
        await cache.set(f"k{i}", i, tags=["t"])
        assert await cache.health()
        return await cache.get(f"k{i}"), (await cache.get_stats()).key_count

    assert asyncio.run(work(1)) == (1, 1)
    assert asyncio.run(work(2)) == (2, 2)
    cache.invalidate_tags_sync(["t"])
    assert asyncio.run(work(3)) == (3, 3)
    assert cache.get_sync("k1") is None and cache.get_sync("k3") == 3


def test_async_from_a_worker_thread_loop(cache: YokedCache) -> None:
    results: list[Any] = []
    errors: list[BaseException] = []

    async def work() -> None:
        await cache.set("from-thread", "t", tags=["x"])
        results.append(await cache.get("from-thread"))
        await cache.invalidate_tags(["x"])
        results.append(await cache.get("from-thread"))

    def run() -> None:
        try:
            asyncio.run(work())
        except BaseException as exc:  # reported below
            errors.append(exc)

    cache.set_sync("from-main", "m")
    th = threading.Thread(target=run)
    th.start()
    th.join(30)
    assert not errors, errors
    assert results == ["t", None]
    assert cache.get_sync("from-main") == "m"
    assert cache.get_sync("from-thread") is None


async def test_async_alongside_a_worker_thread_loop(cache: YokedCache) -> None:
    """The test's own loop and a thread's loop use one backend at the same time."""
    await cache.set("shared", 1, tags=["s"])
    done: list[Any] = []
    th = threading.Thread(target=lambda: done.append(asyncio.run(cache.get("shared"))))
    th.start()
    th.join(30)
    assert done == [1]
    assert await cache.get("shared") == 1


def test_entry_with_stripped_tag_list_is_not_immune_to_invalidation(
    redis_cache: YokedCache,
) -> None:
    cache = redis_cache
    _tags, payload = _valid_framed(cache, "k")
    raw_client(cache).set(raw_entry_key(cache, "k"), b"\x00" + payload)
    cache.invalidate_tags_sync(["t"])
    assert cache.get_sync("k") is None


def _connected_clients(port: int) -> int:
    with redis_py.Redis(port=port) as r:
        return int(r.info("clients")["connected_clients"]) - 1  # minus this probe


def _settles_at(port: int, expected: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the server notices closed sockets asynchronously
        if _connected_clients(port) == expected:
            return True
        time.sleep(0.02)
    return False


def test_async_connections_close_with_their_loop(own_redis: RedisServer) -> None:
    own_redis.start()
    c = YokedCache(CacheConfig(redis_url=own_redis.url, key_prefix="loops"))

    async def work() -> Any:
        await asyncio.gather(*(c.set(f"k{i}", i) for i in range(5)))
        return await c.get("k1")

    async def work_then_disconnect() -> Any:
        value = await work()
        await c.disconnect()
        return value

    try:
        assert asyncio.run(work()) == 1
        assert _settles_at(own_redis.port, 0)  # the loop ended: its connections closed
        assert asyncio.run(work_then_disconnect()) == 1
        assert _settles_at(own_redis.port, 0)  # disconnect() closed them itself
        assert c.get_sync("k1") == 1
        assert _connected_clients(own_redis.port) == 1
        c.disconnect_sync()
        assert _settles_at(own_redis.port, 0)
    finally:
        c.disconnect_sync()
