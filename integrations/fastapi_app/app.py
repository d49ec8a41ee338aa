"""The FastAPI tutorial app built the recommended way.

Differences from the tutorial (shared/seed/fastapi-tutorial.txt), each fixing one of its flaws:
the app is created once, with its lifespan; routes return response models, so a PUT returns
the updated row instead of an expired ORM object; sessions are AsyncSessions over a
CachingSession, so async routes never block the event loop on the database or the cache, and
every read path is cached without a wrapper; ``/uncached/...`` routes serve the same reads
without the cache, for side-by-side measurement.

Configuration: ``DATABASE_URL`` (default: SQLite file ``./yokedcache_demo.db``; sqlite and
postgresql URLs, mapped to aiosqlite and psycopg 3) and the
``YOKEDCACHE_*`` variables of :class:`yokedcache_sa.CacheConfig` (default: memory backend).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Boolean, Integer, String, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from yokedcache_sa import CacheConfig, CachingSession, NoCache, YokedCache, cache_router, cached

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./yokedcache_demo.db")

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+psycopg"}


def async_url(url: str) -> str:
    """The async-driver form of *url* (sqlite -> aiosqlite, postgresql -> psycopg 3)."""
    u = make_url(url)
    backend = u.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise SystemExit(
            f"DATABASE_URL: the demo app supports sqlite and postgresql, not {backend}"
        )
    if u.drivername == backend or u.get_driver_name() in ("pysqlite", "psycopg2"):
        u = u.set(drivername=_ASYNC_DRIVERS[backend])
    return u.render_as_string(hide_password=False)


engine = create_async_engine(async_url(DATABASE_URL))
cache = YokedCache(CacheConfig())  # YOKEDCACHE_REDIS_URL switches to Redis


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "demo_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


# AsyncSession over a CachingSession: cache I/O is awaited (the asyncio Redis client), never
# blocking the event loop; expire_on_commit=False so responses can be built after commit.
CachedSession = async_sessionmaker(
    engine, sync_session_class=CachingSession, cache=cache, default_ttl=300, expire_on_commit=False
)
PlainSession = async_sessionmaker(engine, expire_on_commit=False)


async def get_db() -> AsyncIterator[AsyncSession]:
    async with CachedSession() as db:
        yield db


async def get_plain_db() -> AsyncIterator[AsyncSession]:
    async with PlainSession() as db:
        yield db


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    await cache.connect()
    yield
    await cache.disconnect()
    await engine.dispose()


app = FastAPI(title="yokedcache_sa demo", lifespan=lifespan)
# Admin surface: protect it in a real deployment (dependencies=[Depends(require_admin)]).
app.include_router(cache_router(cache, prefix="/admin/cache"))


class UserIn(BaseModel):
    name: str
    email: str


class UserPatch(BaseModel):
    name: str | None = None
    email: str | None = None
    active: bool | None = None


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    email: str
    active: bool


class Stats(BaseModel):
    total: int
    active: int
    inactive: int


async def _get(db: AsyncSession, user_id: int) -> User:
    user = (await db.scalars(select(User).where(User.id == user_id))).first()
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


def _list_stmt(active_only: bool, limit: int) -> object:
    stmt = select(User).order_by(User.id).limit(limit)
    return stmt.where(User.active.is_(True)) if active_only else stmt


@app.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: int, db: AsyncSession = Depends(get_db)) -> User:
    return await _get(db, user_id)


@app.get("/users", response_model=list[UserOut])
async def list_users(
    active_only: bool = True, limit: int = 20, db: AsyncSession = Depends(get_db)
) -> list[User]:
    return list(await db.scalars(_list_stmt(active_only, limit)))  # type: ignore[call-overload]


@app.get("/uncached/users/{user_id}", response_model=UserOut)
async def get_user_uncached(user_id: int, db: AsyncSession = Depends(get_plain_db)) -> User:
    return await _get(db, user_id)


@app.get("/uncached/users", response_model=list[UserOut])
async def list_users_uncached(
    active_only: bool = True, limit: int = 20, db: AsyncSession = Depends(get_plain_db)
) -> list[User]:
    stmt = _list_stmt(active_only, limit).options(NoCache())  # type: ignore[attr-defined]
    return list(await db.scalars(stmt))


@app.post("/users", response_model=UserOut, status_code=201)
async def create_user(body: UserIn, db: AsyncSession = Depends(get_db)) -> User:
    user = User(**body.model_dump())
    db.add(user)
    await db.commit()  # invalidates table:demo_users before returning
    return user


@app.put("/users/{user_id}", response_model=UserOut)
async def update_user(user_id: int, body: UserPatch, db: AsyncSession = Depends(get_db)) -> User:
    user = await _get(db, user_id)
    for k, v in body.model_dump(exclude_unset=True).items():
        setattr(user, k, v)
    await db.commit()
    return user


@app.delete("/users/{user_id}")
async def delete_user(user_id: int, db: AsyncSession = Depends(get_db)) -> dict[str, bool]:
    await db.delete(await _get(db, user_id))
    await db.commit()
    return {"ok": True}


@cached(ttl=600, tags=["analytics"], cache=cache)
async def compute_user_stats(db: AsyncSession) -> dict[str, int]:
    total = await db.scalar(select(func.count()).select_from(User)) or 0
    active = (
        await db.scalar(select(func.count()).select_from(User).where(User.active.is_(True))) or 0
    )
    return {"total": total, "active": active, "inactive": total - active}


@app.get("/analytics/users", response_model=Stats)
async def user_analytics(db: AsyncSession = Depends(get_plain_db)) -> dict[str, int]:
    # a plain session: the result still depends on demo_users and is invalidated by writes
    return await compute_user_stats(db)


@app.post("/analytics/invalidate")
async def invalidate_analytics() -> dict[str, bool]:
    await cache.invalidate_tags(["analytics"])
    return {"ok": True}


@app.get("/cache/stats")
async def cache_stats() -> dict[str, object]:
    stats = await cache.get_stats()
    return {"hit_rate": f"{stats.hit_rate:.1%}", "keys": stats.key_count}


@app.get("/cache/health")
async def cache_health() -> dict[str, bool]:
    return {"healthy": await cache.health()}
