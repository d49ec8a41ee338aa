"""Core timings: Redis get-hit overhead, memory get-hit latency (version record shared across
processes, the default, vs process-local), invalidation cost vs entry count.

Run::

    .venv/bin/python benchmarks/bench_core.py [--json] [--iterations N] [--redis-url URL]

Every number is a median of per-iteration ``time.perf_counter_ns`` samples (small batches for
sub-microsecond steps). With ``--json`` the last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import redis

from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.redis_lua import SCRIPTS
from yokedcache_sa.keys import normalize_key
from yokedcache_sa.tags import tag_ids

REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
VALUE_1K = {
    "id": 12345,
    "name": "Ada Lovelace",
    "email": "ada@example.com",
    "bio": "x" * 900,
    "scores": [1, 2, 3, 4, 5],
}


def median_ns(step: Callable[[], object], iterations: int, batch: int = 1) -> float:
    """Median nanoseconds of one call of *step* over *iterations* samples of *batch* calls."""
    for _ in range(min(200, iterations)):  # warm up caches, connections, branch predictors
        step()
    samples = []
    clock = time.perf_counter_ns
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(iterations):
            t0 = clock()
            for _ in range(batch):
                step()
            samples.append((clock() - t0) / batch)
    finally:
        if gc_was:
            gc.enable()
    return statistics.median(samples)


def bench_redis_hit(url: str, iterations: int) -> dict[str, float]:
    prefix = "bench" + uuid.uuid4().hex[:8]
    cache = YokedCache(CacheConfig(redis_url=url, key_prefix=prefix))
    try:
        assert cache.set_sync("user:1", VALUE_1K, tags=["table:users"], ttl=None)
        assert cache.get_sync("user:1") == VALUE_1K
        raw = cache.backend.client  # type: ignore[attr-defined]
        entry_key = f"{prefix}:e:{normalize_key('user:1')}"
        framed: bytes = raw.get(entry_key)
        # the same entry bytes: skip the tag list and the codec header, unpack the body
        payload = framed.partition(b"\x00")[2]
        header = cache.entry_header(normalize_key("user:1"), payload)
        body_at = len(framed) - len(payload) + header.body_start
        body_end = len(framed) - len(payload) + header.body_end
        assert msgpack.unpackb(framed[body_at:body_end]) == VALUE_1K
        plain = redis.Redis.from_url(url)

        def raw_get() -> Any:
            data: bytes = plain.get(entry_key)  # type: ignore[assignment]  # no decode_responses
            return msgpack.unpackb(data[body_at:body_end])

        def yoked_get() -> Any:
            return cache.get_sync("user:1")

        # interleave call by call so drift in machine load hits both sides alike
        for _ in range(200):
            raw_get()
            yoked_get()
        raw_ns: list[int] = []
        yoked_ns: list[int] = []
        clock = time.perf_counter_ns
        for _ in range(iterations):
            t0 = clock()
            raw_get()
            t1 = clock()
            yoked_get()
            yoked_ns.append(clock() - t1)
            raw_ns.append(t1 - t0)
        plain.close()
        raw_m, yoked_m = statistics.median(raw_ns), statistics.median(yoked_ns)
        return {
            "redis_hit_us": yoked_m / 1000,
            "raw_get_unpack_us": raw_m / 1000,
            "redis_hit_vs_raw_get": yoked_m / raw_m,
        }
    finally:
        cache.clear_sync()
        cache.disconnect_sync()


def bench_memory_hit(iterations: int) -> dict[str, float]:
    """Memory hits with the version record shared across processes (the default) and local,
    sampled alternately so that machine noise hits both alike."""
    prefix = "bench" + uuid.uuid4().hex[:8]
    shared = YokedCache(CacheConfig(key_prefix=prefix))
    local = YokedCache(CacheConfig(key_prefix=prefix + "l", memory_shared=False))
    small = {"id": 1, "name": "Ada", "active": True}
    for cache in (shared, local):
        assert cache.set_sync("user:1", VALUE_1K, tags=["table:users"], ttl=None)
        assert cache.set_sync("user:2", small, tags=["table:users"], ttl=None)
        assert cache.get_sync("user:1") == VALUE_1K
    assert getattr(shared.backend, "shared", False), "the shared version file is unusable"
    out: dict[str, list[float]] = {"shared": [], "local": [], "shared_small": []}
    steps = {
        "shared": lambda: shared.get_sync("user:1"),
        "local": lambda: local.get_sync("user:1"),
        "shared_small": lambda: shared.get_sync("user:2"),
    }
    rounds = 10
    for _ in range(rounds):
        for name, step in steps.items():
            out[name].append(median_ns(step, max(50, iterations // rounds), batch=20))
    shared.disconnect_sync()
    local.disconnect_sync()
    m = {name: statistics.median(v) / 1000 for name, v in out.items()}
    return {
        "memory_hit_us": m["shared"],
        "memory_hit_small_us": m["shared_small"],
        "memory_hit_local_us": m["local"],
        "memory_shared_overhead_us": m["shared"] - m["local"],
        "memory_shared_vs_local": m["shared"] / m["local"],
    }


def _fill(cache: YokedCache, n: int, tag: str) -> None:
    """Store *n* genuine entries carrying *tag*, pipelined (set_sync one by one is slow)."""
    backend: Any = cache.backend
    client = backend.client
    sha = client.script_load(SCRIPTS["store"])
    snap = cache.observe_sync()
    assert snap is not None
    ids = tag_ids([tag])
    for start in range(0, n, 2000):
        with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(n, start + 2000)):
                key = normalize_key(f"row:{i}")
                payload = cache._encode(key, i, ids, snap)
                args = backend.commands.store_args(payload, None, ids, snap.epoch, snap.seq, None)
                keys = (backend.entry_key(key), backend.meta_key, backend.commands.lock_key(key))
                pipe.evalsha(sha, len(keys), *keys, *args)
            assert all(r == 1 for r in pipe.execute())
    assert cache.get_sync("row:0") == 0


def bench_invalidate(url: str, iterations: int) -> dict[str, float]:
    """Invalidate one tag carried by 100 vs 100,000 live entries, interleaved call by call so
    that machine noise hits both sides alike."""
    caches = {
        n: YokedCache(CacheConfig(redis_url=url, key_prefix="bench" + uuid.uuid4().hex[:8]))
        for n in (100, 100_000)
    }
    try:
        for n, cache in caches.items():
            _fill(cache, n, "table:big")
            assert cache.get_stats_sync().key_count == n
        samples: dict[int, list[int]] = {n: [] for n in caches}
        clock = time.perf_counter_ns
        for _ in range(200):
            for cache in caches.values():
                cache.invalidate_tags_sync(["table:big"])
        for _ in range(iterations):
            for n, cache in caches.items():
                t0 = clock()
                cache.invalidate_tags_sync(["table:big"])
                samples[n].append(clock() - t0)
        small, big = statistics.median(samples[100]), statistics.median(samples[100_000])
    finally:
        for cache in caches.values():
            cache.clear_sync()
            cache.disconnect_sync()
    return {
        "invalidate_1e2_us": small / 1000,
        "invalidate_1e5_us": big / 1000,
        "invalidate_1e5_vs_1e2": big / small,
    }


TARGETS = {
    "redis_hit_vs_raw_get": 1.3,
    "memory_hit_us": 3.0,
    "memory_shared_overhead_us": 2.0,
    "invalidate_1e5_vs_1e2": 1.5,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--iterations", type=int, default=5000, help="samples per measurement")
    parser.add_argument("--redis-url", default=REDIS_URL)
    args = parser.parse_args(argv)
    n = max(50, args.iterations)

    t0 = time.monotonic()
    results: dict[str, float] = {}
    results.update(bench_memory_hit(n))
    results.update(bench_redis_hit(args.redis_url, n))
    results.update(bench_invalidate(args.redis_url, max(50, n // 5)))
    elapsed = time.monotonic() - t0

    ok = True
    print(f"{'metric':<26}{'value':>12}{'target':>10}  result")
    for name, value in results.items():
        target = TARGETS.get(name)
        if target is None:
            print(f"{name:<26}{value:>12.3f}{'':>10}  (info)")
            continue
        passed = value <= target
        ok = ok and passed
        print(f"{name:<26}{value:>12.3f}{'<= ' + str(target):>10}  {'PASS' if passed else 'FAIL'}")
    print(f"({n} iterations, {elapsed:.1f}s)")
    if args.json:
        report = {
            "results": {k: round(v, 4) for k, v in results.items()},
            "targets": TARGETS,
            "passed": {k: results[k] <= t for k, t in TARGETS.items()},
            "iterations": n,
            "seconds": round(elapsed, 1),
            "python": sys.version.split()[0],
        }
        print(json.dumps(report, sort_keys=True))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
