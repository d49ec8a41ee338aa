"""Lost-invalidation paths a review found, each reproduced on the memory backend (no mocks of
a store: the real backend, with one operation slowed or failed on purpose)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from yokedcache_sa import CacheConfig, YokedCache, flows
from yokedcache_sa.drivers import drive_sync
from yokedcache_sa.errors import BackendUnavailable, InvalidationError
from yokedcache_sa.keys import MISSING
from yokedcache_sa.orm import state as orm_state


def _cache(prefix: str) -> YokedCache:
    return YokedCache(CacheConfig(key_prefix=prefix, memory_shared=False))


def test_a_retry_in_flight_keeps_another_writers_pending_invalidation() -> None:
    # W1's end_write fails (pending); its retry is in flight when W2's end_write of the same
    # tag fails too. The retry's success must not drop W2: W2 committed after W1's bump.
    cache = _cache("revpend")
    backend: Any = cache.backend
    real = backend.end_write
    in_retry, go = threading.Event(), threading.Event()
    mode = {"fail": True}

    def end_write(tags: Any, writer: str) -> Any:
        if mode["fail"] or writer == "W2":
            raise BackendUnavailable("flaky")
        out = real(tags, writer)  # W1's bump reaches the store, then the thread pauses
        in_retry.set()
        go.wait(5)
        return out

    backend.end_write = end_write
    with pytest.raises(InvalidationError):
        cache.end_write_sync(["table:x"], "W1")
    mode["fail"] = False
    retry = threading.Thread(target=lambda: drive_sync(flows.retry_pending, cache, True))
    retry.start()
    assert in_retry.wait(5)
    other = _cache("revpend")  # another process on the same store
    other.backend = cache.backend
    snap = other.observe_sync()  # an entry computed from data older than W2's commit
    assert snap is not None
    assert other.store_sync("k", "before W2", tags=["table:x"], snapshot=snap)
    with pytest.raises(InvalidationError):
        cache.end_write_sync(["table:x"], "W2")
    go.set()
    retry.join(5)
    assert cache._pending.blocks(["table:x"]), "W2's invalidation was dropped"
    assert cache.lookup_sync("k").value is MISSING  # bypassed here until delivered
    backend.end_write = real
    cache.flush_pending_sync()
    assert not cache._pending
    assert cache.lookup_sync("k").value is MISSING  # W2's bump outdated the entry


def test_a_cancelled_async_end_write_stays_pending() -> None:
    # The database has committed; the task is cancelled (a request timeout) while the bump
    # is in flight: it must be retried, not forgotten.
    cache = _cache("revcancel")
    backend: Any = cache.backend
    real = backend.aend_write
    started = asyncio.Event()

    async def slow_end_write(tags: Any, writer: str) -> Any:
        started.set()
        await asyncio.sleep(5)
        return await real(tags, writer)

    async def main() -> None:
        backend.aend_write = slow_end_write
        task = asyncio.create_task(cache.end_write(["table:y"], "W"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        backend.aend_write = real

    asyncio.run(main())
    assert cache._pending.blocks(["table:y"])
    assert cache.flush_pending_sync() == 0
    assert not cache._pending


def test_a_transaction_keeps_the_cache_it_marked_with(monkeypatch: pytest.MonkeyPatch) -> None:
    # A session without cache= resolves the default cache; if the default changes between
    # the marks (before COMMIT) and the bump (after it), both must still go to one cache.
    first, second = _cache("revdefa"), _cache("revdefb")
    answers = iter([first, second, second, second])
    monkeypatch.setattr(orm_state, "get_session_default_cache", lambda: next(answers))
    st = orm_state.SessionState(None)
    st.note_written(["table:z"])
    st.mark_pending()  # marks on the default of now: first
    assert first.observe_sync() is not None
    st.finish(committed=True)
    assert first.get_stats_sync().invalidations == 1
    assert second.get_stats_sync().invalidations == 0


def test_backoff_of_a_long_outage_stays_bounded() -> None:
    # thousands of failed retries (a long outage, many lookups) must not overflow the delay
    cache = _cache("revbackoff")
    cache._pending.add(["table:w"], "W")
    for _ in range(3000):
        cache._pending.failed(["table:w"])
    _writer, attempts, when = cache._pending.tags["table:w"]
    assert attempts == 3000
    assert when - time.monotonic() <= 5.0
