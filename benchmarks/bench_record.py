"""What the memory backend's host-shared version record costs a cache hit.

Two memory caches in one process, one with the record shared through a file (the default,
``memory_shared=True``: every worker process of the host sees each other's commits, #12) and
one process-local (``memory_shared=False``, 0.1's record), serve the same ORM primary-key
hit on PostgreSQL. Two phases, every call shuffled each iteration:

- ``tight``: the two hits back to back (the record's path check, due every ``RECHECK``
  seconds of reads, rarely falls due);
- ``spaced``: with a plain-Session read of PostgreSQL among them, as between the requests
  of a real worker (the check falls due more often).

Printed per phase: the shared hit's median over the local one's, and the share of shared
reads that ran the check (an ``epoll_wait`` of the file's inotify watch). ``--rounds``
processes, median of rounds.

    python benchmarks/bench_record.py [--rounds 3] [--iterations 2000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

from _child import child_env, last_json, run_child

CHILD = r"""
import json, os, random, statistics, sys, time, uuid
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
import yokedcache_sa as yc
from yokedcache_sa.backends import shared

n = int(sys.argv[1])
suffix = uuid.uuid4().hex[:6]
checks = [0]
_recheck = shared.SharedVersions._recheck

def counted(self, force=False):
    checks[0] += 1
    return _recheck(self, force)

shared.SharedVersions._recheck = counted

class Base(DeclarativeBase):
    pass

class Row(Base):
    __tablename__ = f"bench_record_{suffix}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

url = os.environ["PG_URL"]
setup = create_engine(url)
Base.metadata.create_all(setup)
caches = []
try:
    with Session(setup) as s:
        s.add_all(Row(id=i, name=f"r{i}") for i in range(1, 21))
        s.commit()
    engine = create_engine(url, pool_size=5)
    fns = {}
    for name, on in (("shared", True), ("local", False)):
        cache = yc.YokedCache(yc.CacheConfig(key_prefix=f"brec{suffix}{name}", memory_shared=on))
        caches.append(cache)
        factory = sessionmaker(engine, class_=yc.CachingSession, cache=cache)
        def f(factory=factory):
            with factory() as db:
                return db.query(Row).filter(Row.id == 7).first()
        fns[name] = f
    plain = sessionmaker(engine)
    def pg():
        with plain() as db:
            return db.query(Row).filter(Row.id == 8).first()
    for f in fns.values():
        for _ in range(200):
            f()
    out = {}
    clock = time.perf_counter_ns
    for phase in ("tight", "spaced"):
        calls = list(fns.items()) + ([("pg", pg)] if phase == "spaced" else [])
        times = {name: [] for name, _ in calls}
        rng = random.Random(1)
        checks[0] = 0
        for _ in range(n):
            rng.shuffle(calls)
            for name, f in calls:
                t0 = clock()
                f()
                times[name].append(clock() - t0)
        med = {name: statistics.median(v) / 1000 for name, v in times.items()}
        out[phase] = {"shared_us": med["shared"], "local_us": med["local"],
                      "checked": checks[0] / n}
    print(json.dumps(out))
finally:
    for c in caches:
        c.clear_sync()
    Base.metadata.drop_all(setup)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = ap.parse_args()
    env = child_env()
    phases = ("tight", "spaced")
    ratios: dict[str, list[float]] = {p: [] for p in phases}
    checked: dict[str, list[float]] = {p: [] for p in phases}
    medians: dict[str, dict[str, list[float]]] = {p: {"shared": [], "local": []} for p in phases}
    for r in range(args.rounds):
        done = run_child("bench_record", CHILD, [str(args.iterations)], env)
        out: dict[str, dict[str, float]] = last_json(done)
        for p in phases:
            ratios[p].append(out[p]["shared_us"] / out[p]["local_us"])
            checked[p].append(out[p]["checked"])
            medians[p]["shared"].append(out[p]["shared_us"])
            medians[p]["local"].append(out[p]["local_us"])
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(
                f"{p} shared/local x{ratios[p][-1]:.3f} ({checked[p][-1]:.0%} checked)"
                for p in phases
            )
        )
    result: dict[str, Any] = {
        "ratio_shared_vs_local": {p: round(statistics.median(v), 3) for p, v in ratios.items()},
        "ratio_range": {p: [round(min(v), 3), round(max(v), 3)] for p, v in ratios.items()},
        "checked_share": {p: round(statistics.median(v), 3) for p, v in checked.items()},
        "median_us": {
            p: {k: round(statistics.median(v), 1) for k, v in d.items()} for p, d in medians.items()
        },
        "load_average": round(os.getloadavg()[0], 2),
    }
    print("phase    shared-record hit / process-local hit   share of hits that checked")
    for p in phases:
        print(f"{p:<8} {result['ratio_shared_vs_local'][p]:.3f}{result['checked_share'][p]:>40.0%}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
