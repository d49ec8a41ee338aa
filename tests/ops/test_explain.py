"""Issue 13, item 4: explain() says what a caching session would do with a statement —
without running it or storing anything — on SQLite + memory and PostgreSQL + Redis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import Engine, event, func, select, text, update
from sqlalchemy.orm import Session

from tests.ops.conftest import Player, Stack, Team
from yokedcache_sa import NoCache, explain
from yokedcache_sa.orm import CachingSession, FromCache
from yokedcache_sa.orm.explain import aexplain


@contextmanager
def no_sql(engine: Engine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn, cursor, statement, *a) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert seen == [], seen


def by_team(team: int):
    return select(Player).where(Player.team_id == team).order_by(Player.id)


def session(stack: Stack) -> Session:
    return CachingSession(stack.engine, cache=stack.cache, default_ttl=42)


def test_cacheable_select_without_entry_runs_nothing(stack: Stack) -> None:
    keys_before = stack.cache.get_stats_sync().key_count
    with session(stack) as s, no_sql(stack.engine):
        e = explain(by_team(1), session=s)
    assert e.cacheable and e.reason == ""
    assert e.key is not None and e.key.startswith("q:") and e.digest
    assert e.tables == (f"table:{Player.__tablename__}",)
    assert f"table:{Player.__tablename__}" in e.tags and "*" in e.tags
    assert e.ttl == 42.0
    assert e.entry is not None and e.entry.exists is False
    assert not e.exists and not e.fresh
    assert stack.cache.get_stats_sync().key_count == keys_before  # nothing stored
    assert stack.cache.get_stats_sync().hits == 0  # nothing counted as a lookup


def test_entry_is_fresh_after_a_read_and_the_key_is_the_sessions(stack: Stack) -> None:
    with session(stack) as s:
        s.scalars(by_team(1)).all()
    with session(stack) as s, no_sql(stack.engine):
        e = explain(by_team(1), session=s)
        other = explain(by_team(2), session=s)
    assert e.exists and e.fresh, e.entry
    assert e.entry is not None and e.entry.age_seconds is not None
    assert "fresh" in e.entry.reason
    assert not other.exists  # another parameter value: another key
    assert other.digest == e.digest and other.key != e.key
    same = stack.cache.explain(by_team(1), session=session(stack))
    assert same.key == e.key and same.fresh


def test_entry_after_a_commit_exists_but_is_stale(stack: Stack) -> None:
    with session(stack) as s:
        s.scalars(by_team(1)).all()
    with session(stack) as s:
        s.execute(update(Player).where(Player.id == 1).values(name="renamed"))
        s.commit()
    with session(stack) as s, no_sql(stack.engine):
        e = explain(by_team(1), session=s)
    assert e.cacheable
    assert e.exists and not e.fresh
    assert e.entry is not None and "written after it was stored" in e.entry.reason


def test_opt_out_hint(stack: Stack) -> None:
    with session(stack) as s:
        e = explain(by_team(1).options(NoCache()), session=s)
        e2 = explain(by_team(1).execution_options(yokedcache=False), session=s)
    assert not e.cacheable and "opted out" in e.reason
    assert not e2.cacheable and "opted out" in e2.reason
    assert e.key is None and e.entry is None


def test_write_statement(stack: Stack) -> None:
    with session(stack) as s, no_sql(stack.engine):
        e = explain(update(Player).where(Player.id == 1).values(name="x"), session=s)
    assert not e.cacheable and "not a SELECT" in e.reason
    with session(stack) as s:  # and it really did not run
        assert s.scalar(select(Player.name).where(Player.id == 1)) == "p1"


def test_unknown_function(stack: Stack) -> None:
    stmt = select(func.yc_unknown_fn(Player.id)).where(Player.id == 1)
    with session(stack) as s, no_sql(stack.engine):
        e = explain(stmt, session=s)
    assert not e.cacheable
    assert "calls yc_unknown_fn(), not known to be read-only" in e.reason


def test_other_reasons(stack: Stack) -> None:
    with session(stack) as s:
        assert "FOR UPDATE" in explain(by_team(1).with_for_update(), session=s).reason
        assert (
            "contains text()"
            in explain(select(text("1")).select_from(text(Team.__tablename__)), session=s).reason
        )
        ok = explain(
            select(text("id"))
            .select_from(text(Team.__tablename__))
            .options(FromCache(tables=[Team.__tablename__])),
            session=s,
        )
        assert ok.cacheable, ok.reason
        s.execute(update(Team).where(Team.id == 1).values(name="x"))
        own = explain(select(Team), session=s)
        assert not own.cacheable and "this transaction wrote" in own.reason
        s.rollback()
    with Session(stack.engine) as plain:
        assert "does not cache" in explain(select(Team), session=plain).reason


def test_legacy_query_and_reason_agrees_with_the_listener(stack: Stack) -> None:
    with session(stack) as s:
        q = s.query(Player).filter(Player.team_id == 2).order_by(Player.id)
        e = explain(q)
        assert e.cacheable and not e.exists
        q.all()
        assert explain(q).fresh


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # one async binding is enough
async def test_aexplain_with_an_async_session(stack: Stack) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    url = stack.engine.url.set(drivername="sqlite+aiosqlite")
    aengine = create_async_engine(url)
    maker = async_sessionmaker(aengine, sync_session_class=CachingSession, cache=stack.cache)
    try:
        async with maker() as s:
            (await s.scalars(by_team(1))).all()
            e = await aexplain(by_team(1), session=s)
        assert e.cacheable and e.fresh
    finally:
        await aengine.dispose()


CASES = {
    "plain": lambda: by_team(1),
    "no_cache": lambda: by_team(1).options(NoCache()),
    "eo_false": lambda: by_team(1).execution_options(yokedcache=False),
    "populate": lambda: by_team(2).execution_options(populate_existing=True),
    "for_update": lambda: by_team(2).with_for_update(),
    "join": lambda: select(Player.name, Team.name).join(Team).where(Team.id == 2),
    "count": lambda: select(func.count()).select_from(Player),
    "hinted": lambda: by_team(2).options(FromCache(ttl=7, tags=["t-x"])),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_explain_agrees_with_what_the_session_then_does(stack: Stack, case: str) -> None:
    """The prediction is checked against the real read listener: a statement explained as
    cacheable is found stored (fresh, under the explained key) after one read; one explained
    as not cacheable stores nothing."""
    stmt = CASES[case]()
    with session(stack) as s:
        before = explain(stmt, session=s)
    keys = stack.cache.get_stats_sync().key_count
    with session(stack) as s:
        s.execute(stmt).all()
    with session(stack) as s:
        after = explain(stmt, session=s)
    if before.cacheable:
        assert not before.exists
        assert after.key == before.key and after.exists and after.fresh, after
        assert stack.cache.get_stats_sync().key_count == keys + 1
    else:
        assert before.reason and after.reason == before.reason
        assert stack.cache.get_stats_sync().key_count == keys
    if case == "hinted":
        assert before.ttl == 7.0 and "t-x" in before.tags
