"""What a watched engine costs the sessions that do not cache.

``watch_engine`` (run by a caching session's first sight of an engine) puts this package's
listeners on the engine; every session on it then runs them, plain ``Session`` objects
included. This times a plain Session's primary-key read on PostgreSQL (a new session each
time) on three engines of one process, every call shuffled each iteration:

- ``bare``: no listener at all;
- ``noop``: one no-op ``before_cursor_execute`` listener (what any listener costs: SQLAlchemy
  joins the engine's dispatch into each new connection's);
- ``watched``: this package's listeners.

Ratios are each engine's median over ``bare``'s; ``--rounds`` processes, median of rounds.

    python benchmarks/bench_listeners.py [--rounds 3] [--iterations 2000] [--json]
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
from sqlalchemy import Integer, String, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from yokedcache_sa.orm import watch_engine

n = int(sys.argv[1])
suffix = uuid.uuid4().hex[:6]

class Base(DeclarativeBase):
    pass

class Row(Base):
    __tablename__ = f"bench_listeners_{suffix}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

url = os.environ["PG_URL"]
setup = create_engine(url)
Base.metadata.create_all(setup)
try:
    with Session(setup) as s:
        s.add_all(Row(id=i, name=f"r{i}") for i in range(1, 21))
        s.commit()
    engines = {name: create_engine(url, pool_size=5) for name in ("bare", "noop", "watched")}
    event.listen(engines["noop"], "before_cursor_execute", lambda *args: None)
    watch_engine(engines["watched"])

    def read(factory):
        def f():
            with factory() as db:
                return db.query(Row).filter(Row.id == 7).first()
        return f

    fns = {name: read(sessionmaker(e)) for name, e in engines.items()}
    for f in fns.values():
        for _ in range(200):
            f()
    times = {name: [] for name in fns}
    rng = random.Random(1)
    calls = list(fns.items())
    clock = time.perf_counter_ns
    for _ in range(n):
        rng.shuffle(calls)
        for name, f in calls:
            t0 = clock()
            f()
            times[name].append(clock() - t0)
    print(json.dumps({name: statistics.median(v) / 1000 for name, v in times.items()}))
finally:
    Base.metadata.drop_all(setup)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--json", action="store_true", help="one JSON object as the last line")
    args = ap.parse_args()
    env = child_env()
    ratios: dict[str, list[float]] = {"noop": [], "watched": []}
    medians: dict[str, list[float]] = {"bare": [], "noop": [], "watched": []}
    for r in range(args.rounds):
        done = run_child("bench_listeners", CHILD, [str(args.iterations)], env)
        out: dict[str, float] = last_json(done)
        for name, us in out.items():
            medians[name].append(us)
        for name in ratios:
            ratios[name].append(out[name] / out["bare"])
        print(
            f"round {r + 1}/{args.rounds}: bare {out['bare']:.1f} us, "
            + ", ".join(f"{k} x{v[-1]:.3f}" for k, v in ratios.items())
        )
    result: dict[str, Any] = {
        "ratio_vs_bare": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
        "ratio_range": {k: [round(min(v), 3), round(max(v), 3)] for k, v in ratios.items()},
        "median_us": {k: round(statistics.median(v), 1) for k, v in medians.items()},
        "load_average": round(os.getloadavg()[0], 2),
    }
    print("engine    plain-Session PK read / bare engine")
    for name in ("noop", "watched"):
        print(f"{name:<9} {result['ratio_vs_bare'][name]:.3f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
