"""Objects and results rebuilt from the cache carry the loader state SQLAlchemy's own loader
gives them: columns deferred by an option load on access, results of joined eager loads of
collections demand ``unique()`` and work with it. Each case runs the read in a plain Session
for the truth, then through a CachingSession twice (a miss, then a hit that sends no SQL).

Found by SQLAlchemy's ORM suite run with CachingSession swapped in (docs/sqlalchemy-suite.md).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import case, event, inspect, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, defer, joinedload, load_only, selectinload

from tests.orm.ormkit import Address, Employee, Env, Manager, User
from yokedcache_sa.orm import _compat_loading

SA_VERSION = tuple(int(p) for p in sqlalchemy.__version__.split(".")[:2])


def _deferred_state(env: Env, obj: Any, key: str) -> tuple[bool, Any, int]:
    """(was *key* loaded, its value, statements its access sent)."""
    loaded = key in obj.__dict__
    value, n = env.sql.run(lambda: getattr(obj, key))
    return loaded, value, n


def test_defer_option_column_loads_on_access(env: Env) -> None:
    read = lambda s: s.scalars(select(User).options(defer(User.name)).order_by(User.id)).first()  # noqa: E731

    def check(user: User, _n: int) -> Any:
        return _deferred_state(env, user, "name")

    env.three_ways(read, check)
    with env.Session() as s:  # the answer itself, not only agreement
        assert _deferred_state(env, env.cached(lambda: read(s)), "name") == (False, "alice", 1)


def test_load_only_leaves_the_rest_loadable(env: Env) -> None:
    def read(s: Session) -> Any:
        return s.scalars(select(User).options(load_only(User.id)).where(User.id == 3)).one()

    env.three_ways(read, lambda u, _n: (_deferred_state(env, u, "name"), u.age))


def test_deferred_column_of_eagerly_loaded_objects(env: Env) -> None:
    def read(s: Session) -> Any:
        stmt = (
            select(User)
            .options(selectinload(User.addresses).defer(Address.email))
            .where(User.id == 1)
        )
        return s.scalars(stmt).one()

    def check(user: User, _n: int) -> Any:
        return [_deferred_state(env, a, "email") for a in user.addresses]

    env.three_ways(read, check)


def test_deferred_subclass_column_of_a_polymorphic_load(env: Env) -> None:
    def read(s: Session) -> Any:
        stmt = select(Employee).options(defer(Manager.budget)).order_by(Employee.id)
        return s.scalars(stmt).all()

    def check(people: list[Employee], _n: int) -> Any:
        return [(type(p).__name__, p.name) for p in people] + [
            _deferred_state(env, people[1], "budget")
        ]

    env.three_ways(read, check)


def _joined_collection(s: Session) -> Any:
    stmt = (
        select(User, Address.id)
        .join(User.addresses)
        .options(joinedload(User.addresses))
        .order_by(User.id, Address.id)
    )
    return s.execute(stmt)


def test_joined_eager_collection_result_works_with_unique(env: Env) -> None:
    def check(result: Any, _n: int) -> Any:
        rows = result.unique().all()
        return [(u.id, [a.id for a in u.addresses], aid) for u, aid in rows]

    env.three_ways(_joined_collection, check)


@pytest.mark.parametrize("db", ["sqlite"], indirect=True)
def test_joined_eager_collection_result_demands_unique(env: Env) -> None:
    def check(result: Any, _n: int) -> Any:
        with pytest.raises(InvalidRequestError, match="unique"):
            result.all()
        return "raised"

    env.three_ways(_joined_collection, check)


def test_load_event_fires_once_per_object(env: Env) -> None:
    """A miss runs the statement in the caller's session: ``load`` (and so
    ``@reconstructor``) fires for the caller's objects only, once each, as without the
    cache; a hit fires it for the objects it builds."""
    loaded: list[int] = []

    def on_load(target: User, _context: Any) -> None:
        loaded.append(target.id)

    event.listen(User, "load", on_load)
    try:

        def check(users: list[User], _n: int) -> Any:
            out = sorted(loaded)
            loaded.clear()
            return out

        env.three_ways(lambda s: s.scalars(select(User).order_by(User.id)).all(), check)
    finally:
        event.remove(User, "load", on_load)


def test_refresh_event_of_a_reloaded_object_on_a_miss(env: Env) -> None:
    """An object already in the session that a miss's rows complete gets SQLAlchemy's
    ``refresh`` event, not ``load``; the result is not stored (that object's other
    attributes come from an earlier read), so the next session stores it."""
    seen: list[Any] = []
    listeners: list[tuple[str, Callable[..., Any]]] = [
        ("load", lambda target, _c: seen.append(("load", target.id))),
        ("refresh", lambda target, _c, attrs: seen.append(("refresh", target.id))),
    ]
    for name, fn in listeners:
        event.listen(User, name, fn)
    read = lambda s: s.scalars(select(User).where(User.id <= 2).order_by(User.id)).all()  # noqa: E731
    try:
        answers = []
        for factory in (env.Plain, env.Session):
            with factory() as s:
                alice = s.get(User, 1)
                assert alice is not None
                s.expire(alice, ["name"])
                seen.clear()
                users = env.queried(partial(read, s))
                answers.append(([u.name for u in users], sorted(seen)))
        assert answers[1] == answers[0] == (["alice", "bob"], [("load", 2), ("refresh", 1)])
        env.fresh_read(read)  # not stored by the session above: a miss, which stores
        env.hit(read)
    finally:
        for name, fn in listeners:
            event.remove(User, name, fn)


def test_unflushed_changes_are_never_stored(env: Env) -> None:
    """With autoflush off, a query returns the session's changed object (SQLAlchemy's
    identity map wins); that result must not become the entry other sessions read."""
    read = lambda s: s.scalars(select(User).order_by(User.id)).all()  # noqa: E731
    with env.Session(autoflush=False) as s:
        s.scalars(select(User).where(User.id == 1)).one().name = "changed"
        assert env.queried(lambda: read(s))[0].name == "changed"
    truth = env.truth(read)
    assert truth[0][1][2] == ("name", "alice")
    assert env.fresh_read(read) == truth  # nothing was stored: a miss, which stores
    assert env.hit(read) == truth


def test_selectin_post_load_with_a_joined_collection_served_from_the_cache(env: Env) -> None:
    """Two reads whose selectin post load is the same statement: the second read's post
    load (a joined eager collection inside it) is a hit, and SQLAlchemy's selectin loader
    must be told to call ``unique()`` on it, as on the database's result."""

    def read(address_id: int) -> Callable[[Session], Any]:
        def go(s: Session) -> Any:
            stmt = (
                select(Address)
                .where(Address.id == address_id)
                .options(selectinload(Address.user).joinedload(User.tags))
            )
            a = s.scalars(stmt).one()
            return (a.id, a.user.id, [t.id for t in a.user.tags])

        return go

    assert env.truth(read(1)) == (1, 1, [1, 2])
    assert env.fresh_read(read(1)) == (1, 1, [1, 2])  # stores the post load's entry too
    with env.Session() as s:
        # the outer read misses; its post load (user 1 with its tags) is served
        out, n = env.sql.run(lambda: read(2)(s))
    assert out == (2, 1, [1, 2])
    # SQLAlchemy releases whose loaders never read QueryContext.requires_uniquing (2.0.30,
    # the floor) get no such mark: there the post load goes to the database instead
    served = _compat_loading._READS_REQUIRES_UNIQUING
    assert n == (1 if served else 2), env.sql.statements[-n:]


def _nested_state(users: Any) -> list[tuple[str, list[str], bool]]:
    return [
        (u.name, [a.email for a in u.addresses], "user" in sa_inspect(u.addresses[0]).unloaded)
        for u in users
        if u.addresses
    ]


def test_a_post_load_that_queues_nested_post_loads_is_not_served(env: Env) -> None:
    """A selectin post load whose objects queue a nested post load
    (``selectinload(User.addresses).selectinload(Address.user)``) runs on the database: SQLAlchemy
    queues the nested load while it builds the post load's objects, so served from the cache
    the nested relationship was left to lazy-load. Another top-level query with the same post
    load used to hit it (found by SQLAlchemy's NestedOptsUnderSelectinPolyCachedTest, which
    saw one SELECT more than a plain Session)."""
    chain = selectinload(User.addresses).selectinload(Address.user)
    first = select(User).where(User.id <= 2).options(chain)
    other = select(User).where(User.id <= 2, User.id > 0).options(chain)
    with env.Session() as s:
        env.queried(lambda: s.scalars(first).all())
    answers = []
    for factory in (env.Plain, env.Session):
        with factory() as s:
            answers.append(_nested_state(s.scalars(other).all()))
    assert answers[1] == answers[0] and answers[0] and not any(u for *_, u in answers[0])


def test_post_loads_reach_the_sessions_other_listeners_on_every_read(env: Env) -> None:
    """With a ``do_orm_execute`` listener of the application on the session, a read whose run
    includes post loads is not served whole from the cache: the listener sees (and may shape)
    each post load, every time, as with a plain Session (SQLAlchemy's
    test_user_option_propagation). The post loads themselves are cached."""
    stmt = select(User).options(selectinload(User.addresses)).order_by(User.id)
    seen: list[bool] = []
    answers = []
    for factory in (env.Plain, env.Session, env.Session):
        with factory() as s:
            event.listen(s, "do_orm_execute", lambda ox: seen.append(ox.is_relationship_load))
            users = s.scalars(stmt).all()
            answers.append(([len(u.addresses) for u in users], list(seen)))
        seen.clear()
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][1] == [False, True]
    env.warm(lambda s: s.scalars(stmt).all())  # without such listeners: stored, served whole


def test_rows_target_columns_by_the_objects_selected(env: Env) -> None:
    """Rows of a result from the cache are found by the column objects and entities the
    statement selected, as SQLAlchemy's are (``row._mapping[User.name]``), also when each
    read builds its statement (and its ``case()``) anew; the stored metadata used to keep
    the names only."""
    users = inspect(User).persist_selectable

    def read(s: Session) -> Any:
        thing = case((User.id > 9, 1), else_=2)
        stmt = select(User, Address.email, thing, User.name).join(Address).where(User.id == 1)
        row = s.execute(stmt).first()
        m = row._mapping
        return [m[thing], m[User.name], m[users.c.name], m["name"], m[User].name, m[Address.email]]

    env.three_ways(read, lambda out, n: out)


@pytest.mark.xfail(
    SA_VERSION < (2, 1),
    strict=True,
    reason="SQLAlchemy 2.0's result metadata has no _create_unique_filters hook to refuse "
    "yield_per through (2.0 refuses it in its ORM loading context, which a hit has not)",
)
def test_unique_with_yield_per_is_refused_on_a_hit(env: Env) -> None:
    """``result.unique().yield_per(n)`` raises SQLAlchemy's error on a result from the cache
    too (the stored metadata's filters did not check)."""
    stmt = select(User).order_by(User.id)
    env.warm(lambda s: s.scalars(stmt).all())
    for factory in (env.Plain, env.Session):
        with factory() as s:
            result = s.execute(stmt).unique().yield_per(2)
            try:
                with pytest.raises(InvalidRequestError, match="yield_per feature in conjunction"):
                    next(result)
            finally:
                result.close()  # also when it did not raise: an open cursor locks SQLite


@pytest.mark.parametrize("how", ["close", "expunge_all"])
def test_a_result_fetched_after_close_raises_as_unbuffered(env: Env, how: str) -> None:
    """An ORM result builds its objects as it is fetched: fetching it after ``close()`` or
    ``expunge_all()`` raises SQLAlchemy's error, on a miss and on a hit (the cache's results
    used to be built up front and returned detached objects); ``prebuffer_rows`` keeps them."""
    stmt = select(User).order_by(User.id)
    for factory in (env.Plain, env.Session, env.Session):
        s = factory()
        result = s.execute(stmt)
        getattr(s, how)()
        with pytest.raises(InvalidRequestError, match="identity map is no longer valid"):
            result.all()
        result.close()  # SQLAlchemy 2.0 leaves the cursor open (SQLite's table lock with it)
        s.close()
    with env.Session() as s:
        result = s.execute(stmt, execution_options={"prebuffer_rows": True})
        getattr(s, how)()
        assert sa_inspect(result.scalars().all()[0]).detached
