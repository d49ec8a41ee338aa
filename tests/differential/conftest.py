"""Differential-tester fixtures: two copies of one schema on each database, one cache per test.

``--diff-long`` (given with a path under ``tests/differential``, where this conftest is loaded
before options are parsed) or ``YOKEDCACHE_DIFF_LONG=1`` (anywhere) multiplies the examples
and steps for local bug hunting; the default is sized for CI (well under a minute on 2 cores).
``YOKEDCACHE_DIFF_EXAMPLES=N`` runs exactly N programs (with or without the long mode), to
size a hunt to the time there is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event

from tests.conftest import MARIADB_URL, PG_URL, require_service
from tests.differential.schema import Models, build, sqlite_engine_setup, unique_prefix
from yokedcache_sa import YokedCache

KNOWN_BUGS = os.environ.get("YOKEDCACHE_DIFF_KNOWN_BUGS", "").lower() in ("1", "true", "yes")
"""Put back into the random programs the constructs left out because of a known cache bug
(each has a strict-xfail test in test_regressions.py); for whoever fixes one of them."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--diff-long",
        action="store_true",
        default=False,
        help="differential tester: many more examples and steps (local bug hunting)",
    )


@pytest.fixture(scope="session")
def diff_long(request: pytest.FixtureRequest) -> bool:
    env = os.environ.get("YOKEDCACHE_DIFF_LONG", "").lower() in ("1", "true", "yes")
    return env or bool(request.config.getoption("--diff-long"))


@dataclass
class Side:
    """One copy of the schema with its own engine, and a count of the statements it sent."""

    name: str
    models: Models
    engine: Engine
    statements: int = 0
    _listener: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        def _count(*_args: Any) -> None:
            self.statements += 1

        self._listener = _count
        event.listen(self.engine, "before_cursor_execute", _count)


@dataclass
class Pair:
    """The database both copies live on, the oracle side, the cached side and the cache."""

    db: str
    plain: Side
    cached: Side
    cache: YokedCache | None = None


def _engine(db: str, url: str) -> Engine:
    if db == "postgresql":
        # a lock wait would mean the tester let two writers collide: fail fast, not hang
        return create_engine(url, connect_args={"options": "-c lock_timeout=3000"})
    engine = create_engine(url)
    if db == "sqlite":
        sqlite_engine_setup(engine)
    else:

        @event.listens_for(engine, "connect")
        def _short_lock_wait(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION innodb_lock_wait_timeout = 3")
            cur.close()

    return engine


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def diff_db(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Both copies of the schema created on one database (dropped after the module)."""
    db: str = request.param
    if db == "sqlite":
        # SQLite locks the whole file for a writer: each side gets a file of its own, or the
        # plain side's open write transaction would block the cached side's
        folder = tmp_path_factory.mktemp("diff")
        urls = [f"sqlite:///{folder / kind}.db" for kind in ("plain", "cached")]
    elif db == "postgresql":
        require_service("PostgreSQL", PG_URL, 5432)
        urls = [PG_URL, PG_URL]
    else:
        require_service("MariaDB", MARIADB_URL, 3306)
        urls = [MARIADB_URL, MARIADB_URL]
    sides = [
        Side(kind, build(unique_prefix(kind[0]), False), _engine(db, url))
        for kind, url in zip(("plain", "cached"), urls, strict=True)
    ]
    try:
        for side in sides:
            side.models.metadata.create_all(side.engine)
        yield Pair(db, sides[0], sides[1])
        for side in sides:
            side.models.metadata.drop_all(side.engine)
    finally:
        for side in sides:
            side.engine.dispose()


@pytest.fixture
def lazy_subclass_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Like ``diff_db`` on SQLite, mapped without ``polymorphic_load="inline"``."""
    folder = tmp_path_factory.mktemp("difflazy")
    sides = []
    for kind in ("plain", "cached"):
        engine = _engine("sqlite", f"sqlite:///{folder / kind}.db")
        sides.append(Side(kind, build(unique_prefix(kind[0]), False), engine))
    try:
        for side in sides:
            side.models.metadata.create_all(side.engine)
        yield Pair("sqlite", sides[0], sides[1])
    finally:
        for side in sides:
            side.engine.dispose()


@pytest.fixture
def pair(diff_db: Pair, cache: YokedCache) -> Iterator[Pair]:
    """The database pair with this test's private cache (memory or Redis)."""
    diff_db.cache = cache
    diff_db.plain.statements = diff_db.cached.statements = 0
    try:
        yield diff_db
    finally:
        diff_db.cache = None
