"""A commit whose invalidation cannot be delivered (docs/consistency.md, row 18).

The writing process must never serve the entry its own commit outdated (the tags are pending
there: bypassed and retried), and once the bump is delivered — or the version record is gone
with a restarted Redis — neither it nor another process serves pre-commit data. A second
``YokedCache`` on the same prefix stands for another process.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from tests.reliability.relkit import (
    RedisProcess,
    SQLCounter,
    User,
    eventually,
    read_user,
    read_users,
)
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession

OLD = (2, "bob", 1)
NEW = (2, "bob-2", 2)


def read(engine: Engine, cache: YokedCache) -> tuple[int, str, int]:
    with CachingSession(engine, cache=cache) as s:
        return read_user(s, 2)


def read_all(engine: Engine, cache: YokedCache) -> list[tuple[int, str, int]]:
    with CachingSession(engine, cache=cache) as s:
        return read_users(s)


def truth(engine: Engine) -> list[tuple[int, str, int]]:
    with Session(engine) as s:
        return read_users(s)


def write(engine: Engine, cache: YokedCache) -> None:
    with CachingSession(engine, cache=cache) as s:
        s.execute(update(User).where(User.id == 2).values(name="bob-2", version=User.version + 1))
        s.commit()  # never raises for the cache outside strict mode


def warm(engine: Engine, sql: SQLCounter, *caches: YokedCache) -> None:
    """Cache user 2 and the user list, and check every cache serves them without SQL."""
    for c in caches:
        read(engine, c)
        read_all(engine, c)
    for c in caches:
        with sql.delta() as n:
            assert read(engine, c) == OLD
            assert read_all(engine, c)[1] == OLD
        assert n[0] == 0


def no_stale_reads(engine: Engine, sql: SQLCounter, *caches: YokedCache) -> None:
    """Repeated reads in every cache see the committed data, and caching works again."""
    want = truth(engine)
    assert want[1] == NEW
    for _ in range(5):
        for c in caches:
            assert read(engine, c) == NEW
            assert read_all(engine, c) == want
    for c in caches:
        with sql.delta() as n:
            assert read(engine, c) == NEW
            assert read_all(engine, c) == want
        assert n[0] == 0, "the cache did not resume"


def test_killed_during_commit_restarted_empty(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    writer = make_cache(redis_server.url)
    other = make_cache(redis_server.url)  # same prefix: another process
    warm(pg, sql, writer, other)

    redis_server.kill()
    write(pg, writer)
    assert writer.get_stats_sync().pending_invalidations >= 1
    assert read(pg, writer) == NEW

    redis_server.start()  # no data: the version record is lost, a new epoch starts
    assert read(pg, other) == NEW
    assert read(pg, writer) == NEW  # pending tags are still bypassed here
    assert eventually(lambda: writer.flush_pending_sync() == 0, timeout=10)
    assert writer.get_stats_sync().pending_invalidations == 0
    no_stale_reads(pg, sql, writer, other)


def test_paused_during_commit_resumed_with_data(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    writer = make_cache(redis_server.url)
    other = make_cache(redis_server.url)
    warm(pg, sql, writer, other)

    redis_server.pause()
    try:
        write(pg, writer)  # begin_write and end_write both time out
        assert writer.get_stats_sync().pending_invalidations >= 1
        assert read(pg, writer) == NEW
    finally:
        redis_server.resume()

    # Redis still holds the old entries. The writer's reads bypass its pending tags, and its
    # lookups deliver the bump (after the breaker lets them through).
    def delivered() -> bool:
        assert read(pg, writer) == NEW
        assert read_all(pg, writer) == truth(pg)
        return writer.get_stats_sync().pending_invalidations == 0

    assert eventually(delivered, timeout=10)
    no_stale_reads(pg, sql, writer, other)


def test_writes_refused_by_live_redis_are_bypassed_by_the_writer(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    """Redis answers reads but refuses writes (OOM): the writer's invalidation is not delivered
    while the old entries are still in Redis and fresh by their versions."""
    writer = make_cache(redis_server.url)
    other = make_cache(redis_server.url)
    warm(pg, sql, writer, other)
    raw = redis_server.client()
    prefix = writer.config.key_prefix
    raw.config_set("maxmemory", 1)  # noeviction: every write command is refused
    try:
        write(pg, writer)
        assert writer.get_stats_sync().pending_invalidations >= 1
        assert raw.keys(f"{prefix}:e:*"), "the old entries are still stored"
        for _ in range(5):
            with sql.delta() as n:
                assert read(pg, writer) == NEW
                assert read_all(pg, writer) == truth(pg)
            assert n[0] >= 2  # from the database: the pending tags are bypassed
        assert writer.health_sync() is True  # Redis answers; it only refuses writes
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()
    assert eventually(lambda: writer.flush_pending_sync() == 0, timeout=10)
    assert writer.get_stats_sync().pending_invalidations == 0
    no_stale_reads(pg, sql, writer, other)


def test_flush_pending_delivers_to_a_restarted_redis_before_any_read(
    redis_server: RedisProcess, pg: Engine, make_cache: Callable[..., YokedCache]
) -> None:
    writer = make_cache(redis_server.url)
    redis_server.kill()
    write(pg, writer)
    write(pg, writer)  # two commits, same tables: one pending entry per tag
    pending = writer.get_stats_sync().pending_invalidations
    assert pending >= 1
    redis_server.start()
    assert eventually(lambda: writer.flush_pending_sync() == 0, timeout=10)
    s = writer.get_stats_sync()
    assert s.pending_invalidations == 0 and s.invalidations >= 1


def test_a_quiet_writer_delivers_pending_invalidations_in_the_background(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    """The writer makes no further cache call after its failed invalidation: the background
    retry alone must deliver it, so the other process stops serving the old entry."""
    writer = make_cache(redis_server.url)
    other = make_cache(redis_server.url)
    warm(pg, sql, writer, other)
    raw = redis_server.client()
    raw.config_set("maxmemory", 1)  # every write refused: the bump cannot be delivered
    try:
        write(pg, writer)
        assert writer.get_stats_sync().pending_invalidations >= 1
        assert read(pg, other) == OLD  # the documented window for other processes
    finally:
        raw.config_set("maxmemory", 0)
        raw.close()
    # no call on `writer` from here on
    assert eventually(lambda: not writer._pending, timeout=15)
    assert read(pg, other) == NEW
    no_stale_reads(pg, sql, writer, other)
