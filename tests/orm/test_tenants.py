"""The cache key covers everything that changes the answer (issue 9, class 2).

Statement parameters set with ``.params()``, the engine and connection options and connect
arguments that pick a schema, and connection state set with ``SET`` / ``set_config()`` (search
path, role, row-level security settings): tenant B must never be served tenant A's rows, and
a read whose answer is fully keyed is still served from the cache.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Engine,
    Integer,
    String,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.util import greenlet_spawn

from tests.orm.ormkit import Env, P, User, plain, root_conftest
from yokedcache_sa import YokedCache, cached
from yokedcache_sa.orm import CachingSession, instrument_session
from yokedcache_sa.orm.bindstate import engine_identity, state_change

_root = root_conftest()

# -- 1. statement parameters (every database, both backends) ---------------------------------


def test_params_on_a_bindparam_are_keyed(env: Env) -> None:
    stmt = select(User.name).where(User.id == bindparam("x"))

    def read(x: int) -> Callable[[Session], Any]:
        return lambda s: s.scalars(stmt.params(x=x)).all()

    assert env.warm(read(1)) == ["alice"]  # the second read was a hit
    assert env.fresh_read(read(2)) == ["bob"] == env.truth(read(2))
    assert env.hit(read(2)) == ["bob"]
    assert env.hit(read(1)) == ["alice"]


def test_params_on_an_expanding_bindparam_are_keyed(env: Env) -> None:
    stmt = select(User.name).where(User.id.in_(bindparam("ids", expanding=True))).order_by(User.id)

    def read(ids: list[int]) -> Callable[[Session], Any]:
        return lambda s: s.scalars(stmt.params(ids=ids)).all()

    assert env.warm(read([1, 2])) == ["alice", "bob"]
    assert env.fresh_read(read([3, 4])) == ["carol", "dave"] == env.truth(read([3, 4]))
    assert env.hit(read([3, 4])) == ["carol", "dave"]


def test_params_merged_over_several_calls_are_keyed(env: Env) -> None:
    stmt = select(User.name).where(User.id == bindparam("x"), User.name != bindparam("n"))
    base = stmt.params(x=1, n="")
    assert env.warm(lambda s: s.scalars(base).all()) == ["alice"]
    assert env.fresh_read(lambda s: s.scalars(base.params(n="alice")).all()) == []
    assert env.fresh_read(lambda s: s.scalars(base.params(x=3)).all()) == ["carol"]


# -- tenants: one table in the default schema and in two tenant schemas ----------------------


class TBase(DeclarativeBase):
    __table__: ClassVar[Table]


class Item(TBase):
    __tablename__ = P + "titems"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    label: Mapped[str] = mapped_column(String(30))


def labels(s: Session) -> Any:
    return plain(s.scalars(select(Item.label).order_by(Item.id)).all())


@dataclass
class Tenants:
    name: str  # postgresql | mariadb
    url: str
    a: str  # schema (PostgreSQL) or database (MariaDB) of tenant A
    b: str
    engines: list[Engine] = field(default_factory=list)
    driver: str = "sync"  # "async": engines over aiomysql, the body in the greenlet
    async_engines: list[AsyncEngine] = field(default_factory=list)

    def engine(self, **kw: Any) -> Engine:
        """A new engine on the tenants' database (under ``async``, an async engine's
        ``sync_engine``: usable from the test body, which then runs in the greenlet)."""
        if self.name == "mariadb":
            # at MariaDB's default REPEATABLE READ each transaction's first read queries
            # (tests/orm/test_snapshot.py); these tests count hits of fresh sessions
            kw.setdefault("isolation_level", "READ COMMITTED")
        if self.driver == "async":
            aeng = create_async_engine(self.url, **kw)
            self.async_engines.append(aeng)
            return aeng.sync_engine
        eng = create_engine(self.url, **kw)
        self.engines.append(eng)
        return eng

    async def run_async(self, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        """Run a (sync) test body inside SQLAlchemy's greenlet, then close what is bound to
        the loop (the async pools, the cache's async clients); see tests/orm/conftest.py."""
        try:
            await greenlet_spawn(fn, **kwargs)
        finally:
            if isinstance(kwargs.get("cache"), YokedCache):
                await kwargs["cache"].disconnect()
            while self.async_engines:
                await self.async_engines.pop().dispose()


ROWS = {"default": ["d-1", "d-2"], "a": ["a-1"], "b": ["b-1", "b-2", "b-3"]}


@contextmanager
def tenant_schemas(name: str) -> Iterator[Tenants]:
    """Tenant schemas (PostgreSQL) or databases (MariaDB) A and B, plus the default one."""
    driver = "async" if name.endswith("-async") else "sync"
    name = name.removesuffix("-async")
    if name == "postgresql":
        _root.require_service("PostgreSQL", _root.PG_URL, 5432)
        url = str(_root.PG_URL)
    else:
        _root.require_service("MariaDB", _root.MARIADB_URL, 3306)
        url = str(_root.MARIADB_URL)
    tag = uuid.uuid4().hex[:8]
    t = Tenants(name, url, f"yc{tag}_ta", f"yc{tag}_tb")
    if driver == "async":  # the tables are made on the sync engine, the tests read via aiomysql
        _root.require_service("MariaDB", _root.MARIADB_ASYNC_URL, 3306)
        t = Tenants(name, str(_root.MARIADB_ASYNC_URL), t.a, t.b, driver="async")
    admin = create_engine(url)
    create = "CREATE SCHEMA" if name == "postgresql" else "CREATE DATABASE"
    drop = "DROP SCHEMA {} CASCADE" if name == "postgresql" else "DROP DATABASE {}"
    try:
        with admin.begin() as conn:
            conn.execute(text(f"{create} {t.a}"))
            conn.execute(text(f"{create} {t.b}"))
        for schema, rows in ((None, ROWS["default"]), (t.a, ROWS["a"]), (t.b, ROWS["b"])):
            eng = admin.execution_options(schema_translate_map={None: schema})
            TBase.metadata.create_all(eng)
            with eng.begin() as conn:
                values = [{"id": i + 1, "label": v} for i, v in enumerate(rows)]
                conn.execute(insert(Item), values)
        yield t
    finally:
        for made in t.engines:
            made.dispose()
        TBase.metadata.drop_all(admin)
        with admin.begin() as conn:
            conn.execute(text(drop.format(t.a)))
            conn.execute(text(drop.format(t.b)))
        admin.dispose()


# mariadb-async: USE and SET seen (and connections tainted) through aiomysql
@pytest.fixture(scope="module", params=["postgresql", "mariadb", "mariadb-async"])
def tenant_db(request: pytest.FixtureRequest) -> Iterator[Tenants]:
    with tenant_schemas(request.param) as t:
        yield t


@pytest.fixture(scope="module")
def pg_tenants() -> Iterator[Tenants]:
    with tenant_schemas("postgresql") as t:
        yield t


class Counter:
    """Statements sent by any engine of this process while counting."""

    def __init__(self) -> None:
        self.n = 0

    def _on(self, *args: Any) -> None:
        self.n += 1

    def __enter__(self) -> Counter:
        event.listen(Engine, "before_cursor_execute", self._on)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._on)


def counted(fn: Callable[[], Any]) -> tuple[Any, int]:
    with Counter() as c:
        out = fn()
    return out, c.n


def read_in(factory: Callable[[], Session], prep: Callable[[Session], Any] | None = None) -> Any:
    """Run ``labels`` in a fresh session (after *prep*); return (labels, statements sent)."""
    with factory() as s:
        if prep is not None:
            prep(s)
        return counted(lambda: labels(s))


def sessions(bind: Any, cache: YokedCache, **kw: Any) -> sessionmaker[CachingSession]:
    return sessionmaker(bind, class_=CachingSession, cache=cache, **kw)


# -- 2a. schema_translate_map on the engine and on the connection ----------------------------


def test_option_engines_with_different_schema_maps(tenant_db: Tenants, cache: YokedCache) -> None:
    base = tenant_db.engine()
    eng_a = base.execution_options(schema_translate_map={None: tenant_db.a})
    eng_b = base.execution_options(schema_translate_map={None: tenant_db.b})
    read_in(sessions(eng_a, cache))
    assert read_in(sessions(eng_a, cache)) == (ROWS["a"], 0)  # legitimately cached
    out, n = read_in(sessions(eng_b, cache))
    assert (out, n > 0) == (ROWS["b"], True)
    assert read_in(sessions(eng_b, cache)) == (ROWS["b"], 0)
    assert read_in(sessions(base, cache))[0] == ROWS["default"]


def test_connection_schema_maps(tenant_db: Tenants, cache: YokedCache) -> None:
    factory = sessions(tenant_db.engine(), cache)

    def on(schema: str) -> Callable[[Session], Any]:
        return lambda s: s.connection(execution_options={"schema_translate_map": {None: schema}})

    read_in(factory, on(tenant_db.a))
    assert read_in(factory, on(tenant_db.a)) == (ROWS["a"], 0)
    out, n = read_in(factory, on(tenant_db.b))
    assert (out, n > 0) == (ROWS["b"], True)
    assert read_in(factory, on(tenant_db.b)) == (ROWS["b"], 0)
    assert read_in(factory)[0] == ROWS["default"]


def test_same_url_different_connect_args(tenant_db: Tenants, cache: YokedCache) -> None:
    def connect_args(schema: str) -> dict[str, Any]:
        if tenant_db.name == "postgresql":
            return {"options": f"-csearch_path={schema}"}
        # aiomysql's connect() names the database ``db`` (PyMySQL takes both spellings)
        return {"db" if tenant_db.driver == "async" else "database": schema}

    eng_a = tenant_db.engine(connect_args=connect_args(tenant_db.a))
    eng_b = tenant_db.engine(connect_args=connect_args(tenant_db.b))
    read_in(sessions(eng_a, cache))
    assert read_in(sessions(eng_a, cache)) == (ROWS["a"], 0)
    out, n = read_in(sessions(eng_b, cache))
    assert (out, n > 0) == (ROWS["b"], True)
    assert read_in(sessions(eng_b, cache)) == (ROWS["b"], 0)


# -- 2b. SET search_path / USE: not cached unless vary_on names the state ---------------------


def _use(t: Tenants, schema: str, local: bool) -> str:
    if t.name == "postgresql":
        return f"SET {'LOCAL ' if local else ''}search_path TO {schema}"
    return f"USE {schema}"


# the ways each database switches the schema of unqualified names in SQL
SWITCH_FORMS = {
    "postgresql": ["SET LOCAL search_path TO {}", "SET search_path TO {}"],
    "mariadb": ["USE {}", "/* tenant */ USE {}"],
}


@pytest.mark.parametrize("form", [0, 1])
def test_set_search_path_is_not_cached(tenant_db: Tenants, cache: YokedCache, form: int) -> None:
    eng = tenant_db.engine(pool_size=1, max_overflow=0)
    factory = sessions(eng, cache)
    sql = SWITCH_FORMS[tenant_db.name][form]

    clean = sessions(tenant_db.engine(), cache)
    read_in(clean)
    for schema, rows in ((tenant_db.a, ROWS["a"]), (tenant_db.b, ROWS["b"])):
        for _ in range(2):
            with factory() as s:
                s.execute(text(sql.format(schema)))
                out, n = counted(partial(labels, s))
                assert out == rows and n > 0
                s.commit()
    # SET / USE change state, not rows: committing them invalidated nothing
    assert read_in(clean) == (ROWS["default"], 0)


def test_session_level_set_taints_the_pooled_connection(
    tenant_db: Tenants, cache: YokedCache
) -> None:
    eng = tenant_db.engine(pool_size=1, max_overflow=0)
    factory = sessions(eng, cache)

    def use_a(s: Session) -> None:
        s.execute(text(_use(tenant_db, tenant_db.a, local=False)))
        s.commit()  # PostgreSQL undoes a session-level SET when its transaction rolls back

    read_in(factory, use_a)
    # the same DBAPI connection, still on tenant A: the database answers A's rows ...
    for _ in range(2):
        out, n = read_in(factory)
        assert out == ROWS["a"] and n > 0
    # ... which must not have been stored for an untouched connection of the same engine
    clean = sessions(tenant_db.engine(), cache)
    read_in(clean)
    assert read_in(clean) == (ROWS["default"], 0)


def test_vary_on_keys_the_set_state(tenant_db: Tenants, cache: YokedCache) -> None:
    local = tenant_db.name == "postgresql"
    factory = sessions(
        tenant_db.engine(), cache, vary_on=lambda s: s.info["tenant"], info={"tenant": None}
    )

    def on(schema: str) -> Callable[[Session], Any]:
        def prep(s: Session) -> None:
            s.info["tenant"] = schema
            s.execute(text(_use(tenant_db, schema, local)))

        return prep

    read_in(factory, on(tenant_db.a))
    assert read_in(factory, on(tenant_db.a)) == (ROWS["a"], 0)
    out, n = read_in(factory, on(tenant_db.b))
    assert (out, n > 0) == (ROWS["b"], True)
    assert read_in(factory, on(tenant_db.b)) == (ROWS["b"], 0)


def test_caching_off_is_logged_once_naming_vary_on(
    tenant_db: Tenants, cache: YokedCache, caplog: pytest.LogCaptureFixture
) -> None:
    eng = tenant_db.engine(pool_size=1, max_overflow=0)
    factory = sessions(eng, cache)
    with caplog.at_level(logging.INFO, logger="yokedcache_sa"):
        with factory() as s:
            s.execute(text(_use(tenant_db, tenant_db.a, local=False)))
            labels(s)
            labels(s)
        read_in(factory)
    hits = [r for r in caplog.records if "vary_on" in r.getMessage()]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]


# -- 2c. PostgreSQL row-level security: SET ROLE and set_config() ----------------------------


class RBase(DeclarativeBase):
    __table__: ClassVar[Table]


class Doc(RBase):
    __tablename__ = P + "tdocs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    owner: Mapped[str] = mapped_column(String(63))


def owners(s: Session) -> Any:
    return plain(s.scalars(select(Doc.owner).order_by(Doc.id)).all())


@dataclass
class RLS:
    alice: str  # roles
    bob: str
    reader: str
    engine: Engine  # superuser (bypasses RLS)
    as_reader: Engine  # connects as the reader role


@pytest.fixture(scope="module")
def rls() -> Iterator[RLS]:
    _root.require_service("PostgreSQL", _root.PG_URL, 5432)
    tag = uuid.uuid4().hex[:8]
    alice, bob, reader = (f"yc{tag}_{n}" for n in ("alice", "bob", "reader"))
    admin = create_engine(_root.PG_URL)
    table = Doc.__table__
    try:
        with admin.begin() as conn:
            table.create(conn)
            conn.execute(
                insert(table),
                [
                    {"id": 1, "owner": alice},
                    {"id": 2, "owner": bob},
                    {"id": 3, "owner": "alice"},
                    {"id": 4, "owner": "bob"},
                ],
            )
            for role in (alice, bob, reader):
                conn.execute(text(f"CREATE ROLE {role}"))
                conn.execute(text(f"GRANT SELECT ON {table.name} TO {role}"))
            conn.execute(text(f"ALTER TABLE {table.name} ENABLE ROW LEVEL SECURITY"))
            conn.execute(
                text(
                    f"CREATE POLICY {table.name}_p ON {table.name} USING (owner = current_user"
                    " OR owner = current_setting('app.user', true))"
                )
            )
        as_reader = create_engine(_root.PG_URL, connect_args={"options": f"-crole={reader}"})
        yield RLS(alice, bob, reader, admin, as_reader)
        as_reader.dispose()
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
            for role in (alice, bob, reader):
                conn.execute(text(f"DROP OWNED BY {role}"))
                conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()


def read_docs(factory: Callable[[], Session], prep: Callable[[Session], Any]) -> Any:
    with factory() as s:
        prep(s)
        return counted(lambda: owners(s))


@pytest.fixture
def one_connection(rls: RLS) -> Iterator[Engine]:
    """An engine of its own with one connection: a session-level SET ROLE stays on it."""
    eng = create_engine(_root.PG_URL, pool_size=1, max_overflow=0)
    yield eng
    eng.dispose()


@pytest.mark.parametrize("local", [True, False], ids=["local", "session"])
def test_set_role_with_rls(
    rls: RLS, cache: YokedCache, one_connection: Engine, local: bool
) -> None:
    factory = sessions(one_connection, cache)

    def as_role(role: str) -> Callable[[Session], Any]:
        return lambda s: s.execute(text(f"SET {'LOCAL ' if local else ''}ROLE {role}"))

    assert read_docs(factory, as_role(rls.alice))[0] == [rls.alice]
    out, n = read_docs(factory, as_role(rls.bob))
    assert out == [rls.bob] and n > 0
    out, n = read_docs(factory, lambda s: s.execute(text("RESET ROLE")))
    assert out == [rls.alice, rls.bob, "alice", "bob"]


def test_set_role_with_vary_on_is_cached_per_role(rls: RLS, cache: YokedCache) -> None:
    factory = sessions(rls.engine, cache, vary_on=lambda s: s.info.get("role"))

    def as_role(role: str) -> Callable[[Session], Any]:
        def prep(s: Session) -> None:
            s.info["role"] = role
            s.execute(text(f"SET LOCAL ROLE {role}"))

        return prep

    read_docs(factory, as_role(rls.alice))
    assert read_docs(factory, as_role(rls.alice)) == ([rls.alice], 0)
    out, n = read_docs(factory, as_role(rls.bob))
    assert out == [rls.bob] and n > 0
    assert read_docs(factory, as_role(rls.bob)) == ([rls.bob], 0)


@pytest.mark.parametrize("how", ["text", "select"])
def test_set_config_with_rls(rls: RLS, cache: YokedCache, how: str) -> None:
    factory = sessions(rls.as_reader, cache)

    def as_user(user: str) -> Callable[[Session], Any]:
        if how == "text":
            return lambda s: s.execute(text(f"SELECT set_config('app.user', '{user}', true)"))
        return lambda s: s.execute(select(func.set_config("app.user", user, True)))

    assert read_docs(factory, as_user("alice"))[0] == ["alice"]
    out, n = read_docs(factory, as_user("bob"))
    assert out == ["bob"] and n > 0


def test_set_config_inside_a_cached_select_is_not_cached(rls: RLS, cache: YokedCache) -> None:
    factory = sessions(rls.as_reader, cache)

    def read(user: str) -> Callable[[Session], Any]:
        stmt = (
            select(Doc.owner)
            .where(func.set_config("app.user", user, True).is_not(None))
            .order_by(Doc.id)
        )
        return lambda s: counted(lambda: plain(s.scalars(stmt).all()))

    for _ in range(2):
        with factory() as s:
            _, n = read("alice")(s)
            assert n > 0  # its side effect (the setting) must happen every time


def test_set_config_with_vary_on_is_cached_per_user(rls: RLS, cache: YokedCache) -> None:
    factory = sessions(rls.as_reader, cache, vary_on=lambda s: s.info.get("user"))

    def as_user(user: str) -> Callable[[Session], Any]:
        def prep(s: Session) -> None:
            s.info["user"] = user
            s.execute(text("SELECT set_config('app.user', :u, true)"), {"u": user})

        return prep

    read_docs(factory, as_user("alice"))
    assert read_docs(factory, as_user("alice")) == (["alice"], 0)
    out, n = read_docs(factory, as_user("bob"))
    assert out == ["bob"] and n > 0
    assert read_docs(factory, as_user("bob")) == (["bob"], 0)


def test_instrument_session_vary_on(tenant_db: Tenants, cache: YokedCache) -> None:
    eng = tenant_db.engine()

    def factory() -> Session:
        return instrument_session(Session(eng), cache, vary_on=lambda s: s.info.get("tenant"))

    def on(schema: str) -> Callable[[Session], Any]:
        def prep(s: Session) -> None:
            s.info["tenant"] = schema
            s.execute(text(_use(tenant_db, schema, tenant_db.name == "postgresql")))

        return prep

    read_in(factory, on(tenant_db.a))
    assert read_in(factory, on(tenant_db.a)) == (ROWS["a"], 0)
    out, n = read_in(factory, on(tenant_db.b))
    assert (out, n > 0) == (ROWS["b"], True)


@pytest.mark.parametrize("vary", [False, True], ids=["plain", "vary_on"])
async def test_async_session_set_local_search_path(
    pg_tenants: Tenants, cache: YokedCache, vary: bool
) -> None:
    engine = create_async_engine(str(_root.PG_ASYNC_URL))
    kw: dict[str, Any] = {"vary_on": lambda s: s.info.get("tenant")} if vary else {}
    factory = async_sessionmaker(engine, sync_session_class=CachingSession, cache=cache, **kw)

    async def read(schema: str) -> tuple[Any, int]:
        async with factory() as s:
            s.sync_session.info["tenant"] = schema
            await s.execute(text(f"SET LOCAL search_path TO {schema}"))
            with Counter() as c:
                out = list((await s.scalars(select(Item.label).order_by(Item.id))).all())
            return out, c.n

    try:
        await read(pg_tenants.a)
        out, n = await read(pg_tenants.a)
        assert out == ROWS["a"] and (n == 0) == vary  # cached only when vary_on names it
        out, n = await read(pg_tenants.b)
        assert out == ROWS["b"] and n > 0
    finally:
        await engine.dispose()
        await cache.disconnect()


# -- @cached around tenant state ------------------------------------------------------------


@pytest.mark.parametrize("vary", [False, True], ids=["plain", "vary_on"])
def test_cached_function_under_set_state_is_not_stored(
    tenant_db: Tenants, cache: YokedCache, vary: bool
) -> None:
    """The function's key has no tenant in it: a read under SET state must not be stored."""
    kw: dict[str, Any] = {"vary_on": lambda s: s.info.get("tenant")} if vary else {}
    factory = sessions(tenant_db.engine(), cache, **kw)
    local = tenant_db.name == "postgresql"

    @cached
    def item_labels(s: Session) -> Any:
        return labels(s)

    for schema, rows in ((tenant_db.a, ROWS["a"]), (tenant_db.b, ROWS["b"])):
        for _ in range(2):  # warm the session cache too (vary_on), then call again
            with factory() as s:
                s.info["tenant"] = schema
                s.execute(text(_use(tenant_db, schema, local)))
                assert item_labels(s) == rows


def test_session_bound_to_a_connection_with_a_schema_map(
    tenant_db: Tenants, cache: YokedCache
) -> None:
    eng = tenant_db.engine()
    read_in(sessions(eng, cache))
    assert read_in(sessions(eng, cache)) == (ROWS["default"], 0)
    for _ in range(2):
        with eng.connect() as conn:
            conn.execution_options(schema_translate_map={None: tenant_db.a})
            out, n = read_in(sessions(conn, cache))
            assert out == ROWS["a"]
    assert n == 0  # the second connection with the same map: a hit


# -- the pure helpers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "postgresql", "scope"),
    [
        ("SELECT 1", True, None),
        ("UPDATE t SET x = 1", True, None),
        ("SET search_path TO a", True, "connection"),
        ("set local search_path to a", True, "transaction"),
        ("SET LOCAL sql_mode = ''", False, "connection"),  # MariaDB: LOCAL means SESSION
        ("/* tenant */ SET ROLE r", True, "connection"),
        ("SET LOCAL ROLE r", True, "transaction"),
        ("SET SESSION AUTHORIZATION r", True, "connection"),
        ("SET @tenant = 'a'", False, "connection"),
        ("USE tenant_a", False, "connection"),
        ("SET LOCAL ROLE r; SET search_path TO a", True, "connection"),
        ("SELECT set_config('app.user', 'alice', true)", True, "transaction"),
        ("SELECT set_config('app.user', 'alice', false)", True, "connection"),
        ("SELECT set_config(%(a)s, %(b)s, %(c)s)", True, "connection"),  # value unknown
        ("RESET ROLE", True, None),
    ],
)
def test_state_change(sql: str, postgresql: bool, scope: str | None) -> None:
    found = state_change(sql, postgresql)
    assert (found[0] if found else None) == scope


def test_engine_identity() -> None:
    url = "postgresql+psycopg://u:secret@h/db"
    same = [engine_identity(create_engine(url)) for _ in range(2)]
    assert same[0] == same[1]  # the same configuration: shared across processes
    assert "secret" not in same[0]
    other = {
        engine_identity(create_engine(url, connect_args={"options": "-csearch_path=a"})),
        engine_identity(create_engine(url, connect_args={"options": "-csearch_path=b"})),
        engine_identity(create_engine(url).execution_options(schema_translate_map={None: "a"})),
        engine_identity(create_engine(url + "?application_name=x")),
        engine_identity(create_engine("postgresql+psycopg://u:secret@h/db2")),
        engine_identity(create_engine(url, creator=lambda: None)),
    }
    assert len(other) == 6 and same[0] not in other
    assert engine_identity(create_engine(url, creator=lambda: None)).startswith(
        engine_identity(create_engine(url)).rsplit("|", 1)[0] + "|local:"
    )


def test_qualified_raw_write_invalidates_schema_mapped_reads(
    tenant_db: Tenants, cache: YokedCache
) -> None:
    """A raw ``UPDATE <tenant schema>.items`` (a console, a migration script spelled with the
    schema) invalidates what was read through a schema map or search_path."""
    base = tenant_db.engine()
    eng_a = base.execution_options(schema_translate_map={None: tenant_db.a})
    read_in(sessions(eng_a, cache))
    assert read_in(sessions(eng_a, cache)) == (ROWS["a"], 0)
    with sessions(base, cache)() as s:
        s.execute(
            text(f"UPDATE {tenant_db.a}.{Item.__tablename__} SET label = 'a-9' WHERE label = 'a-1'")
        )
        s.commit()
    try:
        out, n = read_in(sessions(eng_a, cache))
        assert (out, n > 0) == (["a-9"], True)
    finally:
        with base.begin() as conn:
            conn.execute(text(f"UPDATE {tenant_db.a}.{Item.__tablename__} SET label = 'a-1'"))


def test_in_memory_sqlite_engines_never_share_entries(cache: YokedCache) -> None:
    """Two ``create_engine("sqlite://")`` are two databases: the same URL is not the same data.
    An option engine shares its parent's pool, hence its database and entries."""
    engines = [create_engine("sqlite://") for _ in range(2)]
    try:
        for i, eng in enumerate(engines):
            TBase.metadata.create_all(eng)
            with eng.begin() as conn:
                conn.execute(Item.__table__.insert(), [{"id": 1, "label": f"db{i}"}])
        assert read_in(sessions(engines[0], cache)) == (["db0"], 1)
        assert read_in(sessions(engines[0], cache)) == (["db0"], 0)
        assert read_in(sessions(engines[1], cache)) == (["db1"], 1)
        option = engines[0].execution_options(stream_results=False)
        assert read_in(sessions(option, cache)) == (["db0"], 0)
    finally:
        for eng in engines:
            eng.dispose()


def test_engine_identity_survives_odd_options() -> None:
    eng = create_engine("sqlite://").execution_options(schema_translate_map=object())
    assert engine_identity(eng).startswith("sqlite|")
