"""A small bounded workload against the demo app: cached vs uncached latency, hit rate, and a
freshness check after every write.

Usage: python -m integrations.fastapi_app.load --url http://127.0.0.1:8000 [--rounds 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from typing import Any

import httpx


def _timed(client: httpx.Client, method: str, url: str, **kw: Any) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.request(method, url, **kw)
    return (time.perf_counter() - t0) * 1e6, r


def run_workload(base_url: str, rounds: int = 200, users: int = 20) -> dict[str, Any]:
    """Seed users, read them cached and uncached side by side, then write and verify that
    every write is visible on the very next read (cached single row, cached list, analytics).
    """
    cached_us: list[float] = []
    uncached_us: list[float] = []
    list_cached_us: list[float] = []
    list_uncached_us: list[float] = []
    stale = 0
    tag = uuid.uuid4().hex[:8]
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        ids = []
        for i in range(users):
            r = client.post("/users", json={"name": f"user{i}", "email": f"{tag}-{i}@example.com"})
            r.raise_for_status()
            ids.append(r.json()["id"])
        for uid in ids:  # warm: the first read of each row is a miss
            client.get(f"/users/{uid}").raise_for_status()
        client.get("/users").raise_for_status()
        for n in range(rounds):  # reads only, cached and uncached interleaved
            uid = ids[n % len(ids)]
            t, r = _timed(client, "GET", f"/users/{uid}")
            cached_us.append(t)
            t, r2 = _timed(client, "GET", f"/uncached/users/{uid}")
            uncached_us.append(t)
            stale += r.json() != r2.json()
            t, r = _timed(client, "GET", "/users")
            list_cached_us.append(t)
            t, r2 = _timed(client, "GET", "/uncached/users")
            list_uncached_us.append(t)
            stale += r.json() != r2.json()
        for n, uid in enumerate(ids):  # writes: the next read must see each one
            new = f"renamed-{n}"
            client.put(f"/users/{uid}", json={"name": new}).raise_for_status()
            stale += client.get(f"/users/{uid}").json()["name"] != new
            stale += client.get("/users").json() != client.get("/uncached/users").json()
        stats = client.get("/admin/cache/stats").json()
        analytics = client.get("/analytics/users").json()
        client.get("/analytics/users")
        client.post("/users", json={"name": "late", "email": f"{tag}-late@example.com"})
        stale += client.get("/analytics/users").json()["total"] != analytics["total"] + 1
        uid = ids[0]
        client.delete(f"/users/{uid}").raise_for_status()
        stale += client.get(f"/users/{uid}").status_code != 404
    med = statistics.median
    return {
        "rounds": rounds,
        "hit_rate": stats["hit_rate"],
        "cached_get_us": round(med(cached_us), 1),
        "uncached_get_us": round(med(uncached_us), 1),
        "get_speedup": round(med(uncached_us) / med(cached_us), 2),
        "cached_list_us": round(med(list_cached_us), 1),
        "uncached_list_us": round(med(list_uncached_us), 1),
        "list_speedup": round(med(list_uncached_us) / med(list_cached_us), 2),
        "stale_reads": stale,
        "backend": stats["backend"],
    }


def print_report(result: dict[str, Any]) -> None:
    print(f"requests per kind    {result['rounds']}")
    print(f"cache backend        {result['backend']}")
    print(f"hit rate             {result['hit_rate']:.1%}")
    print(
        f"GET /users/{{id}}      cached {result['cached_get_us']:.0f} us   "
        f"uncached {result['uncached_get_us']:.0f} us   x{result['get_speedup']}"
    )
    print(
        f"GET /users           cached {result['cached_list_us']:.0f} us   "
        f"uncached {result['uncached_list_us']:.0f} us   x{result['list_speedup']}"
    )
    print(f"stale reads          {result['stale_reads']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    result = run_workload(args.url, args.rounds)
    print_report(result)
    if args.json:
        print(json.dumps(result))
    return 0 if result["stale_reads"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
