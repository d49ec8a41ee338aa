"""The cache's flows and drivers, with a scripted fake backend: no Redis, no database.

A flow is driven by hand (send results, throw failures) to pin its policy, and through both
drivers against :class:`Scripted` to pin what the drivers add: the circuit breaker, error
mapping and the fallback of each operation.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from yokedcache_sa import CacheConfig, YokedCache, defaults, flows
from yokedcache_sa.backends.base import Fetched, StoreOutcome
from yokedcache_sa.breaker import BreakerOpen
from yokedcache_sa.drivers import drive_async, drive_sync
from yokedcache_sa.errors import (
    ArgumentTypeError,
    BackendError,
    BackendUnavailable,
    InvalidationError,
    NoDefaultCache,
    UsageError,
)
from yokedcache_sa.keys import MISSING, normalize_key
from yokedcache_sa.ops import END_WRITE, FETCH, OBSERVE, STORE
from yokedcache_sa.stampede import flight_flow
from yokedcache_sa.state import ComputeLock, Lookup
from yokedcache_sa.steps import run_steps_async, run_steps_sync
from yokedcache_sa.tags import Snapshot

SNAP = Snapshot("ep", 7)


class Scripted:
    """A backend whose every op answers from ``answers`` (a value, an exception to raise, or
    a callable of the op's arguments); sync and async twins share the script and the log."""

    name = "scripted"

    def __init__(self, **answers: Any) -> None:
        self.prefix = "scripted" + uuid.uuid4().hex[:8]
        self.answers: dict[str, Any] = {
            "fetch": Fetched(None, SNAP),
            "observe": SNAP,
            "store": StoreOutcome.STORED,
            "end_write": 8,
            "acquire": True,
            "locked": False,
            "key_count": 3,
            **answers,
        }
        self.calls: list[str] = []

    def _answer(self, op: str, args: tuple[Any, ...]) -> Any:
        self.calls.append(op)
        a = self.answers.get(op)
        if isinstance(a, BaseException):
            raise a
        if callable(a) and not isinstance(a, type):
            return a(*args)
        return a

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name.startswith("a") and name[1:] in _OPS:
            op = name[1:]

            async def async_op(*args: Any) -> Any:
                return self._answer(op, args)

            return async_op
        if name in _OPS:
            return lambda *args: self._answer(name, args)
        raise AttributeError(name)


_OPS = {
    "fetch",
    "observe",
    "store",
    "begin_write",
    "end_write",
    "release",
    "acquire",
    "unlock",
    "locked",
    "delete_many",
    "clear",
    "key_count",
    "ping",
    "close",
}


def make(threshold: int = 3, strict: bool = False, **answers: Any) -> tuple[YokedCache, Scripted]:
    backend = Scripted(**answers)
    cfg = CacheConfig(
        circuit_breaker_threshold=threshold,
        circuit_breaker_timeout=60.0,
        strict_invalidation=strict,
    )
    return YokedCache(cfg, backend=backend), backend


Drive = Callable[..., Any]


def _sync(flow_fn: Any, cache: YokedCache, *args: Any) -> Any:
    return drive_sync(flow_fn, cache, *args)


def _async(flow_fn: Any, cache: YokedCache, *args: Any) -> Any:
    return asyncio.run(drive_async(flow_fn, cache, *args))


@pytest.fixture(params=["sync", "async"])
def drive(request: pytest.FixtureRequest) -> Drive:
    return _sync if request.param == "sync" else _async


# -- flows by hand ------------------------------------------------------------------------


def test_lookup_flow_yields_one_fetch_and_decides_a_miss() -> None:
    cache, _ = make()
    flow = flows.lookup(cache, "k:x", None, False)
    op, args = next(flow)
    assert op is FETCH
    assert args[:2] == ("k:x", None)
    with pytest.raises(StopIteration) as stop:
        flow.send(Fetched(None, SNAP))
    look = stop.value.value
    assert look == Lookup(MISSING, SNAP, ())
    assert cache.get_stats_sync().misses == 1


def test_lookup_flow_turns_a_thrown_failure_into_an_unstorable_miss() -> None:
    cache, _ = make()
    flow = flows.lookup(cache, "k:x", None, True)
    next(flow)
    with pytest.raises(StopIteration) as stop:
        flow.throw(BackendUnavailable("down"))
    assert stop.value.value == Lookup(MISSING, None)
    stats = cache.get_stats_sync()
    assert (stats.misses, stats.errors) == (1, 1)


def test_end_write_flow_raises_and_keeps_the_tags_pending() -> None:
    cache, _ = make()
    flow = flows.end_write(cache, ["table:users"], "w1")
    assert next(flow)[0] is END_WRITE
    with pytest.raises(InvalidationError, match="not delivered") as info:
        flow.throw(BackendUnavailable("down"))
    assert isinstance(info.value.__cause__, BackendUnavailable)
    assert "table:users" in cache._pending.tags


def test_set_flow_observes_then_stores_under_the_normalized_key() -> None:
    cache, _ = make()
    flow = flows.set_value(cache, "user:1", {"a": 1}, 30, ["t"])
    assert next(flow) == (OBSERVE, ())
    op, args = flow.send(SNAP)
    assert op is STORE
    assert args[0] == normalize_key("user:1")
    assert args[2] == 30.0
    assert (args[4], args[5]) == (SNAP.epoch, SNAP.seq)
    with pytest.raises(StopIteration) as stop:
        flow.send(StoreOutcome.STALE)
    assert stop.value.value is False


# -- both drivers -------------------------------------------------------------------------


def test_a_hit_decodes_what_a_store_wrote(drive: Drive) -> None:
    stored: dict[str, Any] = {}

    def store(key: str, payload: bytes, ttl: Any, tags: Any, *rest: Any) -> StoreOutcome:
        stored["fetched"] = Fetched(payload, SNAP, tuple(tags))
        return StoreOutcome.STORED

    cache, backend = make(store=store, fetch=lambda *a: stored["fetched"])
    assert drive(flows.set_value, cache, "k", [1, 2], 60, ["t"]) is True
    assert drive(flows.get, cache, "k", "default") == [1, 2]
    assert backend.calls == ["observe", "store", "fetch"]
    stats = cache.get_stats_sync()
    assert (stats.hits, stats.sets) == (1, 1)


def test_read_failures_open_the_breaker_then_calls_stop(drive: Drive) -> None:
    cache, backend = make(threshold=2, fetch=BackendUnavailable("down"))
    for _ in range(2):
        assert drive(flows.get, cache, "k", "dflt") == "dflt"
    assert backend.calls == ["fetch", "fetch"]
    assert cache._breaker.is_open
    assert cache._breaker.failures == 2
    backend.answers["fetch"] = Fetched(None, SNAP)  # it recovers, but the breaker is open
    assert drive(flows.get, cache, "k", "dflt") == "dflt"
    assert backend.calls == ["fetch", "fetch"], "an open breaker must not call the store"
    assert cache._breaker.failures == 2, "a refusal is not a new failure"
    assert drive(flows.health, cache) is False


def test_a_probe_that_succeeds_closes_the_breaker(drive: Drive) -> None:
    cache, backend = make(threshold=1, fetch=BackendUnavailable("down"))
    drive(flows.get, cache, "k", None)
    assert cache._breaker.is_open
    cache._breaker.open_until = 0.0  # the timeout has passed: one probe goes through
    backend.answers["fetch"] = Fetched(None, SNAP)
    drive(flows.get, cache, "k", None)
    assert backend.calls == ["fetch", "fetch"]
    assert not cache._breaker.is_open


def test_an_oserror_leaking_from_a_backend_is_mapped_and_counted(drive: Drive) -> None:
    cache, _ = make(threshold=5, fetch=ConnectionResetError("reset by peer"))
    look = drive(flows.lookup, cache, "k:x", None, False)
    assert look == Lookup(MISSING, None)
    assert cache._breaker.failures == 1
    assert cache.get_stats_sync().errors == 1


def test_a_refusal_by_the_store_is_not_a_breaker_failure(drive: Drive) -> None:
    cache, _ = make(store=BackendError("NOSCRIPT or OOM"))
    assert drive(flows.set_value, cache, "k", 1) is False
    assert cache._breaker.failures == 0
    assert cache.get_stats_sync().errors == 1


def test_other_exceptions_are_not_swallowed(drive: Drive) -> None:
    cache, _ = make(fetch=RuntimeError("a bug in the backend"))
    with pytest.raises(RuntimeError, match="a bug"):
        drive(flows.lookup, cache, "k:x", None, False)


def test_undelivered_invalidation_blocks_then_is_retried_by_a_lookup(drive: Drive) -> None:
    writes: list[tuple[Any, ...]] = []
    cache, backend = make(end_write=BackendUnavailable("down"))
    with pytest.raises(InvalidationError):
        drive(flows.end_write, cache, ["table:a"], "w1")
    assert len(cache._pending) == 1
    # a tag with an undelivered invalidation is never stored by this process
    assert drive(flows.set_value, cache, "k", 1, 60, ["table:a"]) is False

    def end_write(ids: Any, w: str) -> int:
        writes.append((tuple(ids), w))
        return 9

    backend.answers["end_write"] = end_write
    assert drive(flows.retry_pending, cache, True) == 0
    assert writes == [(("table:a",), "w1")], "the retry carries the original writer"
    assert cache.get_stats_sync().invalidations == 1


def test_strict_begin_write_failure_refuses_the_commit(drive: Drive) -> None:
    cache, _ = make(strict=True, begin_write=BackendUnavailable("down"))
    with pytest.raises(InvalidationError, match="strict_invalidation"):
        drive(flows.begin_write, cache, ["table:a"], "w1")


def test_lenient_begin_write_failure_makes_the_tags_pending(drive: Drive) -> None:
    cache, _ = make(begin_write=BackendUnavailable("down"))
    drive(flows.begin_write, cache, ["table:a"], "w1")
    assert "table:a" in cache._pending.tags


def test_unlock_is_tried_even_while_the_breaker_is_open(drive: Drive) -> None:
    cache, backend = make(threshold=1, fetch=BackendUnavailable("down"))
    drive(flows.get, cache, "k", None)
    assert cache._breaker.is_open
    assert drive(flows.try_lock, cache, "k", 1.0) == (True, None), "refused: compute unlocked"
    assert "acquire" not in backend.calls
    drive(flows.unlock, cache, "k", "token")
    assert backend.calls[-1] == "unlock"
    assert not cache._breaker.is_open, "the store answered: the breaker closes"


def test_stats_report_a_sick_store(drive: Drive) -> None:
    cache, _ = make(key_count=BackendUnavailable("down"))
    stats = drive(flows.stats, cache)
    assert (stats.key_count, stats.healthy, stats.backend) == (-1, False, "scripted")


def test_delete_and_clear_raise_for_a_sick_store(drive: Drive) -> None:
    cache, _ = make(delete_many=BackendUnavailable("down"), clear=BackendUnavailable("down"))
    with pytest.raises(BackendUnavailable):
        drive(flows.delete, cache, "k")
    with pytest.raises(BackendUnavailable):
        drive(flows.clear, cache)


def test_connect_and_disconnect_run_one_flow(drive: Drive) -> None:
    cache, backend = make()
    assert drive(flows.connect, cache) is cache
    assert cache.connected
    drive(flows.disconnect, cache)
    assert not cache.connected
    assert backend.calls == ["ping", "close"]


def test_connect_fails_for_an_unreachable_store(drive: Drive) -> None:
    cache, _ = make(ping=BackendUnavailable("down"))
    with pytest.raises(BackendUnavailable):
        drive(flows.connect, cache)
    assert not cache.connected


def test_drivers_follow_a_redirect(drive: Drive) -> None:
    cache, backend = make()
    other, other_backend = make()
    cache.redirect_to(other)
    drive(flows.get, cache, "k", None)
    assert (backend.calls, other_backend.calls) == ([], ["fetch"])


def test_the_sync_fast_path_agrees_with_the_flow() -> None:
    cache, backend = make(fetch=Fetched(None, SNAP, (), 1))
    look = cache.lookup_sync("k:x", lock=True)
    assert look.lock is not None and look.snapshot == SNAP
    backend.answers["fetch"] = BackendUnavailable("down")
    assert cache.lookup_sync("k:x") == Lookup(MISSING, None)
    assert cache._breaker.failures == 1
    cache._pending.add(["table:a"], "w")  # now the flow runs: it retries first
    cache.lookup_sync("k:x")
    assert backend.calls[-2:] == ["end_write", "fetch"]


# -- flight -------------------------------------------------------------------------------


def _miss(lock: ComputeLock | None = None, busy: bool = False) -> Lookup:
    return Lookup(MISSING, SNAP, (), lock, busy)


def test_flight_with_the_lock_computes_then_unlocks_and_releases() -> None:
    lock = ComputeLock("tok")
    flow = flight_flow("k", _miss(lock), on_hit=lambda look: look.value)
    assert next(flow) == ("claim", "k")
    assert flow.send(None) == ("compute", _miss(lock))
    assert flow.send("value") == ("unlock", "k", "tok")
    assert flow.send(None) == ("release", "k")
    with pytest.raises(StopIteration) as stop:
        flow.send(None)
    assert stop.value.value == "value"


def test_flight_cleans_up_when_compute_raises() -> None:
    steps: list[str] = []

    def perform(step: tuple[Any, ...]) -> Any:
        steps.append(step[0])
        if step[0] == "compute":
            raise ValueError("the query failed")
        return None

    with pytest.raises(ValueError, match="the query failed"):
        run_steps_sync(flight_flow("k", _miss(ComputeLock("tok")), lambda lk: None), perform)
    assert steps == ["claim", "compute", "unlock", "release"]


def test_flight_waiter_in_the_same_process_looks_up_again() -> None:
    flow = flight_flow("k", _miss(), on_hit=lambda look: ("hit", look.value))
    next(flow)
    assert flow.send("event") == ("wait", "event", 10.0)
    assert flow.send(None) == ("relookup",)
    with pytest.raises(StopIteration) as stop:
        flow.send(Lookup("v", SNAP))
    assert stop.value.value == ("hit", "v")


def test_async_step_driver_runs_cleanups_on_cancellation() -> None:
    done: list[str] = []

    def flow() -> Iterator[str]:
        try:
            yield "block"
        finally:
            yield "cleanup"

    async def perform(step: str) -> None:
        done.append(step)
        if step == "block":
            await asyncio.sleep(10)

    async def main() -> None:
        task: asyncio.Future[Any] = asyncio.ensure_future(
            run_steps_async(flow(), perform)  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert done == ["block", "cleanup"]


# -- default cache and library errors -------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defaults, "_caches", weakref.WeakSet())
    monkeypatch.setattr(defaults, "_last_connected", None)
    monkeypatch.setattr(defaults, "_last_created", None)
    monkeypatch.setattr(defaults, "_explicit_default", None)


@pytest.mark.usefixtures("fresh_registry")
def test_no_cache_at_all_is_a_library_error() -> None:
    with pytest.raises(NoDefaultCache, match="no YokedCache exists") as info:
        defaults.get_default_cache()
    assert isinstance(info.value, LookupError)


@pytest.mark.usefixtures("fresh_registry")
def test_a_session_default_with_several_caches_is_an_error_that_says_how() -> None:
    a, _ = make()
    assert defaults.get_session_default_cache() is a
    b, _ = make()
    with pytest.raises(NoDefaultCache, match="set_default_cache"):
        defaults.get_session_default_cache()
    defaults.set_default_cache(b)
    assert defaults.get_session_default_cache() is b


@pytest.mark.usefixtures("fresh_registry")
def test_cached_default_rule_explicit_then_connected_then_newest() -> None:
    a, _ = make()
    b, _ = make()
    assert defaults.get_default_cache() is b  # the newest (logged once)
    a.connect_sync()
    assert defaults.get_default_cache() is a
    defaults.set_default_cache(b)
    assert defaults.get_default_cache() is b


def test_library_errors_keep_their_builtin_bases() -> None:
    cache, _ = make()
    with pytest.raises(UsageError, match="ttl") as bad_ttl:
        cache.set_sync("k", 1, ttl=0)
    assert isinstance(bad_ttl.value, ValueError)
    with pytest.raises(ArgumentTypeError) as bad_key:
        cache.get_sync(5)  # type: ignore[arg-type]
    assert isinstance(bad_key.value, TypeError)


def test_breaker_open_is_backend_unavailable() -> None:
    assert issubclass(BreakerOpen, BackendUnavailable)


# -- the Redis backend's command flows (no server) ----------------------------------------


def _redis_backend() -> Any:
    pytest.importorskip("redis")
    from yokedcache_sa.backends.redis import RedisBackend

    return RedisBackend("redis://127.0.0.1:1/0", prefix="p")  # builds no connection


def test_redis_clear_drops_the_versions_then_unlinks_page_by_page() -> None:
    b = _redis_backend()
    flow = b.commands.clear()
    assert next(flow) == ("DEL", "{p}:meta")
    assert flow.send(1)[:2] == ("SCAN", 0)
    assert flow.send((5, [b"p:e:a", b"p:e:b"])) == ("UNLINK", b"p:e:a", b"p:e:b")
    assert flow.send(2)[:2] == ("SCAN", 5)
    with pytest.raises(StopIteration):
        flow.send((0, []))


def test_redis_key_count_sums_the_pages() -> None:
    b = _redis_backend()
    flow = b.commands.key_count()
    next(flow)
    assert flow.send((3, [b"x"] * 4))[:2] == ("SCAN", 3)
    with pytest.raises(StopIteration) as stop:
        flow.send((0, [b"y"]))
    assert stop.value.value == 5


def test_redis_script_is_loaded_once_when_the_server_lacks_it() -> None:
    import redis

    b = _redis_backend()
    flow = b.commands.fetch("k:x", None, 0.0)
    call = next(flow)
    assert call[0] == "EVALSHA"
    assert flow.throw(redis.exceptions.NoScriptError("NOSCRIPT"))[:2] == ("SCRIPT", "LOAD")
    assert flow.send(b"sha") == call
    with pytest.raises(StopIteration) as stop:
        flow.send([None, b"ep", 3, 0, 0, b"", 0])
    assert stop.value.value == Fetched(None, Snapshot("ep", 3, 0, False), (), 0)


def test_the_async_fast_path_agrees_with_the_flow() -> None:
    cache, backend = make(fetch=Fetched(None, SNAP, (), 1))

    async def main() -> None:
        look = await cache.lookup("k:x", lock=True)
        assert look.lock is not None and look.snapshot == SNAP
        backend.answers["fetch"] = BackendUnavailable("down")
        assert await cache.lookup("k:x") == Lookup(MISSING, None)
        assert cache._breaker.failures == 1
        cache._pending.add(["table:a"], "w")  # now the flow runs: it retries first
        await cache.lookup("k:x")

    asyncio.run(main())
    assert backend.calls[-2:] == ["end_write", "fetch"]


def test_an_invalidation_delivered_twice_is_counted_once() -> None:
    cache, _ = make(end_write=BackendUnavailable("down"))
    with pytest.raises(InvalidationError):
        cache.invalidate_tags_sync(["t"])
    cache._pending.tags["t"] = ("w", 0, 0.0)  # due now
    cache.backend.answers["end_write"] = 1  # type: ignore[attr-defined]
    first = flows.retry_pending(cache)
    second = flows.retry_pending(cache)  # a concurrent retry saw the same due tag
    next(first), next(second)
    for flow in (first, second):
        with pytest.raises(StopIteration):
            flow.send(1)
    assert cache.get_stats_sync().invalidations == 1


def test_peek_reports_a_sick_store_and_neither_counts_nor_is_refused(drive: Drive) -> None:
    from yokedcache_sa.peek import peek_flow

    cache, backend = make(threshold=1, fetch=BackendUnavailable("down"))
    state = drive(peek_flow, cache, "q:k")
    assert state.exists is None and "did not answer" in state.reason
    assert cache._breaker.failures == 0, "an operator's look is not a breaker failure"
    drive(flows.get, cache, "k", None)  # a real read opens the breaker
    assert cache._breaker.is_open
    backend.answers["fetch"] = Fetched(None, SNAP)
    assert drive(peek_flow, cache, "q:k").exists is False  # still asks the store
    assert backend.calls == ["fetch", "fetch", "fetch"]
