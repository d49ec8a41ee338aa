"""ORM benchmark: cached vs uncached PK lookups and 20-row lists, commit cost, opt-out cost.

All variants run interleaved (round-robin, one call each per iteration) in ONE process, so
machine noise hits them alike; medians are reported. PostgreSQL and Redis on loopback.

    python benchmarks/bench_orm.py [--iterations 1000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
from sqlalchemy import Boolean, Integer, String, create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from yokedcache_sa import CacheConfig, CachingSession, NoCache, YokedCache, codec

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SUFFIX = uuid.uuid4().hex[:6]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"bench_orm_users_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


TARGETS = {
    "memory_pk_speedup_vs_pg": (">=", 8.0),
    "redis_pk_speedup_vs_pg": (">=", 2.0),
    "redis_pk_vs_raw_get": ("<=", 1.6),
    "memory_list20_speedup_vs_pg": (">=", 3.0),
    "redis_list20_speedup_vs_pg": (">=", 1.5),
    "commit_redis_roundtrips": ("<=", 2),
    "write_overhead": ("<=", 1.25),
    "write_overhead_dml": ("<=", 1.25),
    "nocache_overhead": ("<=", 1.05),
}


def interleaved(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """Median microseconds of each callable, calling them round-robin *n* times."""
    times: dict[str, list[int]] = {k: [] for k in fns}
    for _ in range(n):
        for k, f in fns.items():
            t = time.perf_counter_ns()
            f()
            times[k].append(time.perf_counter_ns() - t)
    return {k: statistics.median(v) / 1000 for k, v in times.items()}


class CountingBackend:
    """Wraps a backend and counts the calls that reach the store."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if callable(attr) and name in {
            "fetch",
            "observe",
            "store",
            "begin_write",
            "end_write",
            "release",
        }:

            def counted(*a: Any, **kw: Any) -> Any:
                self.calls += 1
                return attr(*a, **kw)

            return counted
        return attr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.iterations

    pg = create_engine(PG_URL, pool_size=5)
    lite = create_engine("sqlite://")
    for eng in (pg, lite):
        Base.metadata.create_all(eng)
        with Session(eng) as s:
            s.add_all(User(id=i, name=f"user{i}", email=f"u{i}@example.com") for i in range(1, 201))
            s.commit()
    mem = YokedCache(CacheConfig(key_prefix=f"bo{SUFFIX}"))
    red = YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=f"bo{SUFFIX}"))
    plain_pg = sessionmaker(pg)
    plain_lite = sessionmaker(lite)
    mem_pg = sessionmaker(pg, class_=CachingSession, cache=mem)
    red_pg = sessionmaker(pg, class_=CachingSession, cache=red)

    def pk(factory: Any, x: int = 42) -> Any:
        with factory() as db:
            return db.query(User).filter(User.id == x).first()

    def list20(factory: Any) -> Any:
        with factory() as db:
            return db.query(User).filter(User.active.is_(True)).order_by(User.id).limit(20).all()

    try:
        for f in (mem_pg, red_pg):  # warm: first calls are misses that fill the cache
            pk(f)
            list20(f)
        reads = interleaved(
            {
                "pg_pk": lambda: pk(plain_pg),
                "sqlite_pk": lambda: pk(plain_lite),
                "memory_pk": lambda: pk(mem_pg),
                "redis_pk": lambda: pk(red_pg),
                "pg_list20": lambda: list20(plain_pg),
                "sqlite_list20": lambda: list20(plain_lite),
                "memory_list20": lambda: list20(mem_pg),
                "redis_list20": lambda: list20(red_pg),
            },
            n,
        )

        # a Redis-backed hit without session creation vs raw GET + decode of the same bytes
        long_db = red_pg()
        long_db.query(User).filter(User.id == 42).first()
        raw = red.backend.client  # type: ignore[attr-defined]
        entry_keys = [k for k in raw.scan_iter(match=f"bo{SUFFIX}:e:*")]
        sample = max(entry_keys, key=lambda k: len(raw.get(k) or b""))
        q = long_db.query(User).filter(User.id == 42)

        def raw_get() -> Any:
            v = raw.get(sample)
            up = msgpack.Unpacker(raw=False, strict_map_key=False)
            # framing, then the 8-byte entry prefix and the key digest
            up.feed(v[v.index(b"\x00") + 1 + 8 + codec.DIGEST_LEN :])
            return list(up)  # header and body

        hot = interleaved({"redis_pk_hot": lambda: q.first(), "raw_get": raw_get}, n)
        long_db.close()

        # opt-out overhead: a NoCache query through CachingSession vs a plain Session
        stmt_nc = select(User).where(User.id == 42).options(NoCache())
        stmt_plain = select(User).where(User.id == 42)

        def nocache() -> Any:
            with red_pg() as db:
                return db.scalars(stmt_nc).first()

        def plain() -> Any:
            with plain_pg() as db:
                return db.scalars(stmt_plain).first()

        opt = interleaved({"nocache": nocache, "plain": plain}, n)

        # write overhead and round trips per commit
        counting = CountingBackend(red.backend)
        red_count = YokedCache(red.config, backend=counting)  # type: ignore[arg-type]
        red_write = sessionmaker(pg, class_=CachingSession, cache=red_count)
        counter = {"i": 0}

        def write(factory: Any) -> None:
            counter["i"] += 1
            with factory() as db:
                u = db.get(User, 7)
                assert u is not None
                u.name = f"w{counter['i']}"
                db.commit()

        write(red_write)
        with red_write() as db:  # count only what the flush and commit cost
            u = db.get(User, 7)
            assert u is not None
            before = counting.calls
            u.name = "counted"
            db.commit()
            roundtrips = counting.calls - before

        def dml(factory: Any) -> None:
            counter["i"] += 1
            with factory() as db:
                db.execute(update(User).where(User.id == 8).values(name=f"d{counter['i']}"))
                db.commit()

        writes = interleaved(
            {
                "cached_write": lambda: write(red_write),
                "plain_write": lambda: write(plain_pg),
                "cached_dml": lambda: dml(red_write),
                "plain_dml": lambda: dml(plain_pg),
            },
            max(200, n // 4),
        )
    finally:
        Base.metadata.drop_all(pg)
        mem.clear_sync()
        red.clear_sync()
        pg.dispose()

    result = {
        "memory_pk_speedup_vs_pg": reads["pg_pk"] / reads["memory_pk"],
        "redis_pk_speedup_vs_pg": reads["pg_pk"] / reads["redis_pk"],
        "memory_pk_speedup_vs_sqlite": reads["sqlite_pk"] / reads["memory_pk"],
        "redis_pk_vs_raw_get": hot["redis_pk_hot"] / hot["raw_get"],
        "memory_list20_speedup_vs_pg": reads["pg_list20"] / reads["memory_list20"],
        "redis_list20_speedup_vs_pg": reads["pg_list20"] / reads["redis_list20"],
        "memory_list20_speedup_vs_sqlite": reads["sqlite_list20"] / reads["memory_list20"],
        "commit_redis_roundtrips": roundtrips,
        "write_overhead": writes["cached_write"] / writes["plain_write"],
        "write_overhead_dml": writes["cached_dml"] / writes["plain_dml"],
        "nocache_overhead": opt["nocache"] / opt["plain"],
        "medians_us": {k: round(v, 1) for k, v in {**reads, **hot, **opt, **writes}.items()},
        "iterations": n,
    }
    print(f"{'measure':34} {'value':>10} {'target':>10}  ok")
    for k, v in result.items():
        if k in ("medians_us", "iterations"):
            continue
        t = TARGETS.get(k)
        ok = "" if t is None else ("yes" if (v >= t[1] if t[0] == ">=" else v <= t[1]) else "NO")
        tgt = "" if t is None else f"{t[0]} {t[1]}"
        print(f"{k:34} {v:10.2f} {tgt:>10}  {ok}")
    print("medians (us):", ", ".join(f"{k}={v}" for k, v in result["medians_us"].items()))
    if args.json:
        print(
            json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
