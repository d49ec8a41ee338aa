"""Models, a private redis-server process and small helpers for the reliability suite.

Table names carry a per-process random prefix so runs sharing one PostgreSQL never clash.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, ForeignKey, Integer, String, delete, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from tests.redis_process import RedisProcess as RedisProcess
from tests.redis_process import free_port as free_port
from tests.sqlcount import SQLCounter  # noqa: F401  (re-exported)
from tests.tablenames import random_token

P = "rel" + random_token(lambda t: (f"rel{t}_users", f"rel{t}_posts"), length=8) + "_"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = P + "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    posts: Mapped[list[Post]] = relationship(back_populates="user", order_by="Post.id")


class Post(Base):
    __tablename__ = P + "posts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey(User.id))
    title: Mapped[str] = mapped_column(String(200))
    user: Mapped[User] = relationship(back_populates="posts")


USERS = [(1, "ada"), (2, "bob"), (3, "cy"), (4, "dee"), (5, "eve")]
POSTS = [(10, 1, "a1"), (11, 1, "a2"), (12, 2, "b1"), (13, 3, "c1"), (14, 3, "c2"), (15, 3, "c3")]


def reseed(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(delete(Post))
        conn.execute(delete(User))
        conn.execute(insert(User), [{"id": i, "name": n, "version": 1} for i, n in USERS])
        conn.execute(insert(Post), [{"id": i, "user_id": u, "title": t} for i, u, t in POSTS])


# -- the reads every outage test repeats -----------------------------------------------------


def read_user(s: Session, uid: int) -> tuple[int, str, int]:
    u = s.execute(select(User).where(User.id == uid)).scalars().one()
    return (u.id, u.name, u.version)


def read_users(s: Session) -> list[tuple[int, str, int]]:
    return [(u.id, u.name, u.version) for u in s.execute(select(User).order_by(User.id)).scalars()]


def read_post_counts(s: Session) -> list[tuple[str, int]]:
    stmt = (
        select(User.name, func.count(Post.id))
        .join(Post, Post.user_id == User.id)
        .group_by(User.name)
        .order_by(User.name)
    )
    return [(name, int(n)) for name, n in s.execute(stmt)]


READS: dict[str, Callable[[Session], Any]] = {
    "by_id": lambda s: read_user(s, 2),
    "list": read_users,
    "join_count": read_post_counts,
}


class CountingBackend:
    """Delegates to a real backend and counts the calls that would reach the store."""

    COUNTED = frozenset(
        {
            "fetch",
            "observe",
            "store",
            "begin_write",
            "end_write",
            "release",
            "acquire",
            "unlock",
            "locked",
            "ping",
        }
    )

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.COUNTED:
            return attr

        def counted(*args: Any, **kw: Any) -> Any:
            self.calls += 1
            return attr(*args, **kw)

        return counted


# -- a private redis-server: tests/redis_process.py -------------------------------------


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll *predicate* until it holds or *timeout* seconds pass (a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
