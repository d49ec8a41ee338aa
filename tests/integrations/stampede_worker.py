"""One process of the cross-process stampede test (run by test_stampede.py, not by pytest).

    python -m tests.integrations.stampede_worker MODE TABLE DB_URL REDIS_URL PREFIX READY GO N

Sets everything up, creates READY, waits for GO to exist, then runs N threads that read the
same cold key at once (MODE ``orm``: a CachingSession query, after the process ran the same
statement once with another parameter; ``orm-cold``: without that; ``cached``: an @cached
function over a plain Session). Prints one JSON line: the SELECTs on TABLE this process sent
(after the warm-up) and the distinct results its threads got.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Integer, String, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from yokedcache_sa import CacheConfig, CachingSession, YokedCache, cached

mode, table, db_url, redis_url, prefix, ready, go, n_threads = sys.argv[1:9]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = table
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


engine = create_engine(db_url)
cache = YokedCache(CacheConfig(redis_url=redis_url, key_prefix=prefix)).connect_sync()
queries = 0
lock = threading.Lock()


@event.listens_for(engine, "before_cursor_execute")
def _count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
    global queries
    if statement.lstrip().upper().startswith("SELECT") and table in statement:
        with lock:
            queries += 1
        time.sleep(0.2)  # widen the window in which the other callers miss


@cached(cache=cache)
def names(db: Session) -> list[str]:
    return list(db.scalars(select(User.name).order_by(User.id)))


def orm_read(other_than: str) -> tuple[str, ...]:
    with CachingSession(engine, cache=cache) as s:
        stmt = select(User).where(User.name != other_than).order_by(User.id)
        return tuple(u.name for u in s.scalars(stmt))


def read() -> tuple[str, ...]:
    if mode.startswith("orm"):
        return orm_read("nobody")
    with Session(engine) as s:
        return tuple(names(s))


def main() -> None:
    global queries
    with engine.connect():  # warm the pool's first connection
        pass
    if mode == "orm":
        # The process learns the statement's result shape (another key: other parameter).
        orm_read("warm-up-" + prefix + str(os.getpid()))
        queries = 0
    n = int(n_threads)
    barrier = threading.Barrier(n)
    results: list[tuple[str, ...]] = []

    def run() -> None:
        barrier.wait()
        r = read()
        with lock:
            results.append(r)

    threads = [threading.Thread(target=run) for _ in range(n)]
    Path(ready).touch()
    deadline = time.monotonic() + 60
    while not Path(go).exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.001)
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print(json.dumps({"queries": queries, "results": sorted(set(results)), "n": len(results)}))
    cache.disconnect_sync()
    engine.dispose()


if __name__ == "__main__":
    main()
