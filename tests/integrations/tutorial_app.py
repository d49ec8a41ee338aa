# ruff: noqa
"""The FastAPI tutorial (shared/seed/fastapi-tutorial.txt), steps 1-6 as written.

Only change: the import says ``yokedcache_sa`` instead of ``yokedcache``; and step 6's
``app = FastAPI(lifespan=lifespan)`` rebinding is left out (see the comment there).
tests/integrations/test_tutorial.py loads this file; for PostgreSQL it substitutes
DATABASE_URL and drops the SQLite-only connect_args, nothing else.
"""

# app.py
from fastapi import FastAPI, Depends, HTTPException
from sqlalchemy import create_engine, Column, Integer, String, Boolean
from sqlalchemy.ext.declarative import declarative_base
from sqlalchemy.orm import sessionmaker, Session
from yokedcache_sa import YokedCache, cached, cached_dependency
from yokedcache_sa.config import CacheConfig

DATABASE_URL = "sqlite:///./app.db"
engine = create_engine(DATABASE_URL, connect_args={"check_same_thread": False})
SessionLocal = sessionmaker(autocommit=False, autoflush=False, bind=engine)
Base = declarative_base()


class User(Base):
    __tablename__ = "users"
    id = Column(Integer, primary_key=True)
    name = Column(String, index=True)
    email = Column(String, unique=True)
    active = Column(Boolean, default=True)


Base.metadata.create_all(bind=engine)

app = FastAPI()


def get_db():
    db = SessionLocal()
    try:
        yield db
    finally:
        db.close()


# Step 2: Add caching


cache = YokedCache(CacheConfig(redis_url="redis://localhost:6379/0"))

# Cached dependency—reads are cached, writes invalidate the "table:users" tag
cached_get_db = cached_dependency(get_db, cache=cache, ttl=300, table_name="users")


@app.get("/users/{user_id}")
async def get_user(user_id: int, db: Session = Depends(cached_get_db)):
    user = db.query(User).filter(User.id == user_id).first()
    if not user:
        raise HTTPException(status_code=404, detail="User not found")
    return user


@app.get("/users")
async def list_users(active_only: bool = True, db: Session = Depends(cached_get_db)):
    q = db.query(User)
    if active_only:
        q = q.filter(User.active == True)
    return q.all()


# Step 3: Write operations


from pydantic import BaseModel
from typing import Optional


class UserCreate(BaseModel):
    name: str
    email: str


class UserUpdate(BaseModel):
    name: Optional[str] = None
    email: Optional[str] = None
    active: Optional[bool] = None


@app.post("/users")
async def create_user(user: UserCreate, db: Session = Depends(cached_get_db)):
    db_user = User(**user.dict())
    db.add(db_user)
    await db.commit()  # invalidates "table:users"
    return {"id": db_user.id}


@app.put("/users/{user_id}")
async def update_user(user_id: int, user: UserUpdate, db: Session = Depends(cached_get_db)):
    db_user = db.query(User).filter(User.id == user_id).first()
    if not db_user:
        raise HTTPException(status_code=404, detail="User not found")
    for k, v in user.dict(exclude_unset=True).items():
        setattr(db_user, k, v)
    await db.commit()  # invalidates "table:users"
    return db_user


@app.delete("/users/{user_id}")
async def delete_user(user_id: int, db: Session = Depends(cached_get_db)):
    db_user = db.query(User).filter(User.id == user_id).first()
    if not db_user:
        raise HTTPException(status_code=404, detail="User not found")
    db.delete(db_user)
    await db.commit()  # invalidates "table:users"
    return {"ok": True}


# Step 4: Function-level caching


from yokedcache_sa import cached


@cached(ttl=600, tags=["analytics"])
async def compute_user_stats(db: Session):
    total = db.query(User).count()
    active = db.query(User).filter(User.active == True).count()
    return {"total": total, "active": active, "inactive": total - active}


@app.get("/analytics/users")
async def user_analytics(db: Session = Depends(get_db)):
    return await compute_user_stats(db)


# Invalidate analytics separately when needed
@app.post("/analytics/invalidate")
async def invalidate_analytics():
    await cache.invalidate_tags(["analytics"])
    return {"ok": True}


# Step 5: Cache management endpoints


@app.get("/cache/stats")
async def cache_stats():
    stats = await cache.get_stats()
    return {"hit_rate": f"{stats.hit_rate:.1%}", "keys": stats.key_count}


@app.get("/cache/health")
async def cache_health():
    return {"healthy": await cache.health()}


@app.post("/cache/flush/users")
async def flush_users():
    await cache.invalidate_tags(["table:users"])
    return {"ok": True}


# Step 6: Lifecycle management


from contextlib import asynccontextmanager


@asynccontextmanager
async def lifespan(app: FastAPI):
    await cache.connect()
    yield
    await cache.disconnect()


# Tutorial flaw, not copied: "app = FastAPI(lifespan=lifespan)" here would replace the
# app every route above was registered on (all routes 404). The fix is to create
# the app with the lifespan at the top; integrations/fastapi_app does that.
