"""strict_invalidation=True: a commit the cache cannot be told about is refused, and a commit
whose post-commit bump is lost still outdates every old entry (it was bumped before COMMIT)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, event, insert, select, update
from sqlalchemy.orm import Session

from tests.reliability.relkit import RedisProcess, SQLCounter, User, eventually, read_user
from yokedcache_sa import InvalidationError, YokedCache
from yokedcache_sa.orm import CachingSession

OLD = (2, "bob", 1)
NEW = (2, "bob-2", 2)


def read(engine: Engine, cache: YokedCache) -> tuple[int, str, int]:
    with CachingSession(engine, cache=cache) as s:
        return read_user(s, 2)


def in_db(engine: Engine) -> tuple[tuple[int, str, int], bool]:
    """User 2 and whether user 6 exists, read by a plain session."""
    with Session(engine) as s:
        u = s.get(User, 2)
        assert u is not None
        return (u.id, u.name, u.version), s.get(User, 6) is not None


def change(s: Session) -> None:
    s.execute(update(User).where(User.id == 2).values(name="bob-2", version=User.version + 1))
    s.execute(insert(User).values(id=6, name="fay", version=1))


def test_commit_refused_while_redis_is_down(
    redis_server: RedisProcess, pg: Engine, make_cache: Callable[..., YokedCache]
) -> None:
    cache = make_cache(redis_server.url, strict_invalidation=True)
    redis_server.kill()
    with CachingSession(pg, cache=cache) as s:
        change(s)
        with pytest.raises(InvalidationError, match="strict_invalidation"):
            s.commit()
        assert in_db(pg) == (OLD, False)
    assert in_db(pg) == (OLD, False)


def test_refused_commit_is_not_committed_by_a_later_commit(
    redis_server: RedisProcess, pg: Engine, sql: SQLCounter, make_cache: Callable[..., YokedCache]
) -> None:
    """The refusal must be final: a later commit() of the same session must not commit the
    refused writes without marking their tables (another process would serve old data)."""
    cache = make_cache(redis_server.url, strict_invalidation=True)
    other = make_cache(redis_server.url, strict_invalidation=True)
    redis_server.kill()
    s = CachingSession(pg, cache=cache)
    try:
        change(s)
        with pytest.raises(InvalidationError):
            s.commit()
        redis_server.start()
        assert read(pg, other) == OLD
        assert read(pg, other) == OLD  # cached by the other process
        s.commit()  # the caller retries once the cache answers
    finally:
        s.close()
    row, _exists = in_db(pg)
    for _ in range(3):
        assert read(pg, other) == row, "another process serves data older than the commit"
        assert read(pg, cache) == row


@pytest.fixture
def lose_end_write(redis_server: RedisProcess, pg: Engine) -> Iterator[Callable[[bool], None]]:
    """Arm: the next database COMMIT on *pg* makes Redis refuse writes (OOM) just before it,
    so the marks taken in before_commit land and the post-commit end_write is refused."""
    raw = redis_server.client()
    armed = [False]

    def on_commit(conn: Any) -> None:
        if armed[0]:
            armed[0] = False
            raw.config_set("maxmemory", 1)

    event.listen(pg, "commit", on_commit)

    def arm(on: bool) -> None:
        armed[0] = on

    try:
        yield arm
    finally:
        event.remove(pg, "commit", on_commit)
        raw.config_set("maxmemory", 0)
        raw.close()


def test_lost_post_commit_bump_leaves_old_entries_stale_in_strict_mode(
    redis_server: RedisProcess,
    pg: Engine,
    sql: SQLCounter,
    make_cache: Callable[..., YokedCache],
    lose_end_write: Callable[[bool], None],
) -> None:
    lease = 0.3
    writer = make_cache(redis_server.url, strict_invalidation=True, write_lease=lease)
    other = make_cache(redis_server.url, strict_invalidation=True, write_lease=lease)
    for c in (writer, other):
        read(pg, c)
    with sql.delta() as n:
        assert read(pg, other) == OLD
    assert n[0] == 0

    lose_end_write(True)
    with CachingSession(pg, cache=writer) as s:
        s.execute(update(User).where(User.id == 2).values(name="bob-2", version=User.version + 1))
        s.commit()
    assert writer.get_stats_sync().pending_invalidations >= 1  # end_write was refused
    with redis_server.client() as raw:
        raw.config_set("maxmemory", 0)

    # Wait until the writer's lease has expired: only the pre-COMMIT bump protects now.
    assert eventually(lambda: live_leases(redis_server, other) == 0, timeout=5)
    for _ in range(3):
        assert read(pg, other) == NEW
    assert read(pg, writer) == NEW
    assert eventually(lambda: writer.flush_pending_sync() == 0, timeout=10)
    with sql.delta() as n:
        assert read(pg, other) == NEW
        assert read(pg, writer) == NEW
    assert n[0] == 0


def live_leases(server: RedisProcess, cache: YokedCache) -> int:
    """Write leases ("writer:expiry_ms;" in the m:<tag> fields of the version hash) still live."""
    with server.client() as raw:
        secs, micros = raw.time()
        meta = raw.hgetall("{" + cache.config.key_prefix + "}:meta")
    now_ms = secs * 1000 + micros // 1000
    return sum(
        1
        for field, marks in meta.items()
        if field.startswith(b"m:")
        for mark in marks.decode().split(";")
        if mark and int(mark.rpartition(":")[2]) > now_ms
    )


def test_strict_commit_with_redis_up_commits_and_invalidates(
    redis_server: RedisProcess, pg: Engine, make_cache: Callable[..., YokedCache]
) -> None:
    writer = make_cache(redis_server.url, strict_invalidation=True)
    other = make_cache(redis_server.url, strict_invalidation=True)
    assert read(pg, other) == OLD
    with CachingSession(pg, cache=writer) as s:
        change(s)
        s.commit()
    assert in_db(pg) == (NEW, True)
    assert read(pg, other) == NEW
    with CachingSession(pg, cache=other) as s:
        assert s.execute(select(User.name).where(User.id == 6)).scalar_one() == "fay"
