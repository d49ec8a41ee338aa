"""The backend contract, written once and bound to the memory and the Redis backend (the
``cache`` and ``timed`` fixtures), through ``YokedCache``: what a store must do for entries,
TTLs, tags, clear, and the reader/writer protocol (observe, begin/end/release write, store).

The reader/writer interleavings are driven by the order of calls (no threads, no sleeps).
Time is faked on the memory backend; on Redis a short TTL or lease plus a bounded poll is
used instead. Memory-only and Redis-only behaviour lives in ``test_memory.py`` and
``test_redis.py``; what the ``YokedCache`` core adds (stats, signing, serialization, pending
invalidations) in ``tests/core/test_cache.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.backends.kit import Timed, observe_miss
from yokedcache_sa import YokedCache
from yokedcache_sa.cache import MISSING
from yokedcache_sa.keys import normalize_key as _normalize_key
from yokedcache_sa.tags import tag_id

# -- get / set / delete ---------------------------------------------------------------------


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


# -- TTL ------------------------------------------------------------------------------------


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


# -- tags -----------------------------------------------------------------------------------


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


# -- clear and health -----------------------------------------------------------------------


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


def test_health(cache: YokedCache) -> None:
    assert cache.health_sync() is True
    assert cache.connect_sync() is cache
    assert cache.connected


# -- reader/writer interleavings ------------------------------------------------------------


def test_observe_store_read(cache: YokedCache) -> None:
    snap = observe_miss(cache, "k")
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v"


def test_observe_begin_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = observe_miss(cache, "k")
    cache.begin_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit


def test_observe_begin_end_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = observe_miss(cache, "k")
    cache.begin_write_sync(["t"], w)
    cache.end_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit
    # a reader that observes after the write may store
    snap2 = observe_miss(cache, "k")
    assert cache.store_sync("k", "v2", tags=["t"], snapshot=snap2)
    assert cache.lookup_sync("k").value == "v2"


def test_observe_begin_release_store_accepted(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = observe_miss(cache, "k")
    cache.begin_write_sync(["t"], w)
    cache.release_sync(["t"], w)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v"


def test_begin_observe_store_refused(cache: YokedCache) -> None:
    w = cache.new_writer()
    cache.begin_write_sync(["t"], w)
    snap = observe_miss(cache, "k")
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.end_write_sync(["t"], w)
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    assert not cache.lookup_sync("k").hit


def test_end_write_on_another_tag_does_not_disturb(cache: YokedCache) -> None:
    w = cache.new_writer()
    snap = observe_miss(cache, "k")
    cache.begin_write_sync(["other"], w)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.end_write_sync(["other"], w)
    assert cache.lookup_sync("k").value == "v"


def test_stored_entry_not_served_while_being_written(cache: YokedCache) -> None:
    snap = observe_miss(cache, "k")
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
        assert cache.store_sync(k, k, tags=[t], snapshot=observe_miss(cache, k))
    w = cache.new_writer()
    cache.begin_write_sync(["a", "b"], w)
    assert [cache.lookup_sync(k).hit for k in ("ka", "kb", "kc")] == [False, False, True]
    cache.end_write_sync(["a", "b"], w)
    assert [cache.lookup_sync(k).hit for k in ("ka", "kb", "kc")] == [False, False, True]


def test_two_writers_one_end_does_not_release_the_other(cache: YokedCache) -> None:
    assert cache.store_sync("k", "v", tags=["t"], snapshot=observe_miss(cache, "k"))
    w1, w2 = cache.new_writer(), cache.new_writer()
    cache.begin_write_sync(["t"], w1)
    cache.begin_write_sync(["t"], w2)
    cache.end_write_sync(["t"], w1)
    snap = observe_miss(cache, "k")
    assert not cache.store_sync("k", "v1", tags=["t"], snapshot=snap)  # w2 still writes
    assert not cache.lookup_sync("k").hit
    cache.end_write_sync(["t"], w2)
    assert not cache.store_sync("k", "v1", tags=["t"], snapshot=snap)  # w2 bumped after snap
    snap = observe_miss(cache, "k")
    assert cache.store_sync("k", "v2", tags=["t"], snapshot=snap)
    assert cache.lookup_sync("k").value == "v2"


def test_two_writers_one_release_does_not_release_the_other(cache: YokedCache) -> None:
    w1, w2 = cache.new_writer(), cache.new_writer()
    cache.begin_write_sync(["t"], w1)
    cache.begin_write_sync(["t"], w2)
    cache.release_sync(["t"], w1)
    cache.release_sync(["t"], w1)  # idempotent, still not w2's
    snap = observe_miss(cache, "k")
    assert not cache.store_sync("k", "v", tags=["t"], snapshot=snap)
    cache.release_sync(["t"], w2)
    assert cache.store_sync("k", "v", tags=["t"], snapshot=snap)


def test_same_writer_begins_twice(cache: YokedCache) -> None:
    w = cache.new_writer()
    cache.begin_write_sync(["t"], w)
    cache.begin_write_sync(["t"], w)  # re-entrant: one mark per writer
    cache.release_sync(["t"], w)
    snap = observe_miss(cache, "k")
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
            snap = observe_miss(cache, "k")
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
    assert c.store_sync("k", "v", tags=["t"], snapshot=observe_miss(c, "k"))
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


# -- entries the backend cannot decode ------------------------------------------------------


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


# -- async twins ----------------------------------------------------------------------------


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
