"""``@cached`` on sync and async functions, on SQLite + memory and PostgreSQL + Redis.

Hits are proven at the database (no statement on the second call) and by counting how often
the function body runs; freshness is proven by committed writes through a CachingSession.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.requests import Request

from tests.integrations.kit import USERS, Item, Stack, User, new_cache
from yokedcache_sa import CachingSession, YokedCache, cached, set_default_cache


class Calls:
    def __init__(self) -> None:
        self.n = 0


def seed(stack: Stack, *names: str) -> None:
    with stack.engine.begin() as conn:
        conn.execute(insert(User), [{"name": n, "active": True} for n in names])


def write_users(stack: Stack, **values: Any) -> None:
    """A committed write to users through a CachingSession (so the cache is invalidated)."""
    with CachingSession(stack.engine, cache=stack.cache) as s:
        s.execute(update(User).values(**values))
        s.commit()


def write_items(stack: Stack) -> None:
    with CachingSession(stack.engine, cache=stack.cache) as s:
        s.add(Item(title="unrelated"))
        s.commit()


def count_users(db: Session | Connection) -> int:
    return int(db.execute(select(func.count()).select_from(User)).scalar_one())


@pytest.fixture(autouse=True)
def _no_explicit_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yokedcache_sa.defaults._explicit_default", None)


# -- hits ---------------------------------------------------------------------------------


def test_sync_hit_runs_no_sql(stack: Stack) -> None:
    seed(stack, "a", "b")
    calls = Calls()

    @cached(cache=stack.cache, ttl=60)
    def names(db: Session) -> list[str]:
        calls.n += 1
        return list(db.scalars(select(User.name).order_by(User.id)))

    with Session(stack.engine) as db:
        m = stack.counter.mark()
        assert names(db) == ["a", "b"]
        assert stack.counter.since(m) >= 1
    with Session(stack.engine) as db:
        m = stack.counter.mark()
        assert names(db) == ["a", "b"]
        assert stack.counter.since(m) == 0
    assert calls.n == 1


async def test_async_hit_runs_no_sql(astack: Stack) -> None:
    stack = astack
    seed(stack, "a", "b", "c")
    calls = Calls()

    @cached(cache=stack.cache, ttl=60)
    async def total(db: AsyncSession, active: bool = True) -> int:
        calls.n += 1
        stmt = select(func.count()).select_from(User).where(User.active.is_(active))
        return int((await db.execute(stmt)).scalar_one())

    async with AsyncSession(stack.aengine) as db:
        m = stack.acounter.mark()
        assert await total(db) == 3
        assert stack.acounter.since(m) >= 1
    async with AsyncSession(stack.aengine) as db:
        m = stack.acounter.mark()
        assert await total(db) == 3
        assert await total(db, active=True) == 3  # defaults are bound: the same key
        assert stack.acounter.since(m) == 0
    assert calls.n == 1
    async with AsyncSession(stack.aengine) as db:
        assert await total(db, False) == 0
    assert calls.n == 2

    # freshness across the async path: a committed write through an async CachingSession
    async with AsyncSession(
        stack.aengine, sync_session_class=CachingSession, cache=stack.cache
    ) as w:
        await w.execute(update(User).where(User.name == "c").values(active=False))
        await w.commit()
    async with AsyncSession(stack.aengine) as db:
        assert await total(db) == 2
        assert await total(db, False) == 1
    assert calls.n == 4


# -- keys ---------------------------------------------------------------------------------


def test_sessions_connections_engines_requests_are_not_in_the_key(stack: Stack) -> None:
    seed(stack, "a")
    calls = Calls()

    @cached(cache=stack.cache)
    def by_session(db: Session, n: int) -> int:
        calls.n += 1
        return count_users(db) + n

    with Session(stack.engine) as s1, CachingSession(stack.engine, cache=stack.cache) as s2:
        assert s1 is not s2
        assert by_session(s1, 1) == 2
        m = stack.counter.mark()
        assert by_session(s2, 1) == 2
        assert stack.counter.since(m) == 0
        assert calls.n == 1
        assert by_session(s2, 2) == 3  # other arguments are in the key
        assert calls.n == 2

    conn_calls = Calls()

    @cached(cache=stack.cache)
    def by_conn(conn: Connection, engine: Engine, request: Request) -> int:
        conn_calls.n += 1
        return count_users(conn)

    def request(path: str) -> Request:
        return Request({"type": "http", "method": "GET", "path": path, "headers": []})

    with stack.engine.connect() as c1:
        assert by_conn(c1, stack.engine, request("/one")) == 1
    other_engine = stack.engine.execution_options(yokedcache_test=True)
    with other_engine.connect() as c2:
        assert by_conn(c2, other_engine, request("/two")) == 1
    assert conn_calls.n == 1

    cache_calls = Calls()

    @cached(cache=stack.cache)
    def takes_a_cache(c: YokedCache, n: int) -> int:
        cache_calls.n += 1
        return n

    extra = new_cache(redis=False)
    assert takes_a_cache(stack.cache, 5) == takes_a_cache(extra, 5) == 5
    assert cache_calls.n == 1


def test_custom_key(stack: Stack) -> None:
    seed(stack, "a", "b")
    calls = Calls()

    @cached(cache=stack.cache, key=lambda db, user_id, trace_id: str(user_id))
    def name_of(db: Session, user_id: int, trace_id: str) -> str | None:
        calls.n += 1
        return db.scalars(select(User.name).where(User.id == user_id)).first()

    with Session(stack.engine) as db:
        first_id = db.scalars(select(User.id).order_by(User.id)).first()
    assert first_id is not None
    with Session(stack.engine) as db:
        assert name_of(db, first_id, "trace-1") == "a"
    with Session(stack.engine) as db:
        assert name_of(db, first_id, "trace-2") == "a"  # trace_id is not in the key
    assert calls.n == 1
    with Session(stack.engine) as db:
        assert name_of(db, first_id + 1, "trace-3") == "b"
    assert calls.n == 2


def test_none_is_cached_distinct_from_a_miss(stack: Stack) -> None:
    calls = Calls()

    @cached(cache=stack.cache)
    def find(db: Session, name: str) -> int | None:
        calls.n += 1
        return db.scalars(select(User.id).where(User.name == name)).first()

    for _ in range(3):
        with Session(stack.engine) as db:
            m = stack.counter.mark()
            assert find(db, "nobody") is None
    assert calls.n == 1
    assert stack.counter.since(m) == 0
    # and None is invalidated like any value
    seed(stack, "nobody")  # a write the cache does not see...
    write_users(stack, active=True)  # ...then one it does
    with Session(stack.engine) as db:
        assert find(db, "nobody") is not None
    assert calls.n == 2


# -- default cache resolution -------------------------------------------------------------


def test_default_cache_resolution(stack: Stack) -> None:
    seed(stack, "a")
    calls = Calls()

    @cached
    def total(db: Session) -> int:
        calls.n += 1
        return count_users(db)

    explicit = new_cache(redis=False)
    session_cache = new_cache(redis=False)
    set_default_cache(explicit)

    # 1. set_default_cache
    with Session(stack.engine) as db:
        assert total(db) == 1
    assert explicit.get_stats_sync().sets == 1

    # 2. the cache of an instrumented session argument wins over the default
    with CachingSession(stack.engine, cache=session_cache) as db:
        assert total(db) == 1
        key = total.cache_policy.make_key((db,), {})
    assert session_cache.lookup_sync(key).hit
    assert explicit.get_stats_sync().sets == 1
    assert calls.n == 2

    # 3. without an explicit default: the most recently connected cache (not the newest)
    set_default_cache(None)
    connected = new_cache(redis=False).connect_sync()
    newer = new_cache(redis=False)
    with Session(stack.engine) as db:
        assert total(db) == 1
    assert connected.get_stats_sync().sets == 1
    assert newer.get_stats_sync().sets == 0
    with Session(stack.engine) as db:
        assert total(db) == 1
    assert connected.get_stats_sync().hits == 1
    assert calls.n == 3

    # an explicit cache= beats everything
    own = new_cache(redis=False)

    @cached(cache=own)
    def total2(db: Session) -> int:
        return count_users(db)

    with CachingSession(stack.engine, cache=session_cache) as db:
        total2(db)
    assert own.get_stats_sync().sets == 1


# -- automatic table dependencies ---------------------------------------------------------


@pytest.mark.parametrize("tags", [(), ("analytics",)], ids=["no-tags", "other-tags"])
def test_plain_session_result_invalidated_by_caching_session_write(
    stack: Stack, tags: tuple[str, ...]
) -> None:
    seed(stack, "a", "b")
    calls = Calls()

    @cached(cache=stack.cache, tags=tags, ttl=600)
    def stats(db: Session) -> dict[str, int]:
        calls.n += 1
        total = count_users(db)
        active = db.scalar(select(func.count()).select_from(User).where(User.active.is_(True)))
        return {"total": total, "active": int(active or 0)}

    def call() -> dict[str, int]:
        with Session(stack.engine) as db:  # a plain session: no caching of its own
            return stats(db)

    assert call() == {"total": 2, "active": 2}
    m = stack.counter.mark()
    assert call() == {"total": 2, "active": 2}
    assert stack.counter.since(m) == 0

    write_items(stack)  # another table: the result stays cached
    m = stack.counter.mark()
    assert call() == {"total": 2, "active": 2}
    assert stack.counter.since(m) == 0
    assert calls.n == 1

    write_users(stack, active=False)  # the table it read
    assert call() == {"total": 2, "active": 0}
    assert calls.n == 2
    if tags:
        stack.cache.invalidate_tags_sync(["analytics"])
        call()
        assert calls.n == 3


def test_raw_sql_result_is_not_stored(stack: Stack) -> None:
    seed(stack, "a")
    calls = Calls()

    @cached(cache=stack.cache)
    def raw_total(db: Session) -> int:
        calls.n += 1
        return int(db.execute(text(f"SELECT count(*) FROM {USERS}")).scalar_one())

    for _ in range(3):
        with Session(stack.engine) as db:
            assert raw_total(db) == 1
    assert calls.n == 3
    assert stack.cache.get_stats_sync().sets == 0

    text_calls = Calls()

    @cached(cache=stack.cache)
    def text_inside(db: Session) -> int:
        text_calls.n += 1
        stmt = select(func.count()).select_from(User).where(text("1 = 1"))
        return int(db.execute(stmt).scalar_one())

    for _ in range(2):
        with Session(stack.engine) as db:
            assert text_inside(db) == 1
    assert text_calls.n == 2


@pytest.mark.parametrize("session_kind", ["plain", "caching"])
def test_read_of_uncommitted_writes_is_not_stored(stack: Stack, session_kind: str) -> None:
    seed(stack, "a")
    calls = Calls()

    @cached(cache=stack.cache)
    def total(db: Session) -> int:
        calls.n += 1
        return count_users(db)

    db = (
        Session(stack.engine)
        if session_kind == "plain"
        else CachingSession(stack.engine, cache=stack.cache)
    )
    with db:
        db.add(User(name="uncommitted"))
        db.flush()
        assert total(db) == 2
        assert total(db) == 2
        assert calls.n == 2, "a result that saw uncommitted rows must not be stored"
        db.rollback()
    with Session(stack.engine) as fresh:
        assert total(fresh) == 1
        assert total(fresh) == 1
    assert calls.n == 3


def test_unserializable_result_is_returned_not_stored_and_logged(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    seed(stack, "a")
    calls = Calls()

    @cached(cache=stack.cache)
    def with_lock(db: Session) -> dict[str, Any]:
        calls.n += 1
        return {"n": count_users(db), "lock": threading.Lock()}

    with caplog.at_level(logging.ERROR, logger="yokedcache_sa"):
        for _ in range(2):
            with Session(stack.engine) as db:
                out = with_lock(db)
            assert out["n"] == 1
    assert calls.n == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "with_lock" in errors[0].getMessage()
    assert "cannot be cached" in errors[0].getMessage()
    assert stack.cache.get_stats_sync().sets == 0


@pytest.mark.parametrize("inner_warm", [False, True], ids=["inner-cold", "inner-warm"])
def test_nested_cached_propagates_table_dependency(stack: Stack, inner_warm: bool) -> None:
    seed(stack, "a")
    inner_calls, outer_calls = Calls(), Calls()

    @cached(cache=stack.cache)
    def inner(db: Session) -> int:
        inner_calls.n += 1
        return count_users(db)

    @cached(cache=stack.cache, tags=["report"])
    def outer(db: Session) -> str:
        outer_calls.n += 1
        # the outer function runs no SQL of its own on users
        titles = list(db.scalars(select(Item.title)))
        return f"{inner(db)} users, {len(titles)} items"

    def call(fn: Any) -> Any:
        with Session(stack.engine) as db:
            return fn(db)

    if inner_warm:
        assert call(inner) == 1
    assert call(outer) == "1 users, 0 items"
    m = stack.counter.mark()
    assert call(outer) == "1 users, 0 items"
    assert stack.counter.since(m) == 0
    assert (inner_calls.n, outer_calls.n) == (1, 1)

    write_users(stack, name="b")
    seed(stack, "c")
    write_users(stack, active=True)
    assert call(outer) == "2 users, 0 items", "the outer result depends on users via inner"
    assert outer_calls.n == 2


@pytest.mark.parametrize("session_kind", ["plain", "caching"])
def test_result_read_in_an_older_snapshot_is_not_stored(stack: Stack, session_kind: str) -> None:
    """A snapshot transaction that began before the call may read data older than the
    cache's snapshot: the result is returned but must not be stored (it would be served as
    fresh to everyone). Regression: through a CachingSession the ORM's private read hid the
    statement from this check and the stale result was stored."""
    seed(stack, "a")
    engine = (
        stack.engine
        if stack.is_sqlite
        else stack.engine.execution_options(isolation_level="REPEATABLE READ")
    )
    calls = Calls()

    @cached(cache=stack.cache)
    def names(db: Session) -> list[str]:
        calls.n += 1
        return list(db.scalars(select(User.name)))

    db = Session(engine) if session_kind == "plain" else CachingSession(engine, cache=stack.cache)
    with db:
        db.execute(select(Item)).all()  # the transaction (and its snapshot) begins here
        write_users(stack, name="b")  # committed by someone else, cache invalidated
        inside = names(db)
        if not stack.is_sqlite:  # pysqlite holds no snapshot across SELECTs
            assert inside == ["a"], "the transaction sees its own snapshot"
    with Session(stack.engine) as fresh:
        assert names(fresh) == ["b"], "a result from the old snapshot was stored"
    assert calls.n == 2
