"""Models, a private redis-server process and small helpers for the reliability suite.

Table names carry a per-process random prefix so runs sharing one PostgreSQL never clash.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis as redis_py
from sqlalchemy import Engine, ForeignKey, Integer, String, delete, event, func, insert, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

P = "rel" + uuid.uuid4().hex[:8] + "_"


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


class SQLCounter:
    """Counts the statements an engine sends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.n = 0
        event.listen(engine, "before_cursor_execute", self._on)

    def _on(self, *args: Any) -> None:
        self.n += 1

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._on)

    @contextmanager
    def delta(self) -> Iterator[list[int]]:
        box = [0]
        before = self.n
        try:
            yield box
        finally:
            box[0] = self.n - before


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


# -- a private redis-server ------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProcess:
    """A redis-server this test owns: started, SIGKILLed, SIGSTOPped and restarted on one port.

    No persistence (``--save '' --appendonly no``): a restart is a server without data.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.proc is None, "already running"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with redis_py.Redis(port=self.port, socket_timeout=0.5) as r:
                    if r.ping():
                        return
            except redis_py.exceptions.ConnectionError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        """SIGKILL: the server and everything it held are gone."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None
            self.paused = False

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel but nothing answers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    def restart(self) -> None:
        """Kill, then start an empty server on the same port."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()

    def client(self) -> redis_py.Redis:
        return redis_py.Redis(port=self.port, socket_timeout=5)

    def connections_received(self) -> int:
        with self.client() as r:
            return int(r.info("stats")["total_connections_received"])


def eventually(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll *predicate* until it holds or *timeout* seconds pass (a hang guard)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
