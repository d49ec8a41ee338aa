"""How the package installs itself (issue 11): per engine on first sight, never globally at
import; sessions through events only (``listen_on_session``), no class swap, no method set."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import (
    Engine,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from tests.orm.conftest import async_url
from tests.orm.ormkit import DB, Base, Env, User
from yokedcache_sa import YokedCache, cached, explain
from yokedcache_sa.errors import UsageError
from yokedcache_sa.orm import (
    CachingSession,
    engine_events,
    instrument_session,
    listen_on_session,
    state_of,
    watch,
    watch_engine,
)
from yokedcache_sa.orm.bindstate import TAINT_KEY, UNWATCHED, connection_taint

EVENTS = engine_events._ENGINE_EVENTS


def listeners_on(target: Any) -> list[str]:
    """The package's engine listeners registered on *target* itself."""
    return [name for name, fn in EVENTS if event.contains(target, name, fn)]


def fires(engine: Engine) -> list[str]:
    """The package's engine listeners that fire for statements of *engine*."""
    return [
        name
        for name, fn in EVENTS
        if any(f is fn or fn in _wrapped(f) for f in getattr(_dispatch(engine, name), name))
    ]


def _wrapped(f: Any) -> list[Any]:
    """SQLAlchemy wraps before_cursor_execute listeners (to return the statement)."""
    return [c.cell_contents for c in getattr(f, "__closure__", None) or ()]


def _dispatch(engine: Engine, name: str) -> Any:
    return engine.dialect.dispatch if name == "handle_error" else engine.dispatch  # DialectEvents


def test_importing_the_package_adds_no_engine_listener() -> None:
    code = (
        "import yokedcache_sa, yokedcache_sa.orm, yokedcache_sa.functions\n"
        "import yokedcache_sa.integrations.fastapi\n"
        "from sqlalchemy import Engine, create_engine, event\n"
        "from yokedcache_sa.orm import engine_events as ee, watch as w\n"
        "e = create_engine('sqlite://')\n"
        "names = list(Engine.dispatch._event_names) + ['connect', 'checkout']\n"
        "fns = [fn for _, fn in (*ee._ENGINE_EVENTS, *ee._INNODB_EVENTS)] + [w._on_connect,\n"
        "       w._on_checkout_sqlite]\n"
        "bad = [(n, f.__name__) for n in names for f in fns\n"
        "       for t in (Engine, e) if event.contains(t, n, f)]\n"
        "assert not bad, bad\n"
        "assert not e._has_events and not Engine._has_events\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_plain_engine_never_used_by_a_caching_session_has_none(tmp_path: Any) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    with Session(engine) as s:
        s.execute(text("SELECT 1")).all()
    assert listeners_on(engine) == [] and fires(engine) == []
    assert not watch.is_watched(engine)


def test_an_engine_used_by_a_caching_session_has_them_once(
    tmp_path: Any, cache: YokedCache
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'used.db'}")
    Base.metadata.create_all(engine)
    for _ in range(3):
        with CachingSession(engine, cache=cache) as s:
            s.scalars(select(User)).all()
    watch_engine(engine)
    assert listeners_on(engine) == [name for name, _ in EVENTS]
    assert all(
        len([f for f in getattr(_dispatch(engine, n), n) if f is fn or fn in _wrapped(f)]) == 1
        for n, fn in EVENTS
    )


def test_a_session_sees_its_engine_at_construction(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'seen.db'}")
    CachingSession(engine, cache=cache).close()
    assert watch.is_watched(engine)
    factory = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'seen2.db'}"))
    listen_on_session(factory, cache=cache)
    assert watch.is_watched(factory.kw["bind"])


def test_an_engine_at_a_dead_engines_address_gets_every_listener() -> None:
    """SQLAlchemy's event registry keys a listener by id() of the engine it was given, but the
    handle_error listener lives on the engine's dialect: while that outlives its engine (kept
    by the application or a cache, or a cycle collected later), a new engine at the dead
    one's address looked as if it had it already. Without it, reads after a failed statement
    in a PostgreSQL transaction were served from the cache."""
    kept: list[Any] = []  # the dialects outlive their engines, which the collector frees
    engines: list[Engine] = []
    reused = 0
    for _ in range(200):
        dead = create_engine("sqlite://")
        watch_engine(dead)
        kept.append(dead.dialect)
        address = id(dead)
        del dead
        for _ in range(5):
            engine = create_engine("sqlite://")
            reused += id(engine) == address
            watch_engine(engine)
            engines.append(engine)
    expected = [name for name, _ in EVENTS]
    missing = [e for e in engines if fires(e) != expected or not _pool_listens(e)]
    assert missing == [], f"{len(missing)} of {len(engines)} engines ({reused} at a dead address)"


def _pool_listens(engine: Engine) -> bool:
    return all(
        fn in list(getattr(engine.pool.dispatch, name))
        for name, fn in (("connect", watch._on_connect), ("checkout", watch._on_checkout_sqlite))
    )


def test_option_engines_share_their_parents_listeners(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'opt.db'}")
    Base.metadata.create_all(engine)
    before = engine.execution_options(yokedcache_test="made before")
    with CachingSession(engine.execution_options(isolation_level="SERIALIZABLE"), cache=cache):
        pass
    assert listeners_on(engine) == [name for name, _ in EVENTS]  # on the root engine
    after = engine.execution_options(yokedcache_test="made after")
    for option_engine in (before, after):
        assert listeners_on(option_engine) == []  # nothing of its own ...
        assert fires(option_engine) == [name for name, _ in EVENTS]  # ... it fires the parent's
        assert watch.is_watched(option_engine)


def test_an_option_engine_seen_first_watches_its_parent(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'opt2.db'}")
    Base.metadata.create_all(engine)
    child = engine.execution_options(yokedcache_test=1)
    with CachingSession(child, cache=cache) as s:
        s.scalars(select(User)).all()
    assert fires(engine) == [name for name, _ in EVENTS]  # the parent's own statements too


def test_async_engines_watch_their_sync_engine(tmp_path: Any, cache: YokedCache) -> None:
    aengine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    try:
        watch_engine(aengine)
        assert listeners_on(aengine.sync_engine) == [name for name, _ in EVENTS]
    finally:
        asyncio.run(aengine.dispose())


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_pooled_connection_opened_before_watching_is_replaced(db: DB) -> None:
    """A pooled connection that ran ``SET`` before the engine was watched would carry state
    nobody saw: the pool replaces it at its next checkout."""
    engine = create_engine(db.url)
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            conn.exec_driver_sql(
                "SET @yc_var = 1" if db.name == "mariadb" else "SET work_mem = '5MB'"
            )
        watch_engine(engine)
        with engine.connect() as conn:
            assert conn.connection.dbapi_connection is not raw
            assert connection_taint(conn) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
async def test_async_pooled_connection_opened_before_watching_is_replaced(db: DB) -> None:
    """The same through the async driver (asyncpg, aiomysql): the checkout listener runs in
    the greenlet, and the async pool replaces the connection too."""
    engine = create_async_engine(async_url(db))
    try:
        async with engine.connect() as conn:
            raw = (await conn.get_raw_connection()).driver_connection
            await conn.exec_driver_sql(
                "SET @yc_var = 1" if db.name == "mariadb" else "SET work_mem = '5MB'"
            )
        watch_engine(engine)
        async with engine.connect() as conn:
            assert (await conn.get_raw_connection()).driver_connection is not raw
            assert conn.sync_connection is not None
            assert connection_taint(conn.sync_connection) is None
            await conn.exec_driver_sql(
                "SET @yc_var = 2" if db.name == "mariadb" else "SET work_mem = '6MB'"
            )
            assert connection_taint(conn.sync_connection) is not None
    finally:
        await engine.dispose()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_connection_checked_out_before_watching_has_unknown_state(
    db: DB, cache: YokedCache
) -> None:
    """A connection checked out before its engine was watched ran SQL nobody saw: a session
    bound to it does not serve or store, vary_on or not."""
    engine = create_engine(db.url)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET search_path TO pg_catalog, public")
            watch_engine(engine)
            assert connection_taint(conn) == UNWATCHED
            assert TAINT_KEY not in conn.info  # the SET itself was not seen
            s = CachingSession(conn, cache=cache, vary_on=lambda s: "one")
            why = explain(select(User.name), session=s).reason
            assert "before yokedcache watched its engine" in why and "watch_engine" in why
            s.scalars(select(User.name)).all()
            st = state_of(s)
            assert st is not None and st.tainted == UNWATCHED
            s.close()
    finally:
        engine.dispose()


def ours_on(engine: Engine) -> list[str]:
    """Every listener of the package's modules that fires for *engine* (any event, any
    level: on the engine, its class, its pool or dialect)."""
    found = []
    targets: tuple[Any, ...] = (engine.dispatch, engine.pool.dispatch, engine.dialect.dispatch)
    for target in targets:
        for name in target._event_names:
            for fn in getattr(target, name):
                for f in (fn, *_wrapped(fn)):
                    if getattr(f, "__module__", "").startswith("yokedcache_sa"):
                        found.append(f"{name}:{f.__name__}")
    return found


@pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)
def test_cached_function_watches_an_engine_only_it_uses(env: Env, cache: YokedCache) -> None:
    """``@cached`` watches the engines its function names (here: in its closure) before the
    function runs, so even its first result is stored, under the tables it read."""
    engine = create_engine(env.db.url)
    calls: list[int] = []

    @cached(cache=cache)
    def names() -> list[str]:
        calls.append(1)
        with engine.connect() as conn:
            return list(conn.scalars(select(User.name).order_by(User.id)))

    try:
        with engine.connect() as conn:  # a pooled connection from before: replaced
            conn.scalars(select(User.id)).all()
        first = names()
        assert watch.is_watched(engine)
        assert names() == first and len(calls) == 1  # the first result was stored
        with CachingSession(engine, cache=cache) as s:  # ... under the table it read
            s.get(User, 1).name = "renamed"
            s.commit()
        assert names()[0] == "renamed" and len(calls) == 2
    finally:
        engine.dispose()


def test_cached_computations_add_no_listener_to_other_engines(
    tmp_path: Any, cache: YokedCache
) -> None:
    """No process-wide hook: an engine never used with ``@cached`` (nor a caching session)
    has no listener of the package, however many computations ran on other engines."""
    used = create_engine(f"sqlite:///{tmp_path / 'used.db'}")

    @cached(cache=cache)
    def one() -> int:
        with used.connect() as conn:
            return int(conn.execute(text("SELECT 1")).scalar_one())

    assert one() == 1
    fresh = create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")

    @cached(cache=cache)
    def other(x: int) -> int:
        return x

    assert other(2) == 2
    with fresh.connect() as conn:
        conn.execute(text("SELECT 1")).all()
    assert ours_on(fresh) == []
    assert not watch.is_watched(fresh)
    assert watch.is_watched(used)


_FACTORY: Any = None  # a module-level session factory, as applications keep one


def _names_through_the_module_factory() -> list[str]:
    with _FACTORY() as s:
        return list(s.scalars(select(User.name).order_by(User.id)))


def test_cached_function_watches_the_engine_of_a_global_session_factory(
    tmp_path: Any, cache: YokedCache
) -> None:
    global _FACTORY
    engine = create_engine(f"sqlite:///{tmp_path / 'global.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        s.add(User(id=1, name="ann"))
        s.commit()
    _FACTORY = sessionmaker(engine)  # plain sessions: only @cached can see the engine
    try:
        names = cached(cache=cache)(_names_through_the_module_factory)
        assert names() == ["ann"]
        assert watch.is_watched(engine)
        with CachingSession(engine, cache=cache) as s:
            s.get(User, 1).name = "bob"
            s.commit()
        assert names() == ["bob"]  # stored under table:users, invalidated by the commit
    finally:
        _FACTORY = None
        engine.dispose()


# -- listen_on_session ------------------------------------------------------------------------


def test_listen_on_session_changes_no_class_or_method(env: Env) -> None:
    factory = sessionmaker(env.engine)
    before = factory.class_.__dict__.copy()
    listen_on_session(factory, cache=env.cache)
    assert factory.class_.__dict__.keys() == before.keys()  # listeners only: no method added
    with factory() as s:
        assert type(s) is factory.class_ and "commit" not in s.__dict__
        s.scalars(select(User.name)).all()
        assert s.commit() is None  # type: ignore[func-returns-value]  # the point of the test


def test_listen_on_session_caches_and_invalidates(env: Env) -> None:
    factory = sessionmaker(env.engine)
    listen_on_session(factory, cache=env.cache)
    read = lambda s: s.scalars(select(User.name).order_by(User.id)).all()  # noqa: E731
    with factory() as s:
        names = env.queried(lambda: read(s))
    with factory() as s:
        assert env.cached(lambda: read(s)) == names
        s.get(User, 1).name = "renamed"
        s.commit()
    with factory() as s:
        assert env.queried(lambda: read(s))[0] == "renamed"
    with factory() as s:
        assert env.cached(lambda: read(s))[0] == "renamed"


def test_listen_on_a_session_class(env: Env) -> None:
    class AppSession(Session):
        pass

    listen_on_session(AppSession, cache=env.cache)
    read = lambda s: s.scalars(select(User.name).order_by(User.id)).all()  # noqa: E731
    with AppSession(env.engine) as s:
        env.queried(lambda: read(s))
    with AppSession(env.engine) as s:
        env.cached(lambda: read(s))
    with Session(env.engine) as base:  # its base class does not cache
        env.queried(lambda: read(base))


def test_rollback_after_hits_expires_like_a_plain_session(env: Env) -> None:
    factory = sessionmaker(env.engine)
    listen_on_session(factory, cache=env.cache)
    env.warm(lambda s: s.get(User, 1).name)
    with factory() as s:
        u = env.cached(lambda: s.get(User, 1))
        s.rollback()
        assert "name" not in u.__dict__  # expired, as after a database read


def test_listen_on_session_refuses_what_caches_already(env: Env) -> None:
    with pytest.raises(UsageError, match="CachingSession"):
        listen_on_session(sessionmaker(env.engine, class_=CachingSession), cache=env.cache)
    factory = sessionmaker(env.engine)
    listen_on_session(factory, cache=env.cache)
    with pytest.raises(UsageError, match="already"):
        listen_on_session(factory, cache=env.cache)
    with pytest.raises(UsageError, match="sessionmaker"):
        listen_on_session(object(), cache=env.cache)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="sync_session_class=CachingSession"):
        listen_on_session(async_sessionmaker(), cache=env.cache)  # type: ignore[arg-type]


def test_instrument_session_on_a_listened_factory_adds_no_listener(env: Env) -> None:
    factory = sessionmaker(env.engine)
    listen_on_session(factory, cache=env.cache)
    with factory() as s:
        assert instrument_session(s, env.cache, tags=["extra"]) is s
        assert len(list(s.dispatch.do_orm_execute)) == 1  # the factory's, not one more
        st = state_of(s)
        assert st is not None and st.tags == ("extra",)
        env.queried(lambda: s.scalars(select(User.name)).all())
    with factory() as s:
        instrument_session(s, env.cache, tags=["extra"])
        env.cached(lambda: s.scalars(select(User.name)).all())


def test_engine_dispose_keeps_the_listeners(tmp_path: Any, cache: YokedCache) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'dispose.db'}")
    watch_engine(engine)
    engine.dispose()  # a new pool: SQLAlchemy carries the pool listeners over
    with engine.connect() as conn:
        assert connection_taint(conn) is None
    assert listeners_on(engine) == [name for name, _ in EVENTS]


def test_the_installation_names_stay_importable_from_engine_events() -> None:
    assert engine_events.watch_engine is watch_engine
    assert engine_events.is_watched is watch.is_watched
    with pytest.raises(AttributeError):
        _ = engine_events.no_such_name
