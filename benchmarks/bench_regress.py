"""Hit-path speed of this tree against an earlier revision (default: the 0.1 release, 94c00e3).

The same ORM hit paths as ``bench_orm.py`` (a PK lookup and a 20-row list, each in a new
session, over PostgreSQL, memory and Redis backends) and a control (a plain-Session read on
the same engine, where only the trees' engine listeners run) run in child processes, one
tree each, in ABBA order for ``--rounds`` rounds, so slow drift of the machine hits both
trees alike. Each round gives one ratio per path (this tree's median / the base's); the
median of those is reported. Far from 1.0 on the control, or a wide ``ratio_range``, and
the machine was too noisy for the run to say much.

``--callgrind`` counts instructions per call instead (valgrind; deterministic, slow):
``(Ir at 2n calls - Ir at n calls) / n`` per tree and path, with a fixed hash seed.

    python benchmarks/bench_regress.py [--base 94c00e3] [--rounds 6] [--iterations 3000] [--json]
    python benchmarks/bench_regress.py --callgrind [--iterations 300] [--json]

The base revision is checked out with ``git worktree`` into a temporary directory (removed
afterwards); it must accept the 0.1 API (``CachingSession``, ``YokedCache(CacheConfig(...))``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PATHS = ("memory_pk", "memory_list20", "redis_pk", "redis_list20", "plain_pg_pk")
TARGET = 1.05  # issue #9: no hit path more than 5 % slower than 0.1

CHILD = r"""
import gc, json, os, statistics, sys, time, uuid
from sqlalchemy import Boolean, Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from yokedcache_sa import CacheConfig, CachingSession, YokedCache

paths, n, counting = sys.argv[1].split(","), int(sys.argv[2]), sys.argv[3] == "count"
if counting:
    try:  # valgrind runs ~50x slower: keep the version record's 5 ms recheck timer quiet
        import yokedcache_sa.backends.shared as shared
        shared.RECHECK = 3600.0
    except ImportError:
        pass
suffix = os.environ.get("BENCH_SUFFIX") or uuid.uuid4().hex[:6]

class Base(DeclarativeBase):
    pass

class User(Base):
    __tablename__ = f"bench_regress_{suffix}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

pg = create_engine(os.environ["PG_URL"], pool_size=5)
Base.metadata.create_all(pg)
try:
    with Session(pg) as s:
        s.add_all(User(id=i, name=f"user{i}", email=f"u{i}@example.com") for i in range(1, 201))
        s.commit()
    mem = YokedCache(CacheConfig(key_prefix=f"br{suffix}"))
    red = YokedCache(CacheConfig(redis_url=os.environ["REDIS_URL"], key_prefix=f"br{suffix}"))
    factories = {
        "memory": sessionmaker(pg, class_=CachingSession, cache=mem),
        "redis": sessionmaker(pg, class_=CachingSession, cache=red),
        "plain": sessionmaker(pg),
    }

    def make(path):
        backend, _, what = path.partition("_")
        if backend == "plain":
            what = what.split("_", 1)[1]
        factory = factories[backend]
        if what == "pk":
            def f():
                with factory() as db:
                    return db.query(User).filter(User.id == 42).first()
        else:
            def f():
                with factory() as db:
                    q = db.query(User).filter(User.active.is_(True)).order_by(User.id)
                    return q.limit(20).all()
        return f

    fns = {p: make(p) for p in paths}
    for f in fns.values():
        for _ in range(200):  # the first is a miss that fills the cache
            f()
    if counting:
        gc.collect()
        gc.freeze()
        f = fns[paths[0]]
        for _ in range(n):
            f()
        out = {}
    else:
        times = {p: [] for p in paths}
        clock = time.perf_counter_ns
        for _ in range(n):
            for p, f in fns.items():
                t = clock()
                f()
                times[p].append(clock() - t)
        out = {p: statistics.median(v) / 1000 for p, v in times.items()}
    if not counting:  # a write would wait out the patched recheck interval
        mem.clear_sync()
    red.clear_sync()
finally:
    Base.metadata.drop_all(pg)
    pg.dispose()
print(json.dumps(out))
"""


def _env(tree: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env.setdefault(
        "PG_URL",
        os.environ.get(
            "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    env.setdefault(
        "REDIS_URL", os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    env.update(extra or {})
    return env


def _child(tree: Path, paths: list[str], n: int, mode: str, prefix: list[str]) -> str:
    cmd = [*prefix, sys.executable, "-c", CHILD, ",".join(paths), str(n), mode]
    env = _env(tree, {"PYTHONHASHSEED": "0", "BENCH_SUFFIX": "cg0001"} if prefix else None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"bench_regress: the child for {tree} failed:\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def _timed(base: Path, head: Path, rounds: int, n: int) -> dict[str, Any]:
    ratios: dict[str, list[float]] = {p: [] for p in PATHS}
    medians: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    for r in range(rounds):
        order = [("base", base), ("head", head)]
        if r % 2:
            order.reverse()  # ABBA: drift within a round hits both trees alike
        got = {}
        for name, tree in order:
            out = json.loads(_child(tree, list(PATHS), n, "time", []).strip().splitlines()[-1])
            got[name] = out
            for p, v in out.items():
                medians[name].setdefault(p, []).append(v)
        for p in PATHS:
            ratios[p].append(got["head"][p] / got["base"][p])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{p} {ratios[p][-1]:.3f}" for p in PATHS))
    return {
        "ratio": {p: round(statistics.median(v), 3) for p, v in ratios.items()},
        "ratio_range": {p: [round(min(v), 3), round(max(v), 3)] for p, v in ratios.items()},
        "median_us": {
            name: {p: round(statistics.median(v), 1) for p, v in d.items()}
            for name, d in medians.items()
        },
    }


def _counted(base: Path, head: Path, n: int) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        sys.exit("bench_regress: --callgrind needs valgrind on PATH")
    per_call: dict[str, dict[str, int]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for p in PATHS:
            for name, tree in (("base", base), ("head", head)):
                ir = []
                for calls in (n, 2 * n):
                    out = Path(tmp) / f"cg.{name}.{p}.{calls}"
                    prefix = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
                    text = _child(tree, [p], calls, "count", prefix)
                    found = re.search(r"Collected : (\d+)", text)
                    if found is None:
                        sys.exit(f"bench_regress: no instruction count from valgrind:\n{text}")
                    ir.append(int(found.group(1)))
                per_call[name][p] = (ir[1] - ir[0]) // n
            print(f"{p}: base {per_call['base'][p]} Ir/call, head {per_call['head'][p]} Ir/call")
    return {
        "ratio": {p: round(per_call["head"][p] / per_call["base"][p], 3) for p in PATHS},
        "ir_per_call": per_call,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="94c00e3", help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    head_rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="bench-regress-"))
    base = tmp / "base"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.base],
        check=True,
    )
    try:
        if args.callgrind:
            result = _counted(base, ROOT, args.iterations or 300)
        else:
            result = _timed(base, ROOT, args.rounds, args.iterations or 3000)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(
        base=args.base,
        head=head_rev,
        mode="callgrind" if args.callgrind else "wall",
        load_average=round(os.getloadavg()[0], 2),
    )
    print(f"{'path':16} {'head/base':>10} {'target':>8}  ok")
    for p in PATHS:
        v = result["ratio"][p]
        target = "" if p.startswith("plain") else f"<= {TARGET}"
        ok = "" if p.startswith("plain") else ("yes" if v <= TARGET else "NO")
        print(f"{p:16} {v:10.3f} {target:>8}  {ok}")
    print("(plain_pg_pk: a plain Session on the same engine; only the engine listeners differ)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
