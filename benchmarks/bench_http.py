"""HTTP benchmark: the demo app under uvicorn, cached routes vs the same routes uncached.

For each stack (SQLite + memory, PostgreSQL + memory, PostgreSQL + Redis) one uvicorn
subprocess serves integrations/fastapi_app; one keep-alive client (stdlib http.client) then
sends, interleaved round-robin, ``GET /users/{id}``, ``GET /uncached/users/{id}``,
``GET /users`` and ``GET /uncached/users`` (after seeding and warming), so noise hits all variants
alike. Reported: median latency and requests/s (serial client) per variant, and the
uncached/cached ratio of the medians. ``--concurrency N`` adds a phase with N client threads
(aggregate requests/s of the single-user read, cached vs uncached).

    python benchmarks/bench_http.py [--requests 500] [--concurrency 4] [--json]

``--json`` prints one JSON object as the last line; ``http_speedup_pg`` is the headline
(single-user read on PostgreSQL + memory backend, target >= 1.5).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from integrations.fastapi_app.__main__ import free_port, start_server, stop_server  # noqa: E402
from yokedcache_sa import CacheConfig, YokedCache  # noqa: E402

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET = 1.5
USERS = 20
VARIANTS = ("get_cached", "get_uncached", "list_cached", "list_uncached")


def stacks(tmp: Path) -> list[tuple[str, dict[str, str]]]:
    return [
        ("sqlite+memory", {"DATABASE_URL": f"sqlite:///{tmp / 'bench_http.db'}"}),
        ("pg+memory", {"DATABASE_URL": PG_URL}),
        ("pg+redis", {"DATABASE_URL": PG_URL, "YOKEDCACHE_REDIS_URL": REDIS_URL}),
    ]


class Client:
    """A minimal keep-alive HTTP/1.1 client (http.client): its own cost per request is a
    fraction of httpx's, so the numbers are mostly the server's."""

    def __init__(self, base: str) -> None:
        u = httpx.URL(base)
        self.conn = http.client.HTTPConnection(u.host, u.port, timeout=30)

    def get(self, path: str) -> bytes:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
        return body

    def timed(self, path: str) -> float:
        t0 = time.perf_counter()
        self.get(path)
        return time.perf_counter() - t0

    def close(self) -> None:
        self.conn.close()


def measure(base: str, n: int, concurrency: int) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    lat: dict[str, list[float]] = {v: [] for v in VARIANTS}
    out: dict[str, Any] = {}
    with httpx.Client(base_url=base, timeout=30) as c:
        ids = []
        for i in range(USERS):
            r = c.post("/users", json={"name": f"bench{i}", "email": f"bh-{tag}-{i}@example.com"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        for uid in ids:  # warm: the first read of each row is a miss; warm the pools too
            c.get(f"/users/{uid}")
            c.get(f"/uncached/users/{uid}")
        c.get("/users")
        c.get("/uncached/users")
        fast = Client(base)
        try:
            for i in range(n):
                uid = ids[i % len(ids)]
                lat["get_cached"].append(fast.timed(f"/users/{uid}"))
                lat["get_uncached"].append(fast.timed(f"/uncached/users/{uid}"))
                lat["list_cached"].append(fast.timed("/users"))
                lat["list_uncached"].append(fast.timed("/uncached/users"))
        finally:
            fast.close()
        for v in VARIANTS:
            out[f"{v}_median_us"] = round(statistics.median(lat[v]) * 1e6, 1)
            out[f"{v}_rps"] = round(len(lat[v]) / sum(lat[v]), 1)
        out["get_speedup"] = round(
            statistics.median(lat["get_uncached"]) / statistics.median(lat["get_cached"]), 3
        )
        out["list_speedup"] = round(
            statistics.median(lat["list_uncached"]) / statistics.median(lat["list_cached"]), 3
        )
        out["hit_rate"] = c.get("/admin/cache/stats").json()["hit_rate"]
        if concurrency > 1:
            for v, path in (("get_cached", "/users"), ("get_uncached", "/uncached/users")):
                out[f"{v}_rps_x{concurrency}"] = round(
                    concurrent_rps(base, path, ids, n, concurrency), 1
                )
        for uid in ids:  # leave the shared database as we found it
            c.delete(f"/users/{uid}")
    return out


def concurrent_rps(base: str, path: str, ids: list[int], n: int, threads: int) -> float:
    per = max(1, n // threads)
    barrier = threading.Barrier(threads + 1)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        c = Client(base)
        try:
            c.get(f"{path}/{ids[k % len(ids)]}")  # connect before the clock starts
            barrier.wait()
            for i in range(per):
                c.get(f"{path}/{ids[(k + i) % len(ids)]}")
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
        finally:
            c.close()

    ts = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return per * threads / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=500, help="requests per variant and stack")
    ap.add_argument("--concurrency", type=int, default=4, help="client threads (0: skip)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import tempfile

    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in stacks(Path(tmp)):
            prefix = "bh" + uuid.uuid4().hex[:10]
            env = {**env, "YOKEDCACHE_KEY_PREFIX": prefix}
            saved = os.environ.pop("YOKEDCACHE_REDIS_URL", None)
            port = free_port()
            proc = start_server(port, env)
            try:
                results[name] = measure(f"http://127.0.0.1:{port}", args.requests, args.concurrency)
            finally:
                stop_server(proc)
                if saved is not None:
                    os.environ["YOKEDCACHE_REDIS_URL"] = saved
                if "YOKEDCACHE_REDIS_URL" in env:
                    c = YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=prefix))
                    c.clear_sync()
                    c.disconnect_sync()

    print(f"{args.requests} requests per variant, one keep-alive client, interleaved")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    head = f"{'stack':14} {'route':16} {'cached us':>10} {'uncached us':>12} {'x':>6}"
    head += f" {'cached rps':>11} {'uncached rps':>13}"
    print(head)
    for name, r in results.items():
        for route, v in (("GET /users/{id}", "get"), ("GET /users", "list")):
            print(
                f"{name:14} {route:16} {r[f'{v}_cached_median_us']:10.0f} "
                f"{r[f'{v}_uncached_median_us']:12.0f} {r[f'{v}_speedup']:6.2f} "
                f"{r[f'{v}_cached_rps']:11.0f} {r[f'{v}_uncached_rps']:13.0f}"
            )
    if args.concurrency > 1:
        print(f"{args.concurrency} client threads, GET /users/{{id}} aggregate requests/s:")
        for name, r in results.items():
            x = args.concurrency
            c, u = r[f"get_cached_rps_x{x}"], r[f"get_uncached_rps_x{x}"]
            print(f"  {name:14} cached {c:7.0f}   uncached {u:7.0f}   x{c / u:.2f}")
    headline = results["pg+memory"]["get_speedup"]
    ok = "ok" if headline >= TARGET else "BELOW TARGET"
    print(f"http_speedup_pg {headline:.2f} (target >= {TARGET}) {ok}")
    elapsed = time.perf_counter() - started
    print(f"elapsed {elapsed:.1f} s")
    if args.json:
        summary: dict[str, Any] = {
            "http_speedup_pg": headline,
            "http_speedup_pg_redis": results["pg+redis"]["get_speedup"],
            "http_speedup_sqlite": results["sqlite+memory"]["get_speedup"],
            "http_list_speedup_pg": results["pg+memory"]["list_speedup"],
            "http_list_speedup_pg_redis": results["pg+redis"]["list_speedup"],
            "http_list_speedup_sqlite": results["sqlite+memory"]["list_speedup"],
            "requests_per_variant": args.requests,
            "elapsed_s": round(elapsed, 1),
            "stacks": results,
        }
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
