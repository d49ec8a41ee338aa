"""Views: a cached read of a view is invalidated by writes to the tables it reads, found in
the database's catalog with no ``declare_dependency`` (SQLite, PostgreSQL, MariaDB, with the
memory and the Redis backend)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from tests.orm.conftest import async_url
from tests.orm.ormkit import Address, Env, P, SQLCounter, User
from yokedcache_sa.orm import CachingSession, catalog, refresh_catalog

md = MetaData()
# a view over two tables, and a view over that view
emails = Table(
    P + "v_emails",
    md,
    Column("user_id", Integer),
    Column("name", String(50)),
    Column("email", String(80)),
)
alice_emails = Table(P + "v_alice", md, Column("name", String(50)), Column("email", String(80)))
late = Table(P + "v_late", md, Column("id", Integer), Column("name", String(50)))
noisy = Table(P + "v_noisy", md, Column("id", Integer), Column("r", Integer))
quoted = Table(P + "v_quoted", md, Column("id", Integer), Column("q", String(60)))
mat = Table(P + "mv_names", md, Column("id", Integer), Column("name", String(50)))

U, A = User.__tablename__, Address.__tablename__
VIEWS = [
    (
        emails.name,
        f"SELECT u.id AS user_id, u.name AS name, a.email AS email FROM {U} u "
        f"JOIN {A} a ON a.user_id = u.id",
    ),
    (alice_emails.name, f"SELECT name, email FROM {emails.name} WHERE name LIKE 'al%'"),
]
RANDOM = {"sqlite": "random()", "postgresql": "random()", "mariadb": "rand()"}


def _drop_all(conn: Any, dialect: str) -> None:
    if dialect == "postgresql":
        conn.execute(text(f"DROP MATERIALIZED VIEW IF EXISTS {mat.name}"))
    for name in (alice_emails.name, emails.name, late.name, noisy.name, quoted.name):
        conn.execute(text(f"DROP VIEW IF EXISTS {name}"))


@pytest.fixture
def views(env: Env) -> Iterator[Env]:
    """The two views, created outside any caching session (so the catalog is refreshed)."""
    with env.engine.begin() as conn:
        _drop_all(conn, env.db.name)
        for name, sql in VIEWS:
            conn.execute(text(f"CREATE VIEW {name} AS {sql}"))
    refresh_catalog(env.engine)
    try:
        yield env
    finally:
        with env.engine.begin() as conn:
            _drop_all(conn, env.db.name)
        refresh_catalog(env.engine)


def read_emails(s: Session) -> Any:
    return s.execute(select(emails).order_by(emails.c.user_id, emails.c.email)).all()


def read_alice(s: Session) -> Any:
    return s.execute(select(alice_emails).order_by(alice_emails.c.email)).all()


def write(env: Env, stmt: Any) -> None:
    with env.Session() as s:
        s.execute(stmt)
        s.commit()


def invalidated(env: Env, read: Callable[[Session], Any]) -> Any:
    """The read after a write: it must query the database and agree with a plain Session."""
    got = env.fresh_read(read)
    assert got == env.truth(read)
    return got


@pytest.mark.parametrize("read", [read_emails, read_alice], ids=["view", "view_of_view"])
def test_write_to_each_base_table_invalidates_the_view(
    views: Env, read: Callable[[Session], Any]
) -> None:
    env = views
    before = env.warm(read)  # a miss that stores, then a hit (no SQL)
    assert before == env.truth(read)

    write(env, update(User).where(User.id == 1).values(name="alfred"))
    after = invalidated(env, read)
    assert after != before
    env.hit(read)

    with env.Session() as s:
        s.add(Address(id=10, user_id=1, email="a3@x"))
        s.commit()
    assert invalidated(env, read) != after


def test_the_view_tags_include_its_base_tables(views: Env) -> None:
    env = views
    env.warm(read_alice)
    with env.engine.connect() as conn:
        tags = catalog.read_tags(conn, frozenset({f"table:{alice_emails.name}"}))
    assert tags is not None
    assert {f"table:{emails.name}", f"table:{U}", f"table:{A}"} <= tags


def test_outside_writer_invalidating_a_base_table_reaches_the_view(views: Env) -> None:
    env = views
    env.warm(read_emails)
    with env.engine.begin() as conn:  # not a caching session: the writer says what it wrote
        conn.execute(update(User.__table__).where(User.id == 3).values(name="caroline"))
    env.cache.invalidate_tables_sync([U])
    assert "caroline" in str(invalidated(env, read_emails))


def test_write_in_the_transaction_bypasses_the_cached_view(views: Env) -> None:
    env = views
    env.warm(read_emails)
    with env.Session() as s:
        s.execute(update(User).where(User.id == 1).values(name="alfred"))
        rows = env.queried(lambda: read_emails(s))
        assert "alfred" in str(rows)
        s.rollback()
    env.hit(read_emails)  # the rolled-back read was not stored: the old entry still serves
    assert env.hit(read_emails) == env.truth(read_emails)


def test_view_created_through_the_session_after_the_catalog_was_read(views: Env) -> None:
    env = views
    env.warm(read_emails)  # the engine's catalog is read now
    with env.Session() as s:
        s.execute(text(f"CREATE VIEW {late.name} AS SELECT id, name FROM {U} WHERE id > 2"))
        s.commit()

    def read(s: Session) -> Any:
        return s.execute(select(late).order_by(late.c.id)).all()

    env.warm(read)
    write(env, update(User).where(User.id == 3).values(name="caroline"))
    assert "caroline" in str(invalidated(env, read))


def test_catalog_read_while_the_ddl_was_uncommitted_is_dropped_at_commit(views: Env) -> None:
    env = views
    with env.Session() as a:
        a.execute(text(f"CREATE VIEW {late.name} AS SELECT id, name FROM {U} WHERE id > 2"))
        with env.Session() as b:  # reads the catalog again, without a's view (uncommitted)
            env.queried(lambda: read_alice(b))
        a.commit()

    def read(s: Session) -> Any:
        return s.execute(select(late).order_by(late.c.id)).all()

    env.warm(read)
    write(env, update(User).where(User.id == 3).values(name="caroline"))
    assert "caroline" in str(invalidated(env, read))


def test_view_created_outside_needs_refresh_catalog(views: Env) -> None:
    env = views
    env.warm(read_emails)
    with env.engine.begin() as conn:
        conn.execute(text(f"CREATE VIEW {late.name} AS SELECT id, name FROM {U} WHERE id > 2"))
    refresh_catalog(env.engine)

    def read(s: Session) -> Any:
        return s.execute(select(late).order_by(late.c.id)).all()

    env.warm(read)
    write(env, update(User).where(User.id == 4).values(name="david"))
    assert "david" in str(invalidated(env, read))


def test_view_calling_a_volatile_function_is_not_cached(views: Env) -> None:
    env = views
    with env.engine.begin() as conn:
        conn.execute(
            text(f"CREATE VIEW {noisy.name} AS SELECT id, {RANDOM[env.db.name]} AS r FROM {U}")
        )
    refresh_catalog(env.engine)

    def read(s: Session) -> Any:
        return s.execute(select(noisy.c.id).order_by(noisy.c.id)).all()

    env.fresh_read(read)
    env.fresh_read(read)  # not stored: its content is not a function of table data
    env.warm(read_emails)  # other views still are


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # pg_proc volatility
def test_postgresql_view_calling_an_immutable_function_is_cached(views: Env) -> None:
    env = views
    # quote_ident() is in no builtin list: pg_proc says it is immutable
    with env.engine.begin() as conn:
        conn.execute(
            text(f"CREATE VIEW {quoted.name} AS SELECT id, quote_ident(name) AS q FROM {U}")
        )
    refresh_catalog(env.engine)

    def read(s: Session) -> Any:
        return s.execute(select(quoted).order_by(quoted.c.id)).all()

    env.warm(read)
    write(env, update(User).where(User.id == 1).values(name="Alfred"))
    assert "Alfred" in str(invalidated(env, read))


def test_unreadable_catalog_means_no_caching(views: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env = views
    bad = f"SELECT * FROM {P}no_such_catalog"
    for name in ("_PG_RELATIONS", "_MYSQL_VIEWS", "_SQLITE_VIEWS"):
        monkeypatch.setattr(catalog, name, bad)
    refresh_catalog(env.engine)
    with env.Session() as s:
        # the failed lookup neither breaks the statement nor its transaction (PostgreSQL)
        first = env.queried(lambda: read_emails(s))
        assert env.queried(lambda: read_emails(s)) == first
        assert env.queried(lambda: s.execute(select(User.name).order_by(User.id)).all())
    env.fresh_read(read_emails)  # still not cached: never served stale
    monkeypatch.undo()
    refresh_catalog(env.engine)
    env.warm(read_emails)


@pytest.fixture
def matview(views: Env) -> Iterator[Env]:
    assert views.db.name == "postgresql"
    with views.engine.begin() as conn:
        conn.execute(text(f"CREATE MATERIALIZED VIEW {mat.name} AS SELECT id, name FROM {U}"))
    refresh_catalog(views.engine)
    yield views


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # materialized views
@pytest.mark.parametrize("concurrently", [False, True])
def test_materialized_view_changes_only_on_refresh(matview: Env, concurrently: bool) -> None:
    env = matview
    if concurrently:
        with env.engine.begin() as conn:
            conn.execute(text(f"CREATE UNIQUE INDEX {P}mv_names_id ON {mat.name} (id)"))

    def read(s: Session) -> Any:
        return s.execute(select(mat).order_by(mat.c.id)).all()

    before = env.warm(read)
    write(env, update(User).where(User.id == 1).values(name="alfred"))
    # the base table changed, the materialized view did not: still a hit, still true
    assert env.hit(read) == before == env.truth(read)

    how = "CONCURRENTLY " if concurrently else ""
    write(env, text(f"REFRESH MATERIALIZED VIEW {how}{mat.name}"))
    after = invalidated(env, read)
    assert after != before and "alfred" in str(after)
    env.hit(read)


@pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"], indirect=True)
async def test_async_session_reads_the_catalog_in_its_greenlet(views: Env) -> None:
    env = views
    iso = "READ COMMITTED" if env.db.name == "mariadb" else None  # as the db fixture's
    engine = create_async_engine(async_url(env.db), isolation_level=iso)
    counter = SQLCounter(engine.sync_engine)
    Session = async_sessionmaker(engine, sync_session_class=CachingSession, cache=env.cache)
    query = select(emails).order_by(emails.c.user_id, emails.c.email)
    try:
        for expect_sql in (True, False):
            async with Session() as s:
                before = counter.n
                rows = (await s.execute(query)).all()
                assert (counter.n > before) is expect_sql
        async with Session() as s:
            await s.execute(update(User).where(User.id == 1).values(name="alfred"))
            await s.commit()
        async with Session() as s:
            before = counter.n
            after = (await s.execute(query)).all()
            assert counter.n > before and after != rows and "alfred" in str(after)
    finally:
        counter.remove()
        await engine.dispose()
        await env.cache.disconnect()


# -- the pure parts ---------------------------------------------------------------------------


def test_views_resolve_transitively_and_through_schemas() -> None:
    views = catalog._views(
        [
            ("public", "v1", frozenset({("public", "t1"), ("other", "T2")})),
            ("public", "v2", frozenset({("public", "v1")})),
            ("other", "v3", frozenset({("public", "v2")})),
            ("public", "loop", frozenset({("public", "loop2")})),
            ("public", "loop2", frozenset({("public", "loop")})),
            ("public", "hidden", None),
        ],
        "public",
        search_path=True,
    )
    got = catalog._expand(views, {"table:other.v3"})
    assert got is not None
    # bases in the default schema carry both spellings writes may bump; others are qualified
    assert {"table:t1", "table:public.t1", "table:other.T2", "table:other.t2"} <= got
    assert {"table:v1", "table:v2", "table:public.v2"} <= got
    assert "table:T2" not in got and "table:t2" not in got
    assert catalog._expand(views, {"table:loop"}) == frozenset(
        {
            "table:loop",
            "table:loop2",
            "table:public.loop",
            "table:public.loop2",
        }
    )
    assert catalog._expand(views, {"table:x", "table:public.hidden"}) is None
    assert catalog._expand(views, {"table:x"}) == frozenset({"table:x"})


def test_bare_names_are_the_default_schemas_views_outside_postgresql() -> None:
    rows = [("test", "v", frozenset({("test", "t")})), ("elsewhere", "w", None)]
    views = catalog._views(rows, "test", search_path=False)
    assert catalog._expand(views, {"table:w"}) == frozenset({"table:w"})  # another database's view
    assert catalog._expand(views, {"table:elsewhere.w"}) is None
    assert catalog._expand(views, {"table:V"}) == frozenset({"table:V", "table:t", "table:test.t"})
