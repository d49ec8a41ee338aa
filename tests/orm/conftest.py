"""ORM suite fixtures: every test runs on SQLite (a temp file), PostgreSQL and MariaDB, each
with the memory and the Redis backend (the ``cache`` fixture of ``tests/conftest.py``).

Tables are created once per module and database and dropped after it; each test starts from
the seed data and a cache of its own (private Redis key prefix, cleared after the test).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine

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
def env(db: DB, cache: YokedCache) -> Iterator[Env]:
    """Seeded tables, a private cache, session factories and a statement counter."""
    yield from make_env(db, cache)


def make_env(db: DB, cache: YokedCache, kind: str = "CachingSession") -> Iterator[Env]:
    """The body of ``env``; *kind* says how ``env.Session`` caches (see ``Env.kind``).

    A module runs its tests through both installers by overriding ``env`` with
    ``SESSION_KINDS`` as params (tests/orm/test_reads.py, test_writes.py)."""
    reseed(db.engine)
    counter = SQLCounter(db.engine)
    try:
        yield Env(db, cache, counter, kind)
    finally:
        counter.remove()


SESSION_KINDS = ["CachingSession", "listen_on_session"]
