"""Hit-path speed of this tree against an earlier revision (default: the 0.1 release, 94c00e3).

The same ORM hit paths as ``bench_orm.py`` (a PK lookup and a 20-row list, each in a new
session, over PostgreSQL, memory and Redis backends), plus a control (a plain-Session read on
the same engine, none of either tree's read path).

Wall mode (the default) runs **both trees in one process**: the base revision is checked out
and its package renamed ``yokedcache_sa_base``, and every iteration calls each path once per
tree, in an order shuffled anew each iteration (fixed seed). Whole processes differ in speed
here by ±15 % (hash seeds, memory layout), which swamps a 5 % target when each tree runs in a
process of its own; side by side in one process that factor cancels. Half the calls follow a
network round trip (PostgreSQL, Redis), so hits often run on cold CPU caches, as the first
hit of a request does. Each of ``--rounds`` processes gives one
ratio per path (this tree's median / the base's); the median of those is reported.

``--callgrind`` counts instructions per call instead (valgrind, deterministic, slow): each
tree in its own process, with a fixed hash seed, counting only the measured loop (valgrind's
``--toggle-collect`` on the ``functools.reduce`` that runs it), so setup costs nothing.

``--callgrind --cold`` also simulates the caches (a 1 MiB last level) and runs a plain
PostgreSQL read, not counted, before each counted call, as the wall mode's calls often follow
a round trip: it counts the cache lines a hit finds evicted. Instructions alone miss why a
path with fewer of them is slower on the wall; the estimate weighs each event in cycles
(instruction 1, first-level miss 10, last-level miss 150) and is the ratio reported.

    python benchmarks/bench_regress.py [--base 94c00e3] [--rounds 5] [--iterations 2000] [--json]
    python benchmarks/bench_regress.py --callgrind [--cold] [--iterations 100] [--json]

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

from _child import ROOT, child_env, run_child

HIT_PATHS = ("memory_pk", "memory_list20", "redis_pk", "redis_list20")
# issue #11: no benchmark slower than 0.1 by more than 5 % (bench_orm's writes, bench_core's
# key/value API); not in the default run, which is #9's hit paths
WRITE_PATHS = ("memory_write", "redis_write", "memory_dml", "redis_dml")
CORE_PATHS = ("core_memory_get", "core_redis_get", "core_redis_set")
TARGETED = (*HIT_PATHS, *WRITE_PATHS, *CORE_PATHS)
PATHS = (*HIT_PATHS, "plain_pg_pk")
ALL_PATHS = (*PATHS, *WRITE_PATHS, *CORE_PATHS)
TARGET = 1.05  # issues #9 and #11: no path more than 5 % slower than 0.1

# One child process. argv: trees (comma-separated package names), paths, n, mode (time|count|cold).
CHILD = r"""
import functools, gc, importlib, json, os, random, statistics, sys, time, uuid
from sqlalchemy import Boolean, Integer, String, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

trees, paths = sys.argv[1].split(","), sys.argv[2].split(",")
n, counting, cold = int(sys.argv[3]), sys.argv[4] in ("count", "cold"), sys.argv[4] == "cold"
suffix = os.environ.get("BENCH_SUFFIX") or uuid.uuid4().hex[:6]
pkgs = {t: importlib.import_module(t) for t in trees}
# 0.1 listens on the Engine class at import: on this tree's engine too, where it finds this
# tree's per-connection state under the same attribute names and works on it (marks, notes),
# a cost no process running one tree pays. Confine each tree's class-wide engine listeners to
# its own engine.
from sqlalchemy import event
from sqlalchemy.engine import Engine
own_listeners = {}
for t in trees:
    sess = importlib.import_module(t + ".orm.session")
    if hasattr(sess, "_install_engine_listeners"):
        names = ("before_cursor_execute", "begin", "commit", "rollback")
        fns = (sess._before_cursor_execute, sess._on_begin, sess._on_commit, sess._on_rollback)
        own_listeners[t] = [(e, fn) for e, fn in zip(names, fns) if event.contains(Engine, e, fn)]
        for e, fn in own_listeners[t]:
            event.remove(Engine, e, fn)
if counting:
    for t in trees:  # valgrind runs ~50x slower: keep the version record's recheck timer quiet
        try:
            importlib.import_module(t + ".backends.shared").RECHECK = 3600.0
        except ImportError:
            pass

class Base(DeclarativeBase):
    pass

class User(Base):
    __tablename__ = f"bench_regress_{suffix}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True)

class Written(Base):  # the write paths' table: their commits must not invalidate the hits
    __tablename__ = f"bench_regress_w_{suffix}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

setup = create_engine(os.environ["PG_URL"])
Base.metadata.create_all(setup)
caches = []
try:
    with Session(setup) as s:
        s.add_all(User(id=i, name=f"user{i}", email=f"u{i}@example.com") for i in range(1, 201))
        s.add_all(Written(id=i, name=f"row{i}") for i in range(1, 201))
        s.commit()
    factories = {}
    for t, pkg in pkgs.items():
        engine = create_engine(os.environ["PG_URL"], pool_size=5)  # one engine per tree
        for e, fn in own_listeners.get(t, ()):
            event.listen(engine, e, fn)
        for backend in ("memory", "redis"):
            url = {"redis_url": os.environ["REDIS_URL"]} if backend == "redis" else {}
            cache = pkg.YokedCache(pkg.CacheConfig(key_prefix=f"br{suffix}{t[-4:]}", **url))
            caches.append(cache)
            factories[t, backend] = sessionmaker(engine, class_=pkg.CachingSession, cache=cache)
        factories[t, "plain"] = sessionmaker(engine)

    value_1k = {"id": 12345, "name": "Ada", "bio": "x" * 900, "scores": [1, 2, 3, 4, 5]}
    counter = [0]

    def make(t, path):
        backend, _, what = path.partition("_")
        if backend == "core":
            cache = caches[2 * trees.index(t) + (what.startswith("redis"))]
            key = f"core-{t}-{what}"
            cache.set_sync(key, value_1k, ttl=3600)
            if what.endswith("get"):
                def f():
                    return cache.get_sync(key)
            else:
                def f():
                    return cache.set_sync(key, value_1k, ttl=3600)
            return f
        if backend == "plain":
            what = what.split("_", 1)[1]
        factory = factories[t, backend]
        row = 101 + 30 * trees.index(t) + paths.index(path)  # a row per (tree, path)
        if what == "write":
            def f():
                counter[0] += 1
                with factory() as db:
                    u = db.get(Written, row)
                    u.name = f"w{counter[0]}"
                    db.commit()
        elif what == "dml":
            def f():
                counter[0] += 1
                with factory() as db:
                    stmt = update(Written).where(Written.id == row)
                    db.execute(stmt.values(name=f"d{counter[0]}"))
                    db.commit()
        elif what == "pk":
            def f():
                with factory() as db:
                    return db.query(User).filter(User.id == 42).first()
        else:
            def f():
                with factory() as db:
                    q = db.query(User).filter(User.active.is_(True)).order_by(User.id)
                    return q.limit(20).all()
        return f

    fns = {(t, p): make(t, p) for p in paths for t in trees}
    for f in fns.values():
        for _ in range(200):  # the first is a miss that fills the cache
            f()
    gc.collect()
    gc.freeze()
    if counting:
        f = fns[trees[0], paths[0]]
        if cold:  # a PostgreSQL read (the second path) before each call, not counted
            import operator
            before = fns[trees[0], paths[1]]
            for _ in range(n):
                before()
                operator.call(f)  # valgrind counts only inside this
        else:
            functools.reduce(lambda acc, _: f(), range(n), None)  # valgrind counts only this
        out = {}
    else:
        times = {k: [] for k in fns}
        clock = time.perf_counter_ns
        # every (tree, path) once per iteration, in a new order each time: no call always
        # follows the same other one (after the PostgreSQL read a hit runs on cold caches,
        # and a tree that always runs second finds the other's SQLAlchemy code warm)
        rng = random.Random(1)
        calls = list(fns.items())
        for _ in range(n):
            rng.shuffle(calls)
            for k, f in calls:
                t0 = clock()
                f()
                times[k].append(clock() - t0)
        out = {t: {p: statistics.median(times[t, p]) / 1000 for p in paths} for t in trees}
finally:
    if not counting:  # a write would wait out the patched recheck interval
        for c in caches:
            c.clear_sync()
    Base.metadata.drop_all(setup)
print(json.dumps(out))
"""


def _rename(tree: Path, dest: Path) -> None:
    """Copy *tree*'s package to *dest* as ``yokedcache_sa_base`` (every reference renamed)."""
    pkg = dest / "yokedcache_sa_base"
    shutil.copytree(tree / "yokedcache_sa", pkg)
    for f in pkg.rglob("*.py"):
        f.write_text(re.sub(r"\byokedcache_sa\b", "yokedcache_sa_base", f.read_text()))


def _child(
    env: dict[str, str], trees: list[str], paths: list[str], n: int, mode: str, prefix: list[str]
) -> str:
    argv = [",".join(trees), ",".join(paths), str(n), mode]
    done = run_child(f"bench_regress ({trees})", CHILD, argv, env, prefix)
    return done.stdout + done.stderr


def _timed(renamed: Path, rounds: int, n: int, paths: list[str]) -> dict[str, Any]:
    env = child_env([ROOT, renamed])
    trees = ["yokedcache_sa_base", "yokedcache_sa"]
    ratios: dict[str, list[float]] = {p: [] for p in paths}
    medians: dict[str, dict[str, list[float]]] = {"base": {}, "head": {}}
    for r in range(rounds):
        out = json.loads(_child(env, trees, paths, n, "time", []).strip().splitlines()[-1])
        for name, tree in (("base", trees[0]), ("head", trees[1])):
            for p, v in out[tree].items():
                medians[name].setdefault(p, []).append(v)
        for p in paths:
            ratios[p].append(out[trees[1]][p] / out[trees[0]][p])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{p} {ratios[p][-1]:.3f}" for p in paths))
    return {
        "ratio": {p: round(statistics.median(v), 3) for p, v in ratios.items()},
        "ratio_range": {p: [round(min(v), 3), round(max(v), 3)] for p, v in ratios.items()},
        "median_us": {
            name: {p: round(statistics.median(v), 1) for p, v in d.items()}
            for name, d in medians.items()
        },
    }


# --cold: the events of valgrind's cache simulation, and the cycles an event is taken to
# cost (an instruction 1, a first-level miss 10, a last-level miss 150: DRAM on this host)
_EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")
_CYCLES = {"Ir": 1, "I1mr": 10, "D1mr": 10, "D1mw": 10, "ILmr": 150, "DLmr": 150, "DLmw": 150}


def _counted(renamed: Path, n: int, paths: list[str], cold: bool) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        sys.exit("bench_regress: --callgrind needs valgrind on PATH")
    env = child_env([ROOT, renamed], {"PYTHONHASHSEED": "0", "BENCH_SUFFIX": "cg0001"})
    per_call: dict[str, dict[str, Any]] = {"base": {}, "head": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for p in paths:
            for name, tree in (("base", "yokedcache_sa_base"), ("head", "yokedcache_sa")):
                out = Path(tmp) / f"cg.{name}.{p}"
                prefix = ["valgrind", "--tool=callgrind", "--collect-atstart=no"]
                if cold:  # a 1 MiB last level, as a core's own cache; the PG read evicts it
                    prefix += ["--cache-sim=yes", "--LL=1048576,16,64"]
                    prefix += ["--toggle-collect=_operator_call"]
                else:
                    prefix += ["--toggle-collect=functools_reduce"]
                prefix.append(f"--callgrind-out-file={out}")
                child_paths = [p, "plain_pg_pk"] if cold else [p]
                text = _child(env, [tree], child_paths, n, "cold" if cold else "count", prefix)
                found = re.search(r"Collected : ([\d ]+)", text)
                if found is None:
                    sys.exit(f"bench_regress: no instruction count from valgrind:\n{text}")
                counts = [int(c) // n for c in found.group(1).split()]
                if cold:
                    ev = dict(zip(_EVENTS, counts, strict=True))
                    ev["cycles"] = sum(ev[k] * w for k, w in _CYCLES.items())
                    per_call[name][p] = ev
                else:
                    per_call[name][p] = counts[0]
            b, h = per_call["base"][p], per_call["head"][p]
            if cold:
                print(
                    f"{p}: per call, head/base: Ir {h['Ir'] / b['Ir']:.3f}, "
                    f"last-level data misses {h['DLmr']} / {b['DLmr']}, "
                    f"estimated cycles {h['cycles'] / b['cycles']:.3f}"
                )
            else:
                print(f"{p}: base {b} Ir/call, head {h} Ir/call")
    if cold:
        return {
            "ratio": {
                p: round(per_call["head"][p]["cycles"] / per_call["base"][p]["cycles"], 3)
                for p in paths
            },
            "events_per_call": per_call,
        }
    return {
        "ratio": {p: round(per_call["head"][p] / per_call["base"][p], 3) for p in paths},
        "ir_per_call": per_call,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="94c00e3", help="git revision to compare against")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=None)
    ap.add_argument("--callgrind", action="store_true", help="count instructions (valgrind)")
    ap.add_argument(
        "--cold",
        action="store_true",
        help="with --callgrind: simulate caches, a PostgreSQL read before each call",
    )
    ap.add_argument(
        "--paths",
        default=",".join(PATHS),
        help=f"comma-separated paths, or 'all' (default: the hit paths); of {', '.join(ALL_PATHS)}",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    paths = list(ALL_PATHS) if args.paths == "all" else [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(ALL_PATHS))
    if unknown:
        ap.error(f"unknown paths {unknown}; choose from {', '.join(ALL_PATHS)}")
    if args.cold and not args.callgrind:
        ap.error("--cold is a mode of --callgrind")
    if args.callgrind and set(paths) & set(WRITE_PATHS):
        ap.error("--callgrind holds off the version record's recheck, which writes wait out")
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
        renamed = tmp / "renamed"
        _rename(base, renamed)
        if args.callgrind:
            result = _counted(renamed, args.iterations or 100, paths, args.cold)
        else:
            result = _timed(renamed, args.rounds, args.iterations or 2000, paths)
    finally:
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)
    result.update(
        base=args.base,
        head=head_rev,
        mode=("callgrind, cold caches" if args.cold else "callgrind")
        if args.callgrind
        else "wall, both trees in one process",
        load_average=round(os.getloadavg()[0], 2),
    )
    print(f"{'path':16} {'head/base':>10} {'target':>8}  ok")
    for p in paths:
        v = result["ratio"][p]
        target = "" if p not in TARGETED else f"<= {TARGET}"
        ok = "" if p not in TARGETED else ("yes" if v <= TARGET else "NO")
        print(f"{p:16} {v:10.3f} {target:>8}  {ok}")
    print("(plain_pg_pk: a plain Session on each tree's engine; none of the read path runs)")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
