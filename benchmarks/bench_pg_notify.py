"""Staleness window of PostgreSQL change notification: outside COMMIT → cached entry refused.

An outside writer (its own psycopg connection, no caching session) updates a row that a
CachingSession has cached; the clock starts when its ``COMMIT`` returns and stops at the first
cached read that is refused (the read goes to the database and returns the new row). The
reader polls the cached read, so each sample includes up to one read's latency. Over
``--writes`` outside writes (default 200), for the memory and the Redis backend; milliseconds.

Two polling modes: ``busy`` reads back to back (a memory-backend hit never releases the GIL,
so the listener thread waits for CPython's 5 ms switch interval: the worst case for a
CPU-bound process), ``yielding`` sleeps 0 s between reads (as a request thread doing I/O
does).

    python benchmarks/bench_pg_notify.py [--writes 200] [--json]

With ``--json`` the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg
from sqlalchemy import Integer, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from yokedcache_sa import CacheConfig, CachingSession, YokedCache
from yokedcache_sa.pgnotify import NotifyListener, install, uninstall
from yokedcache_sa.pgnotify.conninfo import target_of

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SUFFIX = uuid.uuid4().hex[:6]
SCHEMA = f"bench_pgn_{SUFFIX}"


class Base(DeclarativeBase):
    pass


class Row(Base):
    __tablename__ = f"bench_pgn_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    v: Mapped[int] = mapped_column(Integer)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def measure(
    engine: Any, cache: YokedCache, writes: int, timeout: float, pause: float | None
) -> dict[str, float]:
    """Milliseconds from each outside COMMIT returning to the first refused cached read."""
    sent = [0]

    def count(*_a: Any) -> None:
        sent[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    factory = sessionmaker(engine, class_=CachingSession, cache=cache)

    def read() -> tuple[int, int]:
        before = sent[0]
        with factory() as s:
            v = s.execute(select(Row.v).where(Row.id == 1)).scalar_one()
        return v, sent[0] - before

    writer = psycopg.connect(**target_of(engine).kwargs)
    samples: list[float] = []
    lost = 0
    with NotifyListener(cache, engine, tables=[f"public.{Row.__tablename__}"]) as listener:
        if not listener.wait_ready(10):
            raise SystemExit("the listener did not connect")
        for i in range(1, writes + 1):
            # warm: the entry must be a hit before the write (the listener's bump of the
            # previous write may still be arriving: read until two hits in a row)
            hits = 0
            while hits < 2:
                hits = hits + 1 if read()[1] == 0 else 0
            writer.execute("UPDATE " + Row.__tablename__ + " SET v = %s WHERE id = 1", (i,))
            writer.commit()
            t0 = time.perf_counter()
            while True:
                v, n = read()
                if n:
                    samples.append((time.perf_counter() - t0) * 1000)
                    if v != i:
                        raise SystemExit(f"refused but read {v}, expected {i}")
                    break
                if time.perf_counter() - t0 > timeout:
                    lost += 1
                    break
                if pause is not None:
                    time.sleep(pause)
    writer.close()
    event.remove(engine, "before_cursor_execute", count)
    return {
        "p50_ms": statistics.median(samples),
        "p99_ms": percentile(samples, 0.99),
        "max_ms": max(samples),
        "mean_ms": statistics.fmean(samples),
        "writes": float(len(samples)),
        "not_seen_within_timeout": float(lost),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--timeout", type=float, default=5.0, help="give up on one write after")
    ap.add_argument("--redis-url", default=REDIS_URL)
    ap.add_argument("--json", action="store_true", help="print one JSON object last")
    args = ap.parse_args(argv)
    writes = max(200, args.writes)
    engine = create_engine(PG_URL, pool_size=2)
    Base.metadata.create_all(engine)
    with engine.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{SCHEMA}"')
        c.execute(Row.__table__.insert(), [{"id": 1, "v": 0}])
    results: dict[str, dict[str, float]] = {}
    t_start = time.monotonic()
    try:
        install(engine, tables=[f"public.{Row.__tablename__}"], schema=SCHEMA)
        for name, cfg in (
            ("memory", CacheConfig(key_prefix=f"bpn{SUFFIX}m")),
            ("redis", CacheConfig(redis_url=args.redis_url, key_prefix=f"bpn{SUFFIX}r")),
        ):
            for mode, pause in (("busy", None), ("yielding", 0.0)):
                cache = YokedCache(cfg)
                try:
                    results[f"{name}_{mode}"] = measure(engine, cache, writes, args.timeout, pause)
                finally:
                    cache.clear_sync()
                    cache.disconnect_sync()
    finally:
        uninstall(engine, tables=[f"public.{Row.__tablename__}"], schema=SCHEMA)
        Base.metadata.drop_all(engine)
        with engine.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')
        engine.dispose()
    elapsed = time.monotonic() - t_start
    print("staleness window: outside COMMIT returned -> cached entry refused (ms)")
    print(f"{'backend_poll':<16}{'p50':>9}{'p99':>9}{'max':>9}{'mean':>9}{'writes':>8}{'lost':>6}")
    for name, r in results.items():
        print(
            f"{name:<16}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['max_ms']:>9.3f}"
            f"{r['mean_ms']:>9.3f}{int(r['writes']):>8}{int(r['not_seen_within_timeout']):>6}"
        )
    print(f"({elapsed:.1f}s, PostgreSQL {PG_URL.split('@')[-1]})")
    if args.json:
        out: dict[str, Any] = {
            f"{b}_{k}": round(v, 3) for b, r in results.items() for k, v in r.items()
        }
        out["seconds"] = round(elapsed, 1)
        out["python"] = sys.version.split()[0]
        print(json.dumps(out, sort_keys=True))
    lost_any = any(r["not_seen_within_timeout"] for r in results.values())
    return 1 if lost_any else 0


if __name__ == "__main__":
    raise SystemExit(main())
