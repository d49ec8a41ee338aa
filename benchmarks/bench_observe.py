"""Observability overhead: ORM hit paths with metrics + tracing enabled vs disabled.

The same cached reads as ``bench_orm.py`` (a PK lookup and a 20-row list over PostgreSQL),
each through caches on the same backend: one with nobody listening (the default) and one
instrumented with the Prometheus exporter, the OpenTelemetry metrics exporter and tracing
(an SDK TracerProvider: real spans, recorded, not exported). Each read also runs inside a
recording request span (``*_span`` variants), where the instrumented cache makes a lookup
span per hit — or, with ``hit_spans=False`` (``nohit``), for misses only. All variants run
interleaved in ONE process; medians are reported. Shadow reads at rate 0 are measured as
the cost of their check on the hit path (a config read) against the hit itself.

    python benchmarks/bench_observe.py [--iterations 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
import timeit
import uuid
from collections.abc import Callable
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry
from sqlalchemy import Boolean, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from yokedcache_sa import CacheConfig, CachingSession, YokedCache
from yokedcache_sa.metrics import otel, prometheus

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SUFFIX = uuid.uuid4().hex[:6]

TARGETS = {
    "memory_pk_overhead": 1.05,
    "redis_pk_overhead": 1.05,
    "memory_list20_overhead": 1.05,
    "redis_list20_overhead": 1.05,
    "memory_pk_in_span_nohit_overhead": 1.05,
    "shadow_rate0_fraction": 0.01,
}


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = f"bench_observe_users_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)


def interleaved(fns: dict[str, Callable[[], Any]], n: int) -> dict[str, float]:
    """Median microseconds of each callable, calling them round-robin *n* times (in a new
    random order each round: a call right after a Redis round trip is slower)."""
    times: dict[str, list[int]] = {k: [] for k in fns}
    order = list(fns.items())
    rng = random.Random(13)
    for _ in range(n):
        rng.shuffle(order)
        for k, f in order:
            t = time.perf_counter_ns()
            f()
            times[k].append(time.perf_counter_ns() - t)
    return {k: statistics.median(v) / 1000 for k, v in times.items()}


TRACERS = TracerProvider()


def observed(cache: YokedCache, hit_spans: bool = True) -> YokedCache:
    prometheus.instrument(cache, CollectorRegistry())
    otel.instrument(
        cache,
        MeterProvider(metric_readers=[InMemoryMetricReader()]),
        TRACERS,
        hit_spans=hit_spans,
    )
    return cache


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    n = args.iterations

    pg = create_engine(PG_URL, pool_size=5)
    Base.metadata.create_all(pg)
    with Session(pg) as s:
        s.add_all(User(id=i, name=f"user{i}", email=f"u{i}@example.com") for i in range(1, 201))
        s.commit()
    caches = {
        "memory": YokedCache(CacheConfig(key_prefix=f"bob{SUFFIX}")),
        "memory_obs": observed(YokedCache(CacheConfig(key_prefix=f"boo{SUFFIX}"))),
        "redis": YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=f"bob{SUFFIX}")),
        "redis_obs": observed(
            YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=f"boo{SUFFIX}"))
        ),
        "memory_nohit": observed(
            YokedCache(CacheConfig(key_prefix=f"bon{SUFFIX}")), hit_spans=False
        ),
    }
    makers = {k: sessionmaker(pg, class_=CachingSession, cache=c) for k, c in caches.items()}

    def pk(factory: Any) -> Any:
        with factory() as db:
            return db.query(User).filter(User.id == 42).first()

    request = TRACERS.get_tracer("bench")

    def pk_in_span(factory: Any) -> Any:
        with request.start_as_current_span("request"):
            return pk(factory)

    def list20(factory: Any) -> Any:
        with factory() as db:
            return db.query(User).filter(User.active.is_(True)).order_by(User.id).limit(20).all()

    try:
        for f in makers.values():
            pk(f)
            list20(f)
        fns: dict[str, Callable[[], Any]] = {}
        for k, f in makers.items():
            fns[f"{k}_pk"] = lambda f=f: pk(f)
            if k.startswith("memory"):
                fns[f"{k}_pk_span"] = lambda f=f: pk_in_span(f)
            if k != "memory_nohit":
                fns[f"{k}_list20"] = lambda f=f: list20(f)
        med = interleaved(fns, n)
        for k, c in caches.items():
            stats = c.get_stats_sync()
            assert stats.misses == 2, (k, stats)  # every timed call was a hit (after warming)
        cfg = caches["memory"].config
        check_us = min(timeit.repeat(lambda: cfg.shadow_read_rate, number=100_000, repeat=5))
        check_us = check_us / 100_000 * 1e6
    finally:
        Base.metadata.drop_all(pg)
        for c in caches.values():
            c.clear_sync()
        pg.dispose()

    result: dict[str, Any] = {
        "memory_pk_overhead": med["memory_obs_pk"] / med["memory_pk"],
        "redis_pk_overhead": med["redis_obs_pk"] / med["redis_pk"],
        "memory_list20_overhead": med["memory_obs_list20"] / med["memory_list20"],
        "redis_list20_overhead": med["redis_obs_list20"] / med["redis_list20"],
        "memory_pk_in_span_overhead": med["memory_obs_pk_span"] / med["memory_pk_span"],
        "memory_pk_in_span_nohit_overhead": med["memory_nohit_pk_span"] / med["memory_pk_span"],
        "shadow_rate0_check_us": check_us,
        "shadow_rate0_fraction": check_us / med["memory_pk"],
        "medians_us": {k: round(v, 1) for k, v in med.items()},
        "iterations": n,
    }
    print(f"{'measure':28} {'value':>10} {'target':>10}  ok")
    for k, v in result.items():
        if k in ("medians_us", "iterations"):
            continue
        t = TARGETS.get(k)
        ok = "" if t is None else ("yes" if v <= t else "NO")
        print(f"{k:28} {v:10.4f} {'' if t is None else f'<= {t}':>10}  {ok}")
    print("medians (us):", ", ".join(f"{k}={v}" for k, v in result["medians_us"].items()))
    if args.json:
        print(
            json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in result.items()})
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
