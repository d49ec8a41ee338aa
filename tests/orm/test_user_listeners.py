"""User code that shapes queries runs on the cached path too.

SQLAlchemy's documented recipe for global filters (tenants, soft delete) is a ``do_orm_execute``
listener on the sessionmaker or a Session subclass that adds ``with_loader_criteria`` from
``session.info``. Such listeners are registered after the cache's own, so the cache must let
them shape the statement before it builds a key or runs a miss.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import event, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import (
    ORMExecuteState,
    Session,
    immediateload,
    lazyload,
    raiseload,
    scoped_session,
    selectinload,
    sessionmaker,
    with_loader_criteria,
)

from tests.orm.ormkit import Address, Env, User
from tests.orm.test_transactions import ASYNC_DBS, AsyncEnv, aenv  # noqa: F401  (fixture)
from yokedcache_sa.orm import CachingSession, state_of

SA_VERSION = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2])


def _min_age_filter(ox: ORMExecuteState) -> None:
    if ox.is_select and not ox.is_column_load and not ox.is_relationship_load:
        min_age = ox.session.info.get("min_age", 0)
        ox.statement = ox.statement.options(
            with_loader_criteria(User, lambda cls: cls.age >= min_age, include_aliases=True)
        )


def _users(s: Session) -> Any:
    return [u.name for u in s.scalars(select(User).order_by(User.id))]


def _check_tenants(env: Env, factory: Any) -> None:
    def read(min_age: int) -> Any:
        with factory(info={"min_age": min_age}) as s:
            return _users(s)

    truth_30 = ["alice", "dave"]
    truth_40 = ["dave"]
    assert env.queried(lambda: read(30)) == truth_30
    assert env.cached(lambda: read(30)) == truth_30
    # another tenant: never the first tenant's rows, and cached on its own key
    assert env.queried(lambda: read(40)) == truth_40
    assert env.cached(lambda: read(40)) == truth_40
    assert env.cached(lambda: read(30)) == truth_30


def test_sessionmaker_listener_shapes_hits_and_misses(env: Env) -> None:
    factory = sessionmaker(env.engine, class_=CachingSession, cache=env.cache)
    event.listen(factory, "do_orm_execute", _min_age_filter)
    _check_tenants(env, factory)


def test_session_subclass_listener_shapes_hits_and_misses(env: Env) -> None:
    class TenantSession(CachingSession):
        pass

    event.listen(TenantSession, "do_orm_execute", _min_age_filter)
    factory = sessionmaker(env.engine, class_=TenantSession, cache=env.cache)
    _check_tenants(env, factory)


def test_instance_listener_shapes_hits_and_misses(env: Env) -> None:
    def factory(info: dict[str, Any]) -> CachingSession:
        s = CachingSession(env.engine, cache=env.cache, info=info)
        event.listen(s, "do_orm_execute", _min_age_filter)
        return s

    _check_tenants(env, factory)


def test_listener_runs_once_per_execution(env: Env) -> None:
    calls: list[bool] = []
    factory = sessionmaker(env.engine, class_=CachingSession, cache=env.cache)

    @event.listens_for(factory, "do_orm_execute")
    def _count(ox: ORMExecuteState) -> None:
        calls.append(ox.is_select)

    for _ in range(2):
        with factory() as s:
            s.get(User, 1)
    assert calls == [True, True]


def test_listener_result_wins(env: Env) -> None:
    """A listener that returns its own result (e.g. a cache of its own) is honoured."""
    factory = sessionmaker(env.engine, class_=CachingSession, cache=env.cache)

    @event.listens_for(factory, "do_orm_execute")
    def _own(ox: ORMExecuteState) -> Any:
        if ox.is_select and ox.execution_options.get("mine"):
            return ox.invoke_statement().freeze()()
        return None

    with factory() as s:
        rows = s.scalars(select(User.name).order_by(User.id), execution_options={"mine": 1})
        assert rows.all() == ["alice", "bob", "carol", "dave"]


def test_loader_criteria_reach_lazy_loads_of_cached_objects(env: Env) -> None:
    """``with_loader_criteria`` propagates to lazy loads of the objects it loaded — also when
    those objects were built from a cache entry."""
    factory = sessionmaker(env.engine, class_=CachingSession, cache=env.cache)

    @event.listens_for(factory, "do_orm_execute")
    def _no_example(ox: ORMExecuteState) -> None:
        if ox.is_select and not ox.is_column_load and not ox.is_relationship_load:
            ox.statement = ox.statement.options(
                with_loader_criteria(Address, lambda cls: cls.email != "a2@x")
            )

    def read() -> Any:
        with factory() as s:
            u = s.scalars(select(User).where(User.id == 1)).one()
            return [a.email for a in u.addresses]

    expected = ["a1@x"]
    assert env.queried(read) == expected
    # the User is a hit built from the entry, and its lazy load keeps the criteria
    assert env.cached(read) == expected


def test_relationship_and_criteria_reach_lazy_loads_of_cached_objects(env: Env) -> None:
    def read(s: Session) -> Any:
        stmt = (
            select(User)
            .where(User.id == 1)
            .options(lazyload(User.addresses.and_(Address.email != "a2@x")))
        )
        return [a.email for a in s.scalars(stmt).one().addresses]

    with env.Session() as s:
        assert env.queried(lambda: read(s)) == ["a1@x"]
    with env.Session() as s:
        # fenced off: objects rebuilt from an entry could not carry the per-object loader
        # that applies the criteria, so this statement is not served from the cache
        assert env.queried(lambda: read(s)) == ["a1@x"]


def test_raiseload_raises_on_cached_objects(env: Env) -> None:
    stmt = select(User).where(User.id == 1).options(raiseload(User.addresses))
    for _ in range(2):
        with env.Session() as s:
            u = env.queried(lambda: s.scalars(stmt).one())  # fenced off, as above
            with pytest.raises(InvalidRequestError, match="raise"):
                _ = u.addresses


@ASYNC_DBS
async def test_async_sessionmaker_listener_shapes_hits_and_misses(
    aenv: AsyncEnv,  # noqa: F811  (the fixture imported above)
) -> None:
    """The same through an AsyncSession: the listener sits on the sync session class."""

    class TenantSession(CachingSession):
        pass

    event.listen(TenantSession, "do_orm_execute", _min_age_filter)
    factory = async_sessionmaker(
        aenv.engine, sync_session_class=TenantSession, cache=aenv.Session.kw["cache"]
    )

    async def read(min_age: int) -> Any:
        async with factory(info={"min_age": min_age}) as s:
            return list((await s.scalars(select(User.name).order_by(User.id))).all())

    assert await aenv.queried(read(30)) == ["alice", "dave"]
    assert await aenv.cached(read(30)) == ["alice", "dave"]
    assert await aenv.queried(read(40)) == ["dave"]
    assert await aenv.cached(read(40)) == ["dave"]


def test_session_info_is_the_users(env: Env) -> None:
    """A new caching session's ``.info`` is empty, as SQLAlchemy's is: the cache keeps its
    per-session state where user code does not see it."""
    with env.Session() as s:
        assert s.info == {}
        s.info["tenant"] = "a"
        s.get(User, 1)
        assert s.info == {"tenant": "a"}


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_caching_session_adds_no_public_attribute(env: Env) -> None:
    """CachingSession adds no public name to a Session's surface (scoped_session proxies
    only Session's own: one it lacked broke ``scoped_session`` parity); the state is reached
    with ``state_of()``, also through a scoped_session. No ``__getattr__`` either: it would put
    every attribute read of the session (SQLAlchemy's own, on every statement) through a
    slower lookup."""
    added = {n for n in vars(CachingSession) if not n.startswith("_")} - set(dir(Session))
    assert added == set()
    scoped = scoped_session(sessionmaker(env.engine, class_=CachingSession, cache=env.cache))
    try:
        st = state_of(scoped)
        assert st is not None and st is state_of(scoped())
        assert not hasattr(scoped(), "yokedcache")
        assert "__getattr__" not in vars(CachingSession)
    finally:
        scoped.remove()


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_get_bind_override_sees_what_a_plain_session_passes(env: Env) -> None:
    """A Session subclass overriding ``get_bind`` (the documented way to route reads) gets
    the arguments SQLAlchemy gives it, on a miss too: no private marker of the cache."""
    seen: list[frozenset[str]] = []

    def get_bind(self: Session, mapper: Any = None, **kw: Any) -> Any:
        seen.append(frozenset(kw) | ({"mapper"} if mapper is not None else set()))
        return Session.get_bind(self, mapper, **kw)

    Routing = type("Routing", (CachingSession,), {"get_bind": get_bind})
    PlainRouting = type("PlainRouting", (Session,), {"get_bind": get_bind})

    read = lambda s: s.scalars(select(User).order_by(User.id)).all()  # noqa: E731
    with PlainRouting(env.engine) as s:
        read(s)
    plain = set(seen)
    seen.clear()
    with Routing(env.engine, cache=env.cache) as s:
        env.queried(lambda: read(s))
    assert seen and set(seen) <= plain, (seen, plain)


def test_get_bind_override_is_asked_once_per_statement(env: Env) -> None:
    """A ``get_bind`` override (a router choosing a replica) is called once per statement,
    as by a plain Session, on a miss and on a hit: the statement runs on the bind its key
    was made for. (A miss used to ask it three times: for the key, to begin, to run.)"""
    calls: list[str] = []

    def get_bind(self: Session, mapper: Any = None, **kw: Any) -> Any:
        calls.append(kw["clause"].__class__.__name__)
        return Session.get_bind(self, mapper, **kw)

    Routing = type("Routing", (CachingSession,), {"get_bind": get_bind})
    PlainRouting = type("PlainRouting", (Session,), {"get_bind": get_bind})
    read = lambda s: s.scalars(select(User).where(User.id == 2)).all()  # noqa: E731
    with PlainRouting(env.engine) as s:
        read(s)
    assert calls == ["Select"]
    for expect in (env.queried, env.cached):
        calls.clear()
        with Routing(env.engine, cache=env.cache) as s:
            assert [u.name for u in expect(lambda: read(s))] == ["bob"]
        assert calls == ["Select"], expect.__name__


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_post_loads_of_a_miss_reach_listeners_as_without_the_cache(env: Env) -> None:
    """A miss's selectin post load reaches the user's ``do_orm_execute`` listener with the
    load options a plain Session gives it (autoflush on, marked as a post load)."""
    seen: list[tuple[bool, bool]] = []

    def record(ox: ORMExecuteState) -> None:
        if ox.is_select:
            seen.append((ox.load_options._autoflush, ox.is_relationship_load))

    read = lambda s: s.scalars(select(User).options(selectinload(User.addresses))).all()  # noqa: E731
    answers = []
    for factory in (env.Plain, env.Session):
        with factory() as s:
            event.listen(s, "do_orm_execute", record)
            env.queried(partial(read, s))
        answers.append(list(seen))
        seen.clear()
    assert answers[1] == answers[0] == [(True, False), (True, True)]


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
@pytest.mark.parametrize("loader", [selectinload, immediateload])
def test_top_level_yield_per_stays_out_of_post_loads(env: Env, loader: Any) -> None:
    """``yield_per`` of the top-level query is not passed to its post loads (SQLAlchemy
    #13301), also with a ``do_orm_execute`` listener present: the cache ran the statement
    with the options of SQLAlchemy's pre-listener pass, in which the top-level query's
    options are merged, and an immediate load then refused its own ``unique()``."""
    stmt = select(User).options(loader(User.addresses)).execution_options(yield_per=5)
    answers: list[Any] = []
    for factory in (env.Plain, env.Session):
        with factory() as s:
            event.listen(s, "do_orm_execute", lambda ox: None)
            try:
                users = s.scalars(stmt).all()
            except InvalidRequestError as exc:  # SQLAlchemy 2.0 (before #13301): a plain
                answers.append(str(exc))  # Session raises too, and so must the cache
            else:
                answers.append(sorted((u.name, len(u.addresses)) for u in users))
    if SA_VERSION < (2, 1) and isinstance(answers[0], str):
        # SQLAlchemy 2.0 passes yield_per on to the post loads (#13301) and a plain Session
        # raises; the cache runs them with their own options, as 2.1 does
        assert isinstance(answers[1], list) and len(answers[1]) == 4
    else:
        assert answers[1] == answers[0] and len(answers[0]) == 4
