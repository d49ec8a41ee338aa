"""Cached ORM reads: hits send no SQL, results equal uncached results, identity and eager
loads behave as without the cache, and the reads that must never be cached are not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from decimal import Decimal
from functools import partial
from typing import Any

import pytest
from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.exc import (
    InvalidRequestError,
    LegacyAPIWarning,
    MultipleResultsFound,
    NoResultFound,
    StatementError,
)
from sqlalchemy.orm import (
    Session,
    aliased,
    joinedload,
    selectinload,
    subqueryload,
    with_polymorphic,
)

from tests.orm.ormkit import (
    UID1,
    Address,
    Employee,
    Env,
    Manager,
    OrderLine,
    Status,
    Tag,
    Thing,
    User,
    plain,
    user_tags,
)
from yokedcache_sa.orm import FromCache, NoCache

pytestmark = pytest.mark.drivers("sync", "async", "listen")

Read = Callable[[Session], Any]

# -- the drivers ------------------------------------------------------------------------------


def test_env_reads_through_its_driver(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The harness itself: under ``async`` the body runs in SQLAlchemy's greenlet on the async
    DBAPI, and the cache is consulted through its async methods (and never the sync ones)."""
    calls: list[str] = []
    sync_lookup, async_lookup = env.cache.lookup_sync, env.cache.lookup

    def lookup_sync(*a: Any, **kw: Any) -> Any:
        calls.append("sync")
        return sync_lookup(*a, **kw)

    async def lookup(*a: Any, **kw: Any) -> Any:
        calls.append("async")
        return await async_lookup(*a, **kw)

    monkeypatch.setattr(env.cache, "lookup_sync", lookup_sync)
    monkeypatch.setattr(env.cache, "lookup", lookup)
    assert env.engine.dialect.is_async is (env.driver == "async")
    assert env.warm(lambda s: s.get(User, 1).name) == "alice"
    assert calls == [env.driver] * 2


# -- hits for every read API ----------------------------------------------------------------


READ_APIS: dict[str, Read] = {
    "query.filter.first": lambda s: s.query(User).filter(User.id == 1).first(),
    "query.filter.all": lambda s: s.query(User).filter(User.age > 20).order_by(User.id).all(),
    "query.count": lambda s: s.query(User).filter(User.age.is_not(None)).count(),
    "query.filter_by.one": lambda s: s.query(User).filter_by(name="carol").one(),
    "query.columns": lambda s: s.query(User.id, User.name).order_by(User.id).all(),
    "query.scalar": lambda s: s.query(func.count(User.id)).scalar(),
    "select.scalars.all": lambda s: s.scalars(select(User).order_by(User.id)).all(),
    "select.scalars.first": lambda s: s.scalars(select(User).where(User.id == 2)).first(),
    "select.scalar": lambda s: s.scalar(select(User.name).where(User.id == 3)),
    "select.execute.all": lambda s: s.execute(select(User).order_by(User.id)).all(),
    "select.execute.mappings": lambda s: [
        dict(m) for m in s.execute(select(User.id, User.name).order_by(User.id)).mappings()
    ],
    "select.execute.columns": lambda s: s.execute(
        select(User.name, User.age).order_by(User.name)
    ).all(),
    "session.get": lambda s: s.get(User, 3),
    "session.get.missing": lambda s: s.get(User, 99),
    "session.get.composite": lambda s: s.get(OrderLine, (1, 2)),
    "session.get.subclass": lambda s: s.get(Manager, 2),
}


@pytest.mark.parametrize("api", list(READ_APIS))
def test_read_api_is_served_from_cache(env: Env, api: str) -> None:
    read = READ_APIS[api]
    truth = env.truth(read)
    assert env.warm(read) == truth  # miss, then a hit with 0 statements


def test_legacy_query_get_is_cached(env: Env) -> None:
    def read(s: Session) -> Any:
        with pytest.warns(LegacyAPIWarning):
            return s.query(User).get(2)

    assert env.warm(read) == env.truth(lambda s: s.get(User, 2))


def test_different_bound_values_are_different_entries(env: Env) -> None:
    def by_id(i: int) -> Read:
        return lambda s: s.scalars(select(User.name).where(User.id == i)).all()

    def by_ids(ids: list[int]) -> Read:
        return lambda s: s.scalars(
            select(User.name).where(User.id.in_(ids)).order_by(User.id)
        ).all()

    assert env.warm(by_id(1)) == ["alice"]
    assert env.fresh_read(by_id(2)) == ["bob"]
    assert env.warm(by_ids([1, 2])) == ["alice", "bob"]
    assert env.fresh_read(by_ids([1, 3])) == ["alice", "carol"]
    assert env.fresh_read(by_ids([1, 3, 4])) == ["alice", "carol", "dave"]
    assert env.hit(by_id(2)) == ["bob"]
    assert env.hit(by_ids([1, 3])) == ["alice", "carol"]


def test_same_statement_in_one_session_hits(env: Env) -> None:
    with env.Session() as s:
        first = env.queried(lambda: s.scalars(select(User.name).order_by(User.id)).all())
        again = env.cached(lambda: s.scalars(select(User.name).order_by(User.id)).all())
        assert first == again == ["alice", "bob", "carol", "dave"]


# -- identity ----------------------------------------------------------------------------------


def test_cached_objects_are_the_identity_map_objects(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(User).order_by(User.id)).all())
    env.warm(lambda s: s.query(User).filter(User.id == 1).first())
    env.warm(lambda s: s.get(User, 1))
    with env.Session() as s:
        users = env.cached(lambda: s.scalars(select(User).order_by(User.id)).all())
        one = env.cached(lambda: s.query(User).filter(User.id == 1).first())
        got = env.cached(lambda: s.get(User, 1))
        assert one is users[0]
        assert got is users[0]
        assert users[0] in s
        assert users[0] is s.identity_map[s.identity_key(User, 1)]
        assert not s.dirty and not s.new


def test_object_loaded_before_is_reused_by_a_hit(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(User).where(User.age > 20).order_by(User.id)).all())
    with env.Session() as s:
        carol = s.get(User, 3)  # a miss: loaded from the database
        users = env.cached(
            lambda: s.scalars(select(User).where(User.age > 20).order_by(User.id)).all()
        )
        assert carol in users
        assert users[1] is carol


def test_objects_from_a_hit_can_be_modified_and_committed(env: Env) -> None:
    env.warm(lambda s: s.get(User, 2))
    with env.Session() as s:
        bob = env.cached(lambda: s.get(User, 2))
        bob.age = 50
        s.commit()
    assert env.truth(lambda s: s.get(User, 2).age) == 50
    assert env.fresh_read(lambda s: s.get(User, 2).age) == 50


# -- eager loads ------------------------------------------------------------------------------


def _emails(users: list[User]) -> list[list[str]]:
    return [[a.email for a in u.addresses] for u in users]


def test_joinedload_hit_still_requires_unique(env: Env) -> None:
    stmt = select(User).options(joinedload(User.addresses)).order_by(User.id)
    expected = [["a1@x", "a2@x"], [], ["c@x"], []]
    with env.Session() as s:
        users = env.queried(lambda: s.execute(stmt).unique().scalars().all())
        assert _emails(users) == expected
    # uncached (plain Session), then from the cache: the same error
    factories: list[tuple[Callable[[], Session], Callable[..., Any]]] = [
        (env.Plain, env.queried),
        (env.Session, env.cached),
    ]
    for factory, expect in factories:
        with factory() as plain_or_caching:

            def go(s: Session = plain_or_caching) -> None:
                with pytest.raises(InvalidRequestError, match="unique"):
                    s.execute(stmt).scalars().all()

            expect(go)
    with env.Session() as s:
        users = env.cached(lambda: s.execute(stmt).unique().scalars().all())
        assert env.cached(lambda: _emails(users)) == expected


@pytest.mark.parametrize("loader", [selectinload, subqueryload, joinedload])
def test_eager_loaded_relationships_come_from_the_cache(env: Env, loader: Any) -> None:
    def read(s: Session) -> Any:
        users = (
            s.scalars(
                select(User).options(loader(User.addresses), loader(User.tags)).order_by(User.id)
            )
            .unique()
            .all()
        )
        return [(u.name, [a.email for a in u.addresses], [t.name for t in u.tags]) for u in users]

    expected = [
        ("alice", ["a1@x", "a2@x"], ["red", "blue"]),
        ("bob", [], []),
        ("carol", ["c@x"], ["blue"]),
        ("dave", [], []),
    ]
    assert env.truth(read) == expected
    assert env.warm(read) == expected


def test_many_to_one_eager_load_from_cache(env: Env) -> None:
    def read(s: Session) -> Any:
        rows = s.scalars(select(Address).options(selectinload(Address.user)).order_by(Address.id))
        return [(a.email, a.user.name) for a in rows]

    assert env.warm(read) == [("a1@x", "alice"), ("a2@x", "alice"), ("c@x", "carol")]
    with env.Session() as s:
        addrs = env.cached(
            lambda: s.scalars(
                select(Address).options(selectinload(Address.user)).order_by(Address.id)
            ).all()
        )
        assert addrs[0].user is addrs[1].user is s.get(User, 1)


def _lazy_read(s: Session) -> Any:
    u = s.get(User, 1)
    return [a.email for a in u.addresses], [t.name for t in u.tags]


def test_lazy_loads_return_the_right_rows(env: Env) -> None:
    env.warm(lambda s: s.get(User, 1))
    for _ in range(2):
        with env.Session() as s:
            assert _lazy_read(s) == (["a1@x", "a2@x"], ["red", "blue"])
    with env.Session() as s:
        alice = s.get(User, 1)
        alice.tags.pop()
        s.add(Address(id=7, user_id=1, email="new@x"))
        s.commit()
    with env.Session() as s:
        assert _lazy_read(s) == (["a1@x", "a2@x", "new@x"], ["red"])


def test_lazy_loads_are_cached(env: Env) -> None:
    assert env.warm(_lazy_read) == (["a1@x", "a2@x"], ["red", "blue"])


# -- one() / one_or_none() ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "call", "error"),
    [
        (User.id > 0, "one", MultipleResultsFound),
        (User.id > 100, "one", NoResultFound),
        (User.id > 0, "one_or_none", MultipleResultsFound),
    ],
    ids=["one-many", "one-none", "one_or_none-many"],
)
def test_one_errors_are_raised_from_cache(
    env: Env, where: Any, call: str, error: type[Exception]
) -> None:
    stmt = select(User).where(where)
    for expect in (env.queried, env.cached, env.cached):
        with env.Session() as s:

            def go(s: Session = s) -> None:
                with pytest.raises(error):
                    getattr(s.scalars(stmt), call)()

            expect(go)
    with env.Session() as s, pytest.raises(error):
        getattr(s.query(User).filter(where), call)()


def test_one_or_none_none_and_one_from_cache(env: Env) -> None:
    assert env.warm(lambda s: s.scalars(select(User).where(User.id == 42)).one_or_none()) is None
    assert env.warm(lambda s: s.query(User).filter(User.id == 2).one().name) == "bob"


# -- pending changes are never overwritten by cached data --------------------------------------


def test_pending_changes_survive_a_hit_without_autoflush(env: Env) -> None:
    def read(s: Session) -> Any:
        return s.scalars(select(User).order_by(User.id)).all()

    env.warm(read)
    env.warm(lambda s: s.get(User, 1))
    with env.Session(autoflush=False) as s:
        alice = env.cached(lambda: s.get(User, 1))
        alice.name = "changed"
        users = env.cached(lambda: read(s))
        assert users[0] is alice
        assert alice.name == "changed"
        assert alice in s.dirty
        s.rollback()
    assert env.hit(lambda s: s.get(User, 1).name) == "alice"


def test_pending_changes_with_autoflush_bypass_the_cache(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(User.name).order_by(User.id)).all())
    env.warm(lambda s: s.scalars(select(Tag.name).order_by(Tag.id)).all())
    with env.Session() as s:
        alice = env.queried(lambda: s.get(User, 1))
        alice.name = "changed"
        # the autoflush writes users: this read bypasses and sees the session's own change
        names = env.queried(lambda: s.scalars(select(User.name).order_by(User.id)).all())
        assert names == ["changed", "bob", "carol", "dave"]
        # other tables still hit
        assert env.cached(lambda: s.scalars(select(Tag.name).order_by(Tag.id)).all()) == [
            "red",
            "blue",
        ]
        s.rollback()
    assert env.hit(lambda s: s.scalars(select(User.name).order_by(User.id)).all())[0] == "alice"


def test_new_pending_object_is_not_replaced(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(Tag).order_by(Tag.id)).all())
    with env.Session(autoflush=False) as s:
        t = Tag(id=9, name="green")
        s.add(t)
        tags = env.cached(lambda: s.scalars(select(Tag).order_by(Tag.id)).all())
        assert [x.name for x in tags] == ["red", "blue"]  # the pending one is not flushed
        assert t in s.new
        s.rollback()


# -- reads that are never cached --------------------------------------------------------------

NEVER: dict[str, Read] = {
    "with_for_update": lambda s: s.scalars(
        select(User).where(User.id == 1).with_for_update()
    ).all(),
    "query.with_for_update": lambda s: s.query(User).filter(User.id == 1).with_for_update().all(),
    "populate_existing": lambda s: s.scalars(
        select(User).where(User.id == 1).execution_options(populate_existing=True)
    ).all(),
    "query.populate_existing": lambda s: (
        s.query(User).populate_existing().filter(User.id == 1).all()
    ),
    "yield_per": lambda s: [
        u
        for part in s.scalars(select(User).execution_options(yield_per=2)).partitions()
        for u in part
    ],
    "query.yield_per": lambda s: list(s.query(User).yield_per(2)),
    "NoCache": lambda s: s.scalars(select(User).where(User.id == 1).options(NoCache())).all(),
    "query.no_cache": lambda s: s.query(User).filter(User.id == 1).no_cache().all(),  # type: ignore[attr-defined]
    "yokedcache=False": lambda s: s.scalars(
        select(User).where(User.id == 1).execution_options(yokedcache=False)
    ).all(),
    "yokedcache.enabled=False": lambda s: s.scalars(
        select(User).where(User.id == 1).execution_options(yokedcache={"enabled": False})
    ).all(),
    "session.execute.yokedcache=False": lambda s: s.scalars(
        select(User).where(User.id == 1), execution_options={"yokedcache": False}
    ).all(),
}


@pytest.mark.parametrize("how", list(NEVER))
def test_never_cached(env: Env, how: str) -> None:
    read = NEVER[how]
    # the plain version of the statement is cached, so a stray hit would show
    env.warm(lambda s: s.scalars(select(User).where(User.id == 1)).all())
    env.warm(lambda s: s.scalars(select(User)).all())
    truth = env.truth(read)
    for _ in range(3):
        assert env.fresh_read(read) == truth


@pytest.mark.drivers("sync")  # asyncpg refuses READ UNCOMMITTED; the check is driver-blind
def test_read_uncommitted_sessions_never_cache(env: Env) -> None:
    def read(s: Session) -> Any:
        return s.scalars(select(User.name).order_by(User.id)).all()

    env.warm(read)
    dirty = env.engine.execution_options(isolation_level="READ UNCOMMITTED")
    for _ in range(2):
        with env.Session(bind=dirty) as s:
            s.connection()  # begin: the session now knows the isolation level
            assert env.queried(partial(read, s)) == ["alice", "bob", "carol", "dave"]


def test_session_refresh_is_never_cached(env: Env) -> None:
    env.warm(lambda s: s.get(User, 1))
    for _ in range(2):
        with env.Session() as s:
            alice = env.cached(partial(s.get, User, 1))
            env.queried(partial(s.refresh, alice))
            assert alice.name == "alice"


@pytest.mark.parametrize("which", ["one attribute", "whole object"])
def test_expired_attribute_loads_are_never_cached(env: Env, which: str) -> None:
    env.warm(lambda s: s.get(User, 1))
    for _ in range(2):
        with env.Session() as s:
            alice = env.cached(partial(s.get, User, 1))
            s.expire(alice, ["name"] if which == "one attribute" else None)
            assert env.queried(partial(getattr, alice, "name")) == "alice"


def test_refresh_sees_data_written_outside_the_cache(env: Env) -> None:
    env.warm(lambda s: s.get(User, 1))
    with env.engine.begin() as conn:  # a write the cache does not know about
        conn.execute(User.__table__.update().where(User.id == 1).values(name="outside"))
    with env.Session() as s:
        alice = env.cached(lambda: s.get(User, 1))
        assert alice.name == "alice"  # stale: nobody told the cache
        s.refresh(alice)
        assert alice.name == "outside"
        assert (
            env.queried(
                lambda: (
                    s.scalars(
                        select(User).where(User.id == 1).execution_options(populate_existing=True)
                    )
                    .one()
                    .name
                )
            )
            == "outside"
        )


# -- hints: FromCache, CachingQuery.cache, execution options, session tags ---------------------


def test_fromcache_tags_and_invalidate_tags(env: Env) -> None:
    def tagged(s: Session) -> Any:
        return s.scalars(select(User.name).options(FromCache(ttl=60, tags=["people"]))).all()

    def untagged(s: Session) -> Any:
        return s.scalars(select(Tag.name).order_by(Tag.id)).all()

    env.warm(tagged)
    env.warm(untagged)
    env.cache.invalidate_tags_sync(["people"])
    assert sorted(env.fresh_read(tagged)) == ["alice", "bob", "carol", "dave"]
    assert env.hit(tagged)
    assert env.hit(untagged) == ["red", "blue"]


def test_fromcache_ttl_none_and_default(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(User.name).options(FromCache(ttl=None))).all())
    env.warm(lambda s: s.scalars(select(User.name).where(User.id > 1).options(FromCache())).all())


def test_same_statement_with_other_tags_is_another_entry(env: Env) -> None:
    """SQLAlchemy's statement cache key ignores user options: the tags must still count, or
    invalidating one caller's tag would leave it served from another caller's entry."""

    def read(tags: list[str]) -> Read:
        return lambda s: s.scalars(
            select(User.name).order_by(User.id).options(FromCache(tags=tags))
        ).all()

    env.warm(read(["a"]))
    env.warm(read(["b"]))  # a miss first: not served from the "a" entry
    env.cache.invalidate_tags_sync(["b"])
    assert env.fresh_read(read(["b"])) == ["alice", "bob", "carol", "dave"]
    assert env.hit(read(["a"])) == ["alice", "bob", "carol", "dave"]


def test_caching_query_cache_tags(env: Env) -> None:
    def read(s: Session) -> Any:
        return [u.name for u in s.query(User).order_by(User.id).cache(ttl=30, tags=["q"]).all()]  # type: ignore[attr-defined]

    env.warm(read)
    env.warm(lambda s: s.query(User).order_by(User.id).all())
    env.cache.invalidate_tags_sync(["q"])
    assert env.fresh_read(read) == ["alice", "bob", "carol", "dave"]
    env.hit(lambda s: s.query(User).order_by(User.id).all())  # no "q" tag: still valid


def test_execution_option_tags(env: Env) -> None:
    def read(s: Session) -> Any:
        return s.scalars(
            select(User.name).order_by(User.id).execution_options(yokedcache={"tags": ["eo"]})
        ).all()

    env.warm(read)
    env.cache.invalidate_tags_sync(["eo"])
    env.fresh_read(read)
    env.hit(read)


def test_bad_execution_option_raises(env: Env) -> None:
    with env.Session() as s, pytest.raises(ValueError, match="unknown yokedcache"):
        s.scalars(select(User).execution_options(yokedcache={"tll": 5})).all()


def test_session_level_tags_and_table_name(env: Env) -> None:
    def read(s: Session) -> Any:
        return s.scalars(select(Tag.name).order_by(Tag.id)).all()

    env.warm(read)  # an entry stored by an untagged session is not the tagged sessions' entry
    cases: list[tuple[dict[str, Any], Callable[[], None]]] = [
        ({"tags": ["sess"]}, lambda: env.cache.invalidate_tags_sync(["sess"])),
        ({"table_name": "reports"}, lambda: env.cache.invalidate_tables_sync(["reports"])),
    ]
    for kw, invalidate in cases:
        factory = env.factory(**kw)
        with factory() as s:
            env.queried(partial(read, s))
        with factory() as s:
            env.cached(partial(read, s))
        env.cache.invalidate_tags_sync(["unrelated"])
        with factory() as s:
            env.cached(partial(read, s))
        invalidate()
        with factory() as s:
            assert env.queried(partial(read, s)) == ["red", "blue"]
    env.hit(read)  # the untagged entry was never touched


def test_invalidate_all(env: Env) -> None:
    env.warm(lambda s: s.scalars(select(Tag.name)).all())
    env.cache.invalidate_all_sync()
    env.fresh_read(lambda s: s.scalars(select(Tag.name)).all())


# -- results equal uncached results -------------------------------------------------------------

_cte = select(Address.user_id, func.count().label("n")).group_by(Address.user_id).cte("c")
_poly = with_polymorphic(Employee, [Manager])
_ua = aliased(User)

CORPUS: dict[str, Read] = {
    "filter_and_or": lambda s: s.scalars(
        select(User).where(or_(User.age > 35, and_(User.name.like("%o%"), User.id < 3)))
    ).all(),
    "order_limit_offset": lambda s: s.scalars(
        select(User).order_by(User.name.desc()).limit(2).offset(1)
    ).all(),
    "between_in_notin": lambda s: s.execute(
        select(User.id)
        .where(User.age.between(20, 35) | User.id.in_([4]))
        .where(User.id.not_in([2]))
        .order_by(User.id)
    ).all(),
    "distinct": lambda s: s.scalars(
        select(Address.user_id).distinct().order_by(Address.user_id)
    ).all(),
    "join_entities": lambda s: s.execute(
        select(User, Address).join(User.addresses).order_by(Address.id)
    ).all(),
    "outerjoin_columns": lambda s: s.execute(
        select(User.name, Address.email).outerjoin(User.addresses).order_by(User.id, Address.id)
    ).all(),
    "m2m_join": lambda s: s.scalars(
        select(User).join(User.tags).where(Tag.name == "blue").order_by(User.id)
    ).all(),
    "secondary_table_columns": lambda s: s.execute(
        select(user_tags.c.user_id, user_tags.c.tag_id).order_by(
            user_tags.c.user_id, user_tags.c.tag_id
        )
    ).all(),
    "self_alias": lambda s: s.execute(
        select(User.name, _ua.name).join(_ua, _ua.id == User.id + 1).order_by(User.id)
    ).all(),
    "group_by_having": lambda s: s.execute(
        select(User.name, func.count(Address.id))
        .outerjoin(User.addresses)
        .group_by(User.name)
        .having(func.count(Address.id) >= 0)
        .order_by(User.name)
    ).all(),
    "aggregates": lambda s: s.execute(
        select(
            func.count(), func.sum(OrderLine.qty), func.min(OrderLine.qty), func.max(OrderLine.qty)
        )
    ).one(),
    "scalar_subquery": lambda s: s.execute(
        select(
            User.name,
            select(func.count(Address.id))
            .where(Address.user_id == User.id)
            .scalar_subquery()
            .label("n"),
        ).order_by(User.id)
    ).all(),
    "exists": lambda s: s.scalars(
        select(User.name).where(exists().where(Address.user_id == User.id)).order_by(User.id)
    ).all(),
    "cte": lambda s: s.execute(
        select(User.name, _cte.c.n).join(_cte, _cte.c.user_id == User.id).order_by(User.id)
    ).all(),
    "subquery_entity": lambda s: s.scalars(
        select(aliased(User, select(User).where(User.age > 26).subquery())).order_by("id")
    ).all(),
    "composite_pk": lambda s: s.scalars(
        select(OrderLine).order_by(OrderLine.order_id, OrderLine.line_no)
    ).all(),
    "composite_pk_filter": lambda s: s.scalars(
        select(OrderLine).where(OrderLine.order_id == 1, OrderLine.line_no == 2)
    ).all(),
    "nulls": lambda s: s.execute(
        select(OrderLine.note, User.age)
        .join(User, User.id == OrderLine.order_id)
        .order_by(OrderLine.order_id, OrderLine.line_no)
    ).all(),
    "is_null": lambda s: s.scalars(select(User).where(User.age.is_(None))).all(),
    "typed_entities": lambda s: s.scalars(select(Thing).order_by(Thing.id)).all(),
    "typed_columns": lambda s: s.execute(
        select(
            Thing.created, Thing.price, Thing.uid, Thing.data, Thing.status, Thing.note
        ).order_by(Thing.id)
    ).all(),
    "typed_filters": lambda s: s.scalars(
        select(Thing.id).where(
            Thing.uid == UID1,
            Thing.status == Status.active,
            Thing.price > Decimal("1.00"),
            Thing.created > dt.datetime(2024, 1, 1),
        )
    ).all(),
    "tuples_of_columns": lambda s: s.execute(
        select(User.id, User.name, User.age, literal("x").label("k")).order_by(User.id)
    ).all(),
    "polymorphic_base": lambda s: s.scalars(select(Employee).order_by(Employee.id)).all(),
    "polymorphic_with": lambda s: s.scalars(select(_poly).order_by(_poly.id)).all(),
    "polymorphic_subclass": lambda s: s.scalars(select(Manager)).all(),
    "query_join_filter": lambda s: (
        s.query(User.name, Tag.name).join(User.tags).order_by(User.id, Tag.id).all()
    ),
    "query_count_distinct": lambda s: s.query(func.count(func.distinct(Address.user_id))).scalar(),
    "empty_result": lambda s: s.scalars(select(User).where(User.id < 0)).all(),
    "first_none": lambda s: s.scalars(select(User).where(User.id < 0)).first(),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_cached_results_equal_uncached(env: Env, name: str) -> None:
    read = CORPUS[name]
    truth = env.truth(read)
    with env.Session() as s:
        miss = plain(env.queried(lambda: read(s)))
    with env.Session() as s:
        hit = plain(env.cached(lambda: read(s)))
    assert miss == truth
    assert hit == truth
    # types survive the round trip (Decimal stays Decimal, UUID stays UUID — asyncpg's own
    # UUID class stays that class —, …)
    assert repr(hit) == repr(truth)
    assert _types(hit) == _types(truth)


def _types(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_types(v) for v in value]
    return type(value)


def test_polymorphic_objects_keep_their_class(env: Env) -> None:
    def read(s: Session) -> Any:
        return [
            (type(e).__name__, e.name, getattr(e, "budget", None))
            for e in s.scalars(select(Employee).order_by(Employee.id))
        ]

    assert env.warm(read) == [("Employee", "eve", None), ("Manager", "mallory", 100)]


def test_lazy_load_keys_are_the_same_in_every_process(tmp_path: Any) -> None:
    """Lazy loaders bind values under anonymous names that embed object ids; keys must not
    depend on them, or a lazy load cached by one process is a miss in every other."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sqlalchemy import create_engine

    from tests.orm.ormkit import Base, P, reseed

    url = f"sqlite:///{tmp_path / 'lazy.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    reseed(engine)
    engine.dispose()
    worker = Path(__file__).resolve().parent / "lazy_key_worker.py"
    envvars = {**os.environ, "YC_TEST_TABLE_PREFIX": P}
    outs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(worker), url],
            env=envvars,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(json.loads(done.stdout))
    assert outs[0]["emails"] == ["a1@x", "a2@x"]
    assert len(outs[0]["keys"]) == 2  # the get and the lazy load
    assert outs[0]["keys"] == outs[1]["keys"]


def test_value_of_a_transient_object_raises_sqlalchemys_error(env: Env) -> None:
    """Comparing a relationship with a transient object leaves a bound value nothing can
    give: the read is not keyed and SQLAlchemy raises its own StatementError when it runs,
    as with a plain Session (not the InvalidRequestError keying it would raise)."""
    for factory in (env.Plain, env.Session):
        with factory() as s, pytest.raises(StatementError, match="no value has been set"):
            s.scalars(select(Address).where(Address.user == User())).all()
