"""One Redis-backed YokedCache used from several event loops, threads and sync code at once:
no errors, and a bounded number of connections (no reconnect storm)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future

from tests.reliability.relkit import RedisProcess
from yokedcache_sa import YokedCache


async def async_batch(cache: YokedCache, name: str, n: int) -> int:
    done = 0
    for i in range(n):
        key = f"{name}:{i}"
        assert await cache.set(key, {"i": i, "by": name}, tags=[f"tag:{name}"])
        assert await cache.get(key) == {"i": i, "by": name}
        done += 2
    await cache.invalidate_tags([f"tag:{name}"])
    assert await cache.get(f"{name}:0") is None
    return done + 2


def sync_batch(cache: YokedCache, name: str, n: int) -> int:
    done = 0
    for i in range(n):
        key = f"{name}:{i}"
        assert cache.set_sync(key, i, tags=[f"tag:{name}"])
        assert cache.get_sync(key) == i
        done += 2
    return done


class LoopThread:
    """A worker thread running its own event loop until stopped."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # closes the cache's client of this loop (its closer is an async generator)
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def submit(self, coro: object) -> Future[int]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_loops_threads_and_sync_share_one_cache(
    redis_server: RedisProcess, make_cache: Callable[..., YokedCache]
) -> None:
    cache = make_cache(redis_server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    before = redis_server.connections_received()
    ops = 0
    worker = LoopThread()
    try:
        pending = worker.submit(async_batch(cache, "w1", 20))  # runs while the main thread…
        ops += sync_batch(cache, "s1", 20)  # …uses the sync client
        ops += asyncio.run(async_batch(cache, "r1", 20))
        ops += pending.result(30)
        pending = worker.submit(async_batch(cache, "w2", 10))
        ops += asyncio.run(async_batch(cache, "r2", 10))  # asyncio.run() a second time
        ops += sync_batch(cache, "s2", 10)
        ops += pending.result(30)

        other_thread_ops: list[int] = []

        def in_thread() -> None:  # a thread with a loop of its own, via asyncio.run
            other_thread_ops.append(asyncio.run(async_batch(cache, "t1", 10)))

        th = threading.Thread(target=in_thread)
        th.start()
        ops += sync_batch(cache, "s3", 10)
        th.join(30)
        assert other_thread_ops, "the thread's loop failed"
        ops += other_thread_ops[0]
    finally:
        worker.stop()
    assert ops >= 200
    stats = cache.get_stats_sync()
    assert stats.errors == 0
    assert stats.hits >= 100
    new_connections = redis_server.connections_received() - before
    assert new_connections <= 20, f"{new_connections} connections for {ops} operations"
