"""ORM suite fixtures: every test runs on SQLite (a temp file), PostgreSQL and MariaDB, each
with the memory and the Redis backend (the ``cache`` fixture of ``tests/conftest.py``).

A module marked ``pytest.mark.drivers("sync", "async")`` also runs each test that takes
``env`` through both drivers: ``sync`` (pysqlite, psycopg, PyMySQL; the cache's sync calls)
and ``async`` (aiosqlite, asyncpg, aiomysql; an ``AsyncSession`` over ``CachingSession``, the
cache's async calls). The body is the same: under ``async`` it runs inside SQLAlchemy's greenlet on
an event loop, as ``AsyncSession.run_sync`` runs code. A test marked
``pytest.mark.drivers("sync")`` opts out (say why). MariaDB's async driver is aiomysql
(``YOKEDCACHE_TEST_MARIADB_ASYNC_URL``). A third value, ``listen``, runs the test on the sync
driver with ``env.Session`` a plain ``sessionmaker`` given the cache by ``listen_on_session``
instead of ``CachingSession`` (issue 11).

Tables are created once per module and database and dropped after it; each test starts from
the seed data and a cache of its own (private Redis key prefix, cleared after the test).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from tests.orm.ormkit import DB, Base, Env, SQLCounter, enable_sqlite_fks, reseed, root_conftest
from yokedcache_sa import YokedCache

_root = root_conftest()


def db_url(name: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if name == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'orm.db'}"
    if name == "postgresql":
        _root.require_service("PostgreSQL", _root.PG_URL, 5432)
        return str(_root.PG_URL)
    if name == "mariadb":
        _root.require_service("MariaDB", _root.MARIADB_URL, 3306)
        return str(_root.MARIADB_URL)
    raise AssertionError(name)


ASYNC_DBS = ("sqlite", "postgresql", "mariadb")
"""Databases with an async driver installed (aiosqlite, asyncpg, aiomysql)."""


def async_url(db: DB) -> str:
    if db.name == "sqlite":
        return db.url.replace("sqlite://", "sqlite+aiosqlite://", 1)
    if db.name == "postgresql":
        return str(_root.PG_ASYNC_URL)
    if db.name == "mariadb":
        _root.require_service("MariaDB", _root.MARIADB_ASYNC_URL, 3306)
        return str(_root.MARIADB_ASYNC_URL)
    raise AssertionError(f"no async driver for {db.name}")


def _marked_dbs(metafunc: pytest.Metafunc) -> list[str] | None:
    """The ``db`` values a ``parametrize`` marker gives this test, or None when none does."""
    for mark in metafunc.definition.iter_markers("parametrize"):
        argnames = mark.args[0]
        names = [n.strip() for n in argnames.split(",")] if isinstance(argnames, str) else argnames
        if "db" not in names:
            continue
        i = list(names).index("db")
        values: Sequence[Any] = mark.args[1]
        out = []
        for v in values:
            v = v.values if isinstance(v, type(pytest.param(None))) else v
            out.append(str(v[i] if len(names) > 1 else (v[0] if isinstance(v, tuple) else v)))
        return out
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Bind the tests of a ``drivers``-marked module to each (database, driver) pair."""
    mark = metafunc.definition.get_closest_marker("drivers")
    if mark is None or "driver" not in metafunc.fixturenames:
        return
    if inspect.iscoroutinefunction(metafunc.function):
        return  # an async test body is the async path already
    drivers: tuple[str, ...] = mark.args
    marked = _marked_dbs(metafunc)
    if marked is not None:
        usable = [d for d in drivers if d != "async" or all(db in ASYNC_DBS for db in marked)]
        metafunc.definition.add_marker(
            pytest.mark.parametrize("driver", usable, indirect=True, scope="module")
        )
        return
    pairs = [
        (db, d)
        for db in ("sqlite", "postgresql", "mariadb")
        for d in drivers
        if d != "async" or db in ASYNC_DBS
    ]
    metafunc.definition.add_marker(
        pytest.mark.parametrize(("db", "driver"), pairs, indirect=True, scope="module")
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Under the async driver, run the (sync) test body inside the greenlet on a loop: the
    driver is the ``env`` fixture's, or that of any argument with ``driver == "async"`` and a
    ``run_async`` method (``Bank`` of test_snapshot.py)."""
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    runner = next(
        (
            v
            for v in pyfuncitem.funcargs.values()
            if getattr(v, "driver", None) == "async" and hasattr(v, "run_async")
        ),
        None,
    )
    if runner is None:
        return None
    fn = pyfuncitem.obj
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(fn).parameters}
    asyncio.run(runner.run_async(fn, kwargs))
    return True


@pytest.fixture(scope="module")
def driver(request: pytest.FixtureRequest) -> str:
    """``sync`` unless a ``drivers`` marker parametrizes it (see the module docstring)."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DB]:
    """A database with the model tables, created for this module and dropped after it."""
    name: str = request.param
    url = db_url(name, tmp_path_factory)
    # MariaDB's default REPEATABLE READ sends each transaction's first read to the database
    # (tests/orm/test_snapshot.py covers it); the shared suite counts hits at READ COMMITTED.
    engine = create_engine(url, isolation_level="READ COMMITTED" if name == "mariadb" else None)
    if name == "sqlite":
        enable_sqlite_fks(engine)
    try:
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        yield DB(name, url, engine)
        Base.metadata.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture
def env(db: DB, cache: YokedCache, driver: str) -> Iterator[Env]:
    """Seeded tables, a private cache, session factories and a statement counter, on the
    engine of *driver* (``listen``: the sync driver, sessions from a plain sessionmaker
    given the listeners by ``listen_on_session``)."""
    reseed(db.engine)
    aengine = None
    if driver == "async":
        # the same isolation as the sync engine of the ``db`` fixture (see the note there)
        aengine = create_async_engine(
            async_url(db), isolation_level="READ COMMITTED" if db.name == "mariadb" else None
        )
        if db.name == "sqlite":
            enable_sqlite_fks(aengine.sync_engine)
    counter = SQLCounter(db.engine if aengine is None else aengine.sync_engine)
    try:
        kind = "listen_on_session" if driver == "listen" else "CachingSession"
        yield Env(db, cache, counter, "async" if aengine is not None else "sync", aengine, kind)
    finally:
        counter.remove()
