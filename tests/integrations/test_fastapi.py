"""``cached_dependency`` and ``cache_router`` driven through FastAPI's TestClient.

Every kind of session dependency a FastAPI app has — a sync generator yielding a plain
Session or a CachingSession, an async generator yielding an AsyncSession (plain, or with
``sync_session_class=CachingSession``) — on SQLite + memory and PostgreSQL + Redis, with
``def`` routes (threadpool) and ``async def`` routes. Each check counts SQL statements at the
engine, so it cannot pass by never caching.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from fastapi import Body, Depends, FastAPI, HTTPException
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from tests.integrations.kit import USERS, SQLCounter, Stack, User, new_cache
from yokedcache_sa import CachingSession, cache_router, cached_dependency, set_default_cache

TABLE_TAG = f"table:{USERS}"


class Lifecycle:
    """Records each get_db run: opened, and closed by its cleanup."""

    def __init__(self) -> None:
        self.opened = 0
        self.closed = 0


def _user_dict(u: User | None) -> dict[str, Any]:
    if u is None:
        raise HTTPException(status_code=404, detail="User not found")
    return {"id": u.id, "name": u.name}


# -- apps ---------------------------------------------------------------------------------


def sync_session_app(
    get_db: Callable[..., Any], cache: Any, **dep_kw: Any
) -> tuple[FastAPI, Callable[..., Any]]:
    """Routes over a sync Session: ``def`` (threadpool) and ``async def`` variants."""
    dep = cached_dependency(get_db, cache=cache, ttl=60, **dep_kw)
    app = FastAPI()
    app.include_router(cache_router(cache))

    @app.get("/users/{uid}")
    def read_user(uid: int, db: Session = Depends(dep)) -> dict[str, Any]:
        return _user_dict(db.scalars(select(User).where(User.id == uid)).first())

    @app.get("/a/users/{uid}")
    async def aread_user(uid: int, db: Session = Depends(dep)) -> dict[str, Any]:
        return _user_dict(db.scalars(select(User).where(User.id == uid)).first())

    @app.post("/users", status_code=201)
    def create_user(name: str = Body(..., embed=True), db: Session = Depends(dep)) -> Any:
        u = User(name=name)
        db.add(u)
        db.flush()
        uid = u.id
        db.commit()
        return {"id": uid}

    @app.put("/users/{uid}")
    async def rename_user(
        uid: int, name: str = Body(..., embed=True), db: Session = Depends(dep)
    ) -> Any:
        u = db.scalars(select(User).where(User.id == uid)).one()
        u.name = name
        # the RequestSession's commit is awaitable (mypy sees Session.commit, as in the tutorial)
        await db.commit()  # type: ignore[func-returns-value,misc]
        return {"ok": True}

    @app.get("/boom")
    def boom(db: Session = Depends(dep)) -> Any:
        db.scalars(select(User)).all()
        raise RuntimeError("route failed")

    @app.get("/a/boom")
    async def aboom(db: Session = Depends(dep)) -> Any:
        db.scalars(select(User)).all()
        raise HTTPException(status_code=418, detail="teapot")

    return app, dep


def async_session_app(get_db: Callable[..., Any], cache: Any) -> tuple[FastAPI, Callable[..., Any]]:
    dep = cached_dependency(get_db, cache=cache, ttl=60)
    app = FastAPI()
    app.include_router(cache_router(cache))

    @app.get("/users/{uid}")
    async def read_user(uid: int, db: AsyncSession = Depends(dep)) -> dict[str, Any]:
        return _user_dict((await db.scalars(select(User).where(User.id == uid))).first())

    @app.post("/users", status_code=201)
    async def create_user(
        name: str = Body(..., embed=True), db: AsyncSession = Depends(dep)
    ) -> Any:
        u = User(name=name)
        db.add(u)
        await db.flush()
        uid = u.id
        await db.commit()
        return {"id": uid}

    @app.put("/users/{uid}")
    async def rename_user(
        uid: int, name: str = Body(..., embed=True), db: AsyncSession = Depends(dep)
    ) -> Any:
        u = (await db.scalars(select(User).where(User.id == uid))).one()
        u.name = name
        await db.commit()
        return {"ok": True}

    @app.get("/boom")
    async def boom(db: AsyncSession = Depends(dep)) -> Any:
        (await db.scalars(select(User))).all()
        raise RuntimeError("route failed")

    return app, dep


# -- get_db flavours ----------------------------------------------------------------------


def sync_get_db(stack: Stack, kind: str, life: Lifecycle) -> Callable[..., Iterator[Session]]:
    if kind == "plain":
        factory: sessionmaker[Session] = sessionmaker(stack.engine)
    else:
        factory = sessionmaker(stack.engine, class_=CachingSession, cache=stack.cache)

    def get_db() -> Iterator[Session]:
        db = factory()
        life.opened += 1
        try:
            yield db
        finally:
            db.close()
            life.closed += 1

    return get_db


def check_crud(client: TestClient, counter: SQLCounter, life: Lifecycle, read: str) -> None:
    """Create, read twice (the second from the cache), rename, read fresh, 404 twice."""
    r = client.post("/users", json={"name": "ada"})
    assert r.status_code == 201, r.text
    uid = r.json()["id"]

    m = counter.mark()
    assert client.get(f"{read}/{uid}").json() == {"id": uid, "name": "ada"}
    assert counter.since(m) >= 1
    m = counter.mark()
    assert client.get(f"{read}/{uid}").json() == {"id": uid, "name": "ada"}
    assert counter.since(m) == 0, "the second read must be a cache hit"

    assert client.put(f"/users/{uid}", json={"name": "ada l."}).json() == {"ok": True}
    m = counter.mark()
    assert client.get(f"{read}/{uid}").json() == {"id": uid, "name": "ada l."}, "stale read"
    assert counter.since(m) >= 1
    m = counter.mark()
    assert client.get(f"{read}/{uid}").json()["name"] == "ada l."
    assert counter.since(m) == 0

    assert client.get(f"{read}/{uid + 1000}").status_code == 404
    m = counter.mark()
    assert client.get(f"{read}/{uid + 1000}").status_code == 404
    assert counter.since(m) == 0, "an empty result is cached too"
    assert life.opened == life.closed > 0


# -- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["plain", "caching"])
@pytest.mark.parametrize("route", ["/users", "/a/users"], ids=["def", "async-def"])
def test_sync_session_dependency(stack: Stack, kind: str, route: str) -> None:
    life = Lifecycle()
    app, _ = sync_session_app(sync_get_db(stack, kind, life), stack.cache)
    with TestClient(app) as client:
        check_crud(client, stack.counter, life, route)


@pytest.mark.parametrize("kind", ["plain", "caching"])
def test_async_session_dependency(stack: Stack, kind: str) -> None:
    # NullPool: TestClient runs the app in its own event loop; pooled asyncpg connections
    # must not outlive it.
    aurl = stack.aengine.url
    aengine = create_async_engine(aurl, poolclass=NullPool)
    counter = SQLCounter(aengine.sync_engine)
    if kind == "plain":
        factory: async_sessionmaker[AsyncSession] = async_sessionmaker(aengine)
    else:
        factory = async_sessionmaker(aengine, sync_session_class=CachingSession, cache=stack.cache)
    life = Lifecycle()

    async def get_db() -> AsyncIterator[AsyncSession]:
        life.opened += 1
        async with factory() as db:
            try:
                yield db
            finally:
                life.closed += 1

    app, _ = async_session_app(get_db, stack.cache)
    try:
        with TestClient(app) as client:
            check_crud(client, counter, life, "/users")
            # cleanup runs when the route raises
            opened = life.opened
            with TestClient(app, raise_server_exceptions=False) as bad:
                assert bad.get("/boom").status_code == 500
            assert life.opened == life.closed == opened + 1
    finally:
        counter.remove()


def test_cleanup_runs_when_the_route_raises(stack: Stack) -> None:
    life = Lifecycle()
    app, _ = sync_session_app(sync_get_db(stack, "plain", life), stack.cache)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/boom").status_code == 500
        assert (life.opened, life.closed) == (1, 1)
        assert client.get("/a/boom").status_code == 418
        assert (life.opened, life.closed) == (2, 2)
    with TestClient(app) as client, pytest.raises(RuntimeError, match="route failed"):
        client.get("/boom")
    assert (life.opened, life.closed) == (3, 3)


@pytest.mark.parametrize("kind", ["plain", "caching"])
def test_await_commit_on_a_sync_session(stack: Stack, kind: str) -> None:
    """The tutorial's ``await db.commit()`` on a sync session: the RequestSession that
    cached_dependency yields commits and returns a finished awaitable, for a plain Session
    and for a CachingSession (whose own commit() returns None, issue 11)."""
    life = Lifecycle()
    app, _ = sync_session_app(sync_get_db(stack, kind, life), stack.cache)
    with TestClient(app) as client:
        uid = client.post("/users", json={"name": "x"}).json()["id"]
        client.get(f"/a/users/{uid}")
        r = client.put(f"/users/{uid}", json={"name": "y"})  # async def: await db.commit()
        assert r.json() == {"ok": True}
        m = stack.counter.mark()
        assert client.get(f"/a/users/{uid}").json()["name"] == "y"
        assert stack.counter.since(m) >= 1
    with Session(stack.engine) as db:
        assert db.get(User, uid).name == "y"


def test_default_cache_when_none_given(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("yokedcache_sa.defaults._explicit_default", None)
    set_default_cache(stack.cache)
    life = Lifecycle()
    app, _ = sync_session_app(sync_get_db(stack, "plain", life), None)
    with TestClient(app) as client:
        uid = client.post("/users", json={"name": "d"}).json()["id"]
        client.get(f"/users/{uid}")
        m = stack.counter.mark()
        client.get(f"/users/{uid}")
        assert stack.counter.since(m) == 0
        assert stack.cache.get_stats_sync().hits == 1
        assert client.get("/cache/stats").json()["hits"] == 1


def test_dependency_override_swaps_the_cache(stack: Stack) -> None:
    life = Lifecycle()
    cache = stack.cache
    other = new_cache(redis=stack.name.endswith("redis"))
    app, _ = sync_session_app(sync_get_db(stack, "plain", life), cache)
    counter = stack.counter
    try:
        with TestClient(app) as client:
            uid = client.post("/users", json={"name": "o"}).json()["id"]
            client.get(f"/users/{uid}")
            client.get(f"/users/{uid}")
            assert cache.get_stats_sync().hits == 1

            app.dependency_overrides[cache] = lambda: other
            m = counter.mark()
            client.get(f"/users/{uid}")
            assert counter.since(m) >= 1, "the other cache starts empty"
            m = counter.mark()
            client.get(f"/users/{uid}")
            assert counter.since(m) == 0
            assert other.get_stats_sync().hits == 1
            assert other.get_stats_sync().misses == 1
            # the admin router resolves the override too
            assert client.get("/cache/stats").json()["hits"] == 1
            # direct calls on the module-level cache reach the override
            assert cache.get_stats_sync().misses == 1
            cache.invalidate_tables_sync([USERS])
            m = counter.mark()
            client.get(f"/users/{uid}")
            assert counter.since(m) >= 1, "the direct invalidation must reach the override"

            app.dependency_overrides.clear()
            m = counter.mark()
            client.get(f"/users/{uid}")
            assert counter.since(m) == 0, "back on the original cache, still warm"
            assert cache.get_stats_sync().hits == 2
            assert other.get_stats_sync().hits == 1
    finally:
        app.dependency_overrides.clear()
        cache.redirect_to(None)
        other.clear_sync()
        other.disconnect_sync()


def test_cache_router_endpoints(stack: Stack) -> None:
    life = Lifecycle()
    app, _ = sync_session_app(
        sync_get_db(stack, "plain", life), stack.cache, tags=["users-api"], table_name="people"
    )
    counter = stack.counter
    with TestClient(app) as client:
        assert client.get("/cache/health").json() == {"healthy": True}
        uid = client.post("/users", json={"name": "s"}).json()["id"]
        client.get(f"/users/{uid}")
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) == 0

        stats = client.get("/cache/stats").json()
        assert (stats["hits"], stats["misses"]) == (1, 1)
        assert stats["hit_rate"] == pytest.approx(0.5)  # a fraction, not a percentage
        assert stats["keys"] >= 1
        # per-table hits: the table read, and the one named by table_name=
        assert stats["table_hits"] == {TABLE_TAG: 1, "table:people": 1}
        assert stats["healthy"] is True
        assert stats["backend"] == stack.cache.backend.name

        # tags given to cached_dependency: invalidating them drops the entry
        r = client.post("/cache/invalidate/tags", json=["users-api"])
        assert r.json() == {"ok": True, "invalidated": ["users-api"]}
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) >= 1, "invalidate/tags must drop the entry"
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) == 0

        # the real table
        r = client.post("/cache/invalidate/tables", json=[USERS])
        assert r.json() == {"ok": True, "invalidated": [USERS]}
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) >= 1, "invalidate/tables must drop the entry"

        # table_name= adds table:<name> to every entry of the dependency
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) == 0
        client.post("/cache/invalidate/tables", json=["people"])
        m = counter.mark()
        client.get(f"/users/{uid}")
        assert counter.since(m) >= 1

        # a committed write counts a table invalidation
        client.put(f"/users/{uid}", json={"name": "t"})
        stats = client.get("/cache/stats").json()
        assert stats["table_invalidations"].get(TABLE_TAG, 0) >= 2
        assert 0.0 < stats["hit_rate"] < 1.0
        assert stats["hit_rate"] == pytest.approx(stats["hits"] / (stats["hits"] + stats["misses"]))

        # bodies are validated
        assert client.post("/cache/invalidate/tags", json="users-api").status_code == 422
