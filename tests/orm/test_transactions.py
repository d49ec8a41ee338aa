"""Transactions: rollback releases, read-your-writes, savepoints, failed commits, listener
errors, ``await session.commit()`` on a sync session, and AsyncSession (asyncpg, aiosqlite,
aiomysql)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from sqlalchemy import create_engine, event, select, text, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import QueuePool

from tests.orm.conftest import async_url
from tests.orm.ormkit import (
    Env,
    OrderLine,
    P,
    SQLCounter,
    Tag,
    User,
    enable_sqlite_fks,
    plain,
)
from yokedcache_sa.orm import CachingSession, instrument_session, state_of

pytestmark = pytest.mark.drivers("sync", "async")

Read = Callable[[Session], Any]


def user_names(s: Session) -> Any:
    return s.scalars(select(User.name).order_by(User.id)).all()


def tag_names(s: Session) -> Any:
    return s.scalars(select(Tag.name).order_by(Tag.id)).all()


ALL = ["alice", "bob", "carol", "dave"]
TAGS = ["red", "blue"]


def assert_clean(s: Session) -> None:
    """No marks, no written tables, no writer left in the session's cache state."""
    st = state_of(s)
    assert st is not None
    assert st.marked == set()
    assert st.written == set()
    assert st.writer is None


# -- rollback ----------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["orm-flush", "text", "bulk"])
def test_rollback_releases(env: Env, how: str) -> None:
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        if how == "orm-flush":
            s.get(User, 1).name = "rolled"
            s.flush()
        elif how == "text":
            s.execute(text(f"UPDATE {P}users SET name = 'rolled' WHERE id = 1"))
        else:
            s.execute(update(User).where(User.id == 1).values(name="rolled"))
        assert env.queried(lambda: user_names(s))[0] == "rolled"
        s.rollback()
        assert_clean(s)
        # nothing was committed: the cached entries are still valid, in this session too
        assert env.cached(lambda: user_names(s)) == ALL
        assert env.cached(lambda: tag_names(s)) == TAGS
    assert env.hit(user_names) == ALL
    assert env.hit(tag_names) == TAGS


@pytest.mark.parametrize("how", ["caching", "instrumented", "instrumented-used"])
def test_rollback_after_a_hit_expires_as_a_plain_session(env: Env, how: str) -> None:
    # A plain Session's read autobegins; rollback() then expires what it loaded. A hit needs
    # no connection and begins no transaction: rollback() must still expire what it served,
    # or the objects keep what the cached read filled in (eager-loaded relationships).
    eager = select(User).options(selectinload(User.addresses)).where(User.id == 1)
    env.warm(lambda s: s.scalars(eager).all())
    s: Session
    if how == "caching":
        s = env.Session()
    else:
        s = Session(env.engine)
        if how == "instrumented-used":
            s.scalars(select(Tag)).all()
            s.rollback()
        instrument_session(s, env.cache)
    with s:
        held = env.cached(lambda: s.scalars(eager).all())
        assert "addresses" not in sa_inspect(held[0]).unloaded
        s.rollback()
        state = sa_inspect(held[0])
        assert state.expired
        assert "addresses" in state.unloaded
        # refreshed from the database on access, as a plain Session's object would be
        assert env.queried(lambda: held[0].name) == "alice"


def test_commit_events_come_in_a_plain_sessions_order(env: Env) -> None:
    """``before_commit`` listeners run before the commit flushes pending changes, as with a
    plain Session (the cache's own listener used to flush first, ahead of the user's), and
    the commit still invalidates what that flush wrote."""
    env.warm(user_names)
    names = ("before_commit", "before_flush", "after_flush_postexec", "after_commit")
    orders = []
    for factory, new_name in ((env.Plain, "plain"), (env.Session, "renamed")):
        seen: list[str] = []
        with factory() as s:
            for name in names:
                event.listen(s, name, lambda *a, _n=name, _seen=seen: _seen.append(_n))
            s.get(User, 1).name = new_name
            s.commit()
        orders.append(seen)
    assert orders[1] == orders[0] == list(names)
    assert env.fresh_read(user_names) == ["renamed", *ALL[1:]]


def test_a_hit_on_a_session_without_autobegin_raises_as_a_plain_session(env: Env) -> None:
    eager = select(User).where(User.id == 1)
    env.warm(lambda s: s.scalars(eager).all())
    for s in (Session(env.engine, autobegin=False), env.Session(autobegin=False)):
        with pytest.raises(InvalidRequestError, match="Autobegin is disabled"):
            s.scalars(eager).all()
        s.close()


def test_close_without_commit_releases(env: Env) -> None:
    env.warm(user_names)
    s = env.Session()
    s.execute(text(f"UPDATE {P}users SET name = 'gone' WHERE id = 2"))
    s.close()
    assert_clean(s)
    assert env.hit(user_names) == ALL


def test_exception_in_session_begin_block_releases(env: Env) -> None:
    env.warm(user_names)
    with pytest.raises(RuntimeError), env.Session.begin() as s:
        s.get(User, 1).name = "boom"
        s.flush()
        raise RuntimeError("abort")
    assert env.hit(user_names) == ALL


def test_session_begin_block_commit_invalidates(env: Env) -> None:
    env.warm(user_names)
    with env.Session.begin() as s:  # commits through SessionTransaction, not Session.commit
        s.get(User, 2).name = "bea"
    assert env.fresh_read(user_names)[1] == "bea"
    assert env.hit(user_names)[1] == "bea"


# -- read-your-writes ----------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_read_your_writes_and_nothing_uncommitted_is_stored(env: Env, outcome: str) -> None:
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        alice = s.get(User, 1)
        alice.name = "mine"
        s.flush()
        # the written table bypasses the cache and shows the session's own data …
        assert env.queried(lambda: user_names(s))[0] == "mine"
        assert env.queried(lambda: user_names(s))[0] == "mine"  # … every time (not stored)
        # … other tables still hit
        assert env.cached(lambda: tag_names(s)) == TAGS
        # another session never sees the uncommitted data (served from the cache or not)
        for _ in range(2):
            assert env.truth(user_names) == ALL
            with env.Session() as other:
                assert user_names(other) == ALL
        assert env.hit(tag_names) == TAGS
        if outcome == "commit":
            s.commit()
        else:
            s.rollback()
        assert_clean(s)
    expected = ["mine", *ALL[1:]] if outcome == "commit" else ALL
    with env.Session() as s:
        got, n = env.sql.run(lambda: user_names(s))
    assert got == expected
    if outcome == "commit":
        assert n >= 1
    assert env.hit(user_names) == expected


def test_instrumented_plain_session(env: Env) -> None:
    env.warm(user_names)
    with instrument_session(env.Plain(), env.cache) as s:
        assert env.cached(lambda: user_names(s)) == ALL
        s.get(User, 3).name = "cara"
        s.flush()
        assert env.queried(lambda: user_names(s))[2] == "cara"
        s.commit()
    assert env.fresh_read(user_names)[2] == "cara"


@pytest.mark.drivers("sync")  # asyncio.run inside: a loop of its own
@pytest.mark.parametrize("used_before", [False, True], ids=["fresh", "already-used"])
def test_instrumented_plain_session_paths(env: Env, used_before: bool) -> None:
    """instrument_session leaves the session's class and methods alone (issue 11): fresh or
    already used, it caches, invalidates on commit, and commit() returns None."""
    env.warm(user_names)
    s = env.Plain()
    plain_class = type(s)
    if used_before:
        s.execute(select(User.id).limit(1)).all()  # materializes the session's dispatch
        s.rollback()
    with instrument_session(s, env.cache) as s:
        assert type(s) is plain_class and "commit" not in s.__dict__
        assert env.cached(lambda: user_names(s)) == ALL
        s.get(User, 2).name = "bo"
        assert s.commit() is None  # type: ignore[func-returns-value]  # the point of the test
    assert env.fresh_read(user_names)[1] == "bo"
    assert env.hit(user_names)[1] == "bo"


# -- savepoints ----------------------------------------------------------------------------------


def begin_outer(s: Session) -> None:
    """Open the outer transaction with a write that changes nothing read here.

    pysqlite (default transaction control) only sends BEGIN before DML, so a SAVEPOINT sent
    first opens the transaction itself and its RELEASE commits it; a write first avoids that.
    """
    s.execute(update(OrderLine).where(OrderLine.order_id == -1).values(qty=0))


def test_savepoint_rollback_keeps_outer_pending_invalidation(env: Env) -> None:
    """sqlacache lost the outer transaction's invalidations when a savepoint rolled back."""
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        s.get(User, 1).name = "outer"
        s.flush()
        sp = s.begin_nested()
        s.get(Tag, 1).name = "inner"
        s.flush()
        sp.rollback()
        # the outer write is still pending: reads of users still bypass
        assert env.queried(lambda: user_names(s))[0] == "outer"
        s.commit()
        assert_clean(s)
    assert env.fresh_read(user_names)[0] == "outer"
    assert env.truth(tag_names) == TAGS
    with env.Session() as s:
        assert tag_names(s) == TAGS


def test_savepoint_rollback_of_the_only_write(env: Env) -> None:
    env.warm(user_names)
    with env.Session() as s:
        env.cached(lambda: user_names(s))
        begin_outer(s)
        with s.begin_nested():
            s.execute(update(User).where(User.id == 2).values(name="never"))
            assert env.queried(lambda: user_names(s))[1] == "never"
            s.get_nested_transaction().rollback()
        s.commit()
    assert env.truth(user_names) == ALL
    with env.Session() as s:
        assert user_names(s) == ALL


def test_savepoint_rollback_keeps_cached_reads_of_what_only_it_wrote(env: Env) -> None:
    """A table written only inside a rolled-back SAVEPOINT keeps its cached reads through the
    outer COMMIT where the database undid those writes and nothing else can have moved it
    (SQLite); on PostgreSQL its per-transaction counters still count the undone rows and on
    MariaDB a table may not be transactional, so there it is invalidated (safe)."""
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        begin_outer(s)
        with s.begin_nested():
            s.execute(update(User).where(User.id == 2).values(name="never"))
            assert env.queried(lambda: user_names(s))[1] == "never"
            s.get_nested_transaction().rollback()
        # the undone write no longer bypasses this transaction's reads of users
        assert plain(user_names(s)) == ALL
        s.get(Tag, 1).name = "crimson"
        s.commit()
        assert_clean(s)
    assert env.truth(user_names) == ALL
    if env.db.engine.dialect.name == "sqlite":
        assert env.hit(user_names) == ALL
    else:
        assert env.fresh_read(user_names) == ALL
    assert env.fresh_read(tag_names)[0] == "crimson"


def test_inner_savepoint_rollback_keeps_the_outer_savepoints_writes(env: Env) -> None:
    """Nested SAVEPOINTs: rolling back the inner one forgets only what it alone wrote; what
    the released outer one wrote is invalidated at COMMIT."""
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        begin_outer(s)
        with s.begin_nested():
            s.get(User, 4).name = "davy"
            s.flush()
            with s.begin_nested():
                s.execute(update(User).where(User.id == 1).values(name="never"))
                s.execute(update(Tag).where(Tag.id == 2).values(name="never"))
                s.get_nested_transaction().rollback()
        s.commit()
    assert env.truth(user_names)[:1] == ["alice"]
    assert env.fresh_read(user_names)[3] == "davy"
    if env.db.engine.dialect.name == "sqlite":
        assert env.hit(tag_names) == TAGS
    else:
        assert env.fresh_read(tag_names) == TAGS


def test_released_savepoint_write_invalidates_at_outer_commit(env: Env) -> None:
    """Releasing a SAVEPOINT is not a commit: nothing may be finished before the outer one."""
    env.warm(user_names)
    env.warm(tag_names)
    with env.Session() as s:
        env.cached(lambda: tag_names(s))
        begin_outer(s)
        with s.begin_nested():
            s.get(User, 4).name = "davy"
        # still uncommitted: another session reads (and may cache) the old name
        with env.Session() as other:
            assert user_names(other)[3] == "dave"
        s.commit()
    assert env.fresh_read(user_names)[3] == "davy"
    assert env.hit(user_names)[3] == "davy"
    assert env.hit(tag_names) == TAGS


def test_released_savepoint_keeps_read_your_writes(env: Env) -> None:
    env.warm(user_names)
    with env.Session() as s:
        begin_outer(s)
        with s.begin_nested():
            s.get(User, 4).name = "davy"
        assert env.queried(lambda: user_names(s))[3] == "davy"
        assert state_of(s).written
        s.rollback()
    assert env.hit(user_names) == ALL


def test_savepoint_write_then_outer_rollback(env: Env) -> None:
    env.warm(user_names)
    with env.Session() as s:
        begin_outer(s)
        with s.begin_nested():
            s.get(User, 4).name = "davy"
        s.rollback()
        assert_clean(s)
    assert env.hit(user_names) == ALL


# -- a COMMIT that fails -------------------------------------------------------------------------


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_failed_commit_leaves_no_state(env: Env) -> None:
    """A DEFERRABLE INITIALLY DEFERRED FK is checked at COMMIT, which then fails."""
    child = f"{P}deferred_child"
    with env.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE IF EXISTS {child}"))
        conn.execute(
            text(
                f"CREATE TABLE {child} (id INTEGER PRIMARY KEY, user_id INTEGER "
                f"REFERENCES {P}users(id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    try:
        env.warm(user_names)
        env.warm(tag_names)
        s = env.Session()
        s.get(User, 1).name = "never"
        s.execute(text(f"INSERT INTO {child} (id, user_id) VALUES (1, 999)"))
        s.flush()
        with pytest.raises(IntegrityError):
            s.commit()
        assert_clean(s)
        s.close()
        # nothing was committed; the cache works normally afterwards (no marks left behind)
        assert env.truth(user_names) == ALL
        with env.Session() as s2:
            assert user_names(s2) == ALL
        assert env.hit(user_names) == ALL
        assert env.hit(tag_names) == TAGS
        # and a later commit still invalidates
        with env.Session() as s3:
            s3.get(User, 1).name = "later"
            s3.commit()
        assert env.fresh_read(user_names)[0] == "later"
        assert env.hit(user_names)[0] == "later"
    finally:
        with env.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {child}"))


# -- user after_commit listeners that raise --------------------------------------------------------


class _Raising(CachingSession):
    """A session class whose (class-level) after_commit listener runs before ours."""


def _boom(session: Session) -> None:
    raise RuntimeError("user listener failed")


event.listen(_Raising, "after_commit", _boom, insert=True)


@pytest.mark.parametrize("where", ["instance-after-ours", "class-before-ours"])
def test_after_commit_listener_error_leaves_no_marks(env: Env, where: str) -> None:
    env.warm(user_names)
    env.warm(tag_names)
    if where == "class-before-ours":
        factory: Any = sessionmaker(env.engine, class_=_Raising, cache=env.cache)
    else:
        factory = env.Session
    s = factory()
    if where == "instance-after-ours":
        event.listen(s, "after_commit", _boom)
    s.get(User, 1).name = "committed"
    with pytest.raises(RuntimeError, match="user listener"):
        s.commit()
    assert_clean(s)
    s.close()
    # the commit happened: the next session sees it, caches it, and invalidates normally
    assert env.fresh_read(user_names)[0] == "committed"
    assert env.hit(user_names)[0] == "committed"
    assert env.hit(tag_names) == TAGS
    with env.Session() as s2:
        s2.get(User, 1).name = "again"
        s2.commit()
    assert env.fresh_read(user_names)[0] == "again"
    assert env.hit(user_names)[0] == "again"


# -- commit() keeps SQLAlchemy's signature ---------------------------------------------------------


def test_caching_session_commit_returns_none(env: Env) -> None:
    """CachingSession.commit() returns None as Session.commit() does (issue 11); the awaitable
    for ``await db.commit()`` lives in the FastAPI integration (tests/integrations)."""
    env.warm(user_names)
    with env.Session() as s:
        s.get(User, 2).name = "committed"
        assert s.commit() is None
    assert env.fresh_read(user_names)[1] == "committed"
    assert env.hit(user_names)[1] == "committed"


# -- AsyncSession ----------------------------------------------------------------------------------


@dataclass
class AsyncEnv:
    engine: AsyncEngine
    Session: async_sessionmaker[AsyncSession]
    sql: SQLCounter

    async def cached(self, coro: Any) -> Any:
        before = self.sql.n
        out = await coro
        assert self.sql.n == before, f"expected a hit, got {self.sql.statements[before:]}"
        return out

    async def queried(self, coro: Any) -> Any:
        before = self.sql.n
        out = await coro
        assert self.sql.n > before, "expected the database to be queried"
        return out


@pytest.fixture
async def aenv(env: Env) -> AsyncIterator[AsyncEnv]:
    # MariaDB at READ COMMITTED, as the sync engine of the ``db`` fixture (see there)
    iso = "READ COMMITTED" if env.db.name == "mariadb" else None
    engine = create_async_engine(async_url(env.db), isolation_level=iso)
    if env.db.name == "sqlite":
        enable_sqlite_fks(engine.sync_engine)
    counter = SQLCounter(engine.sync_engine)
    try:
        yield AsyncEnv(
            engine,
            async_sessionmaker(engine, sync_session_class=CachingSession, cache=env.cache),
            counter,
        )
    finally:
        counter.remove()
        await engine.dispose()
        await env.cache.disconnect()


async def _names(s: AsyncSession) -> list[str]:
    return list((await s.scalars(select(User.name).order_by(User.id))).all())


ASYNC_DBS = pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"], indirect=True)


@ASYNC_DBS
async def test_async_cached_reads(aenv: AsyncEnv) -> None:
    async def reads(s: AsyncSession) -> Any:
        users = (
            await s.scalars(select(User).options(selectinload(User.addresses)).order_by(User.id))
        ).all()
        got = await s.get(User, 3)
        rows = (await s.execute(select(User.id, User.name).where(User.age > 26))).all()
        return (
            [(u.name, [a.email for a in u.addresses]) for u in users],
            got.name if got else None,
            sorted(tuple(r) for r in rows),
        )

    async with aenv.Session() as s:
        first = await aenv.queried(reads(s))
    async with aenv.Session() as s:
        second = await aenv.cached(reads(s))
    assert first == second
    assert first[0][0] == ("alice", ["a1@x", "a2@x"])
    assert first[1] == "carol"
    assert first[2] == [(1, "alice"), (4, "dave")]


@ASYNC_DBS
async def test_async_commit_invalidates(aenv: AsyncEnv) -> None:
    async with aenv.Session() as s:
        await aenv.queried(_names(s))
        await aenv.queried(s.get(User, 1))
    async with aenv.Session() as s:
        assert await aenv.cached(_names(s)) == ALL
        u = await aenv.cached(s.get(User, 1))
        u.name = "async"
        await s.flush()
        assert (await aenv.queried(_names(s)))[0] == "async"  # read-your-writes
        await s.commit()
    async with aenv.Session() as s:
        assert (await aenv.queried(_names(s)))[0] == "async"
    async with aenv.Session() as s:
        assert (await aenv.cached(_names(s)))[0] == "async"


@ASYNC_DBS
async def test_async_text_write_and_rollback(aenv: AsyncEnv) -> None:
    async with aenv.Session() as s:
        await aenv.queried(_names(s))
    async with aenv.Session() as s:
        await s.execute(text(f"UPDATE {P}users SET name = 'rb' WHERE id = 2"))
        assert (await aenv.queried(_names(s)))[1] == "rb"
        await s.rollback()
        assert await aenv.cached(_names(s)) == ALL
    async with aenv.Session() as s:
        await s.execute(text(f"UPDATE {P}users SET name = 'tx' WHERE id = 2"))
        await s.commit()
    async with aenv.Session() as s:
        assert (await aenv.queried(_names(s)))[1] == "tx"
    async with aenv.Session() as s:
        assert (await aenv.cached(_names(s)))[1] == "tx"


@ASYNC_DBS
async def test_async_and_sync_sessions_share_the_cache(env: Env, aenv: AsyncEnv) -> None:
    async with aenv.Session() as s:
        await aenv.queried(_names(s))
    with env.Session() as ss:  # a sync write: the async readers see it
        ss.get(User, 4).name = "sync"
        ss.commit()
    async with aenv.Session() as s:
        assert (await aenv.queried(_names(s)))[3] == "sync"
    async with aenv.Session() as s:
        assert (await aenv.cached(_names(s)))[3] == "sync"


@pytest.mark.drivers("sync")  # builds its own sync engine
def test_unclosed_sessions_do_not_pin_pooled_connections(env: Env) -> None:
    # A handler that forgets close() (or raises before it): a plain Session's connection goes
    # back to the pool when the session is dropped. The first miss of each statement shape
    # is remembered process-wide; what it remembers must not hold that miss's connection.
    engine = create_engine(env.db.url, pool_size=2, max_overflow=0, pool_timeout=2)
    if env.db.name == "sqlite":
        enable_sqlite_fks(engine)
    shapes = [select(User).where(User.id > n).order_by(User.id) for n in range(4)]
    try:
        for stmt in shapes:
            s = CachingSession(engine, cache=env.cache)
            assert s.scalars(stmt).all()
            del s
            gc.collect()
        assert cast(QueuePool, engine.pool).checkedout() == 0
    finally:
        engine.dispose()
