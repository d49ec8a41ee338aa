"""The FastAPI tutorial app built the recommended way.

Differences from the tutorial (shared/seed/fastapi-tutorial.txt), each fixing one of its flaws:
the app is created once, with its lifespan; routes return response models, so a PUT returns
the updated row instead of an expired ORM object; the session factory is a CachingSession
sessionmaker, so every read path is cached without a wrapper; ``/uncached/...`` routes serve the
same reads without the cache, for side-by-side measurement.

Configuration: ``DATABASE_URL`` (default: SQLite file ``./yokedcache_demo.db``) and the
``YOKEDCACHE_*`` variables of :class:`yokedcache_sa.CacheConfig` (default: memory backend).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict
from sqlalchemy import Boolean, Integer, String, create_engine, func, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from yokedcache_sa import CacheConfig, CachingSession, NoCache, YokedCache, cache_router, cached

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite:///./yokedcache_demo.db")
_connect_args = {"check_same_thread": False} if DATABASE_URL.startswith("sqlite") else {}
engine = create_engine(DATABASE_URL, connect_args=_connect_args, pool_pre_ping=False)

cache = YokedCache(CacheConfig())  # YOKEDCACHE_REDIS_URL switches to Redis


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "demo_users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    email: Mapped[str] = mapped_column(String(200), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)


CachedSession = sessionmaker(engine, class_=CachingSession, cache=cache, default_ttl=300)
PlainSession = sessionmaker(engine)


def get_db() -> Iterator[Session]:
    with CachedSession() as db:
        yield db


def get_plain_db() -> Iterator[Session]:
    with PlainSession() as db:
        yield db


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    Base.metadata.create_all(engine)
    await cache.connect()
    yield
    await cache.disconnect()
    engine.dispose()


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


def _get(db: Session, user_id: int) -> User:
    user = db.scalars(select(User).where(User.id == user_id)).first()
    if user is None:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.get("/users/{user_id}", response_model=UserOut)
def get_user(user_id: int, db: Session = Depends(get_db)) -> User:
    return _get(db, user_id)


@app.get("/users", response_model=list[UserOut])
def list_users(
    active_only: bool = True, limit: int = 20, db: Session = Depends(get_db)
) -> list[User]:
    stmt = select(User).order_by(User.id).limit(limit)
    if active_only:
        stmt = stmt.where(User.active.is_(True))
    return list(db.scalars(stmt))


@app.get("/uncached/users/{user_id}", response_model=UserOut)
def get_user_uncached(user_id: int, db: Session = Depends(get_plain_db)) -> User:
    return _get(db, user_id)


@app.get("/uncached/users", response_model=list[UserOut])
def list_users_uncached(
    active_only: bool = True, limit: int = 20, db: Session = Depends(get_plain_db)
) -> list[User]:
    stmt = select(User).order_by(User.id).limit(limit).options(NoCache())
    if active_only:
        stmt = stmt.where(User.active.is_(True))
    return list(db.scalars(stmt))


@app.post("/users", response_model=UserOut, status_code=201)
def create_user(body: UserIn, db: Session = Depends(get_db)) -> UserOut:
    user = User(**body.model_dump())
    db.add(user)
    db.flush()
    out = UserOut.model_validate(user)
    db.commit()  # invalidates table:demo_users before returning
    return out


@app.put("/users/{user_id}", response_model=UserOut)
def update_user(user_id: int, body: UserPatch, db: Session = Depends(get_db)) -> UserOut:
    user = _get(db, user_id)
    for k, v in body.model_dump(exclude_unset=True).items():
        setattr(user, k, v)
    db.flush()
    out = UserOut.model_validate(user)  # before commit expires the object
    db.commit()
    return out


@app.delete("/users/{user_id}")
def delete_user(user_id: int, db: Session = Depends(get_db)) -> dict[str, bool]:
    db.delete(_get(db, user_id))
    db.commit()
    return {"ok": True}


@cached(ttl=600, tags=["analytics"], cache=cache)
def compute_user_stats(db: Session) -> dict[str, int]:
    total = db.scalar(select(func.count()).select_from(User)) or 0
    active = db.scalar(select(func.count()).select_from(User).where(User.active.is_(True))) or 0
    return {"total": total, "active": active, "inactive": total - active}


@app.get("/analytics/users", response_model=Stats)
def user_analytics(db: Session = Depends(get_plain_db)) -> dict[str, int]:
    # a plain session: the result still depends on demo_users and is invalidated by writes
    return compute_user_stats(db)


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
