"""Multi-process stress run of CachingSession over one PostgreSQL and one Redis.

N worker processes share private tables (random prefix) and a private redis-server (random
port, no persistence). Each runs random ORM reads (by id, lists, a join/count over three
tables, an eager load) and committed writes (``version = version + 1`` on a random row)
through a CachingSession. Every row's ``version`` is raised by each write, so versions order
writes; a read is *stale* when it started (``time.monotonic()``, one clock for all processes
on this host) after some write's ``commit()`` had returned, yet saw a lower version of that
row. The checker merges every worker's log and counts stale reads.

Variants: ``plain``; ``restart`` (Redis SIGKILLed mid-run and restarted empty on the same
port); ``pause`` (Redis SIGSTOPped for ~2 s mid-run, then SIGCONT). ``--backend memory``
runs the workers on the memory backend instead (no Redis; entries per process, the version
record shared by the host's processes).

    python tests/stress/run.py --processes 4 --seconds 20 --variant pause --json
    python tests/stress/run.py --backend memory --processes 4 --json

With ``--json`` the last line is one JSON object with ``ops_per_s``, ``hit_rate``,
``stale_reads`` and ``errors_seen_by_callers`` (plus details). Exit status 1 when a read was
stale or a caller saw an error.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script

from sqlalchemy import ForeignKey, Integer, String, create_engine, func, insert, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload

from tests.redis_process import RedisProcess, free_port

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
OWNERS = 20
ACCOUNTS_PER_OWNER = 5
LABELS_PER_ACCOUNT = 2


# -- models (tables named with the run's prefix) ---------------------------------------------


def models(prefix: str) -> Any:
    class Base(DeclarativeBase):
        pass

    class Owner(Base):
        __tablename__ = prefix + "owners"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        version: Mapped[int] = mapped_column(Integer)
        accounts: Mapped[list[Account]] = relationship(order_by="Account.id")

    class Account(Base):
        __tablename__ = prefix + "accounts"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        owner_id: Mapped[int] = mapped_column(ForeignKey(Owner.id), index=True)
        version: Mapped[int] = mapped_column(Integer)

    class Label(Base):
        __tablename__ = prefix + "labels"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        account_id: Mapped[int] = mapped_column(ForeignKey(Account.id), index=True)
        text: Mapped[str] = mapped_column(String(50))

    class M:
        pass

    m = M()
    m.Base, m.Owner, m.Account, m.Label = Base, Owner, Account, Label  # type: ignore[attr-defined]
    return m


def owner_of(account_id: int) -> int:
    return (account_id - 1) // ACCOUNTS_PER_OWNER + 1


def create_tables(engine: Any, m: Any) -> None:
    m.Base.metadata.drop_all(engine)
    m.Base.metadata.create_all(engine)
    n_acc = OWNERS * ACCOUNTS_PER_OWNER
    with engine.begin() as conn:
        conn.execute(
            insert(m.Owner),
            [{"id": o, "name": f"o{o}", "version": 1} for o in range(1, OWNERS + 1)],
        )
        conn.execute(
            insert(m.Account),
            [{"id": a, "owner_id": owner_of(a), "version": 1} for a in range(1, n_acc + 1)],
        )
        conn.execute(
            insert(m.Label),
            [
                {"id": a * 10 + k, "account_id": a, "text": f"l{k}"}
                for a in range(1, n_acc + 1)
                for k in range(LABELS_PER_ACCOUNT)
            ],
        )


# -- a worker process --------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    from yokedcache_sa import CacheConfig, YokedCache
    from yokedcache_sa.orm import CachingSession

    m = models(args.table_prefix)
    Owner, Account, Label = m.Owner, m.Account, m.Label
    engine = create_engine(args.pg_url, pool_size=2, max_overflow=2)
    cache = YokedCache(
        CacheConfig(
            # no Redis URL: the memory backend, whose version record the workers of this host
            # share (memory_shared, the default)
            redis_url=args.redis_url or None,
            key_prefix=args.key_prefix,
            socket_timeout=0.1,
            socket_connect_timeout=0.1,
            circuit_breaker_threshold=3,
            circuit_breaker_timeout=0.5,
            default_ttl=120,
        )
    )
    if args.no_invalidation:  # checker self-test: commits no longer tell the cache
        cache.begin_write_sync = cache.end_write_sync = lambda *a, **k: None  # type: ignore[method-assign]
    rng = random.Random(args.seed)
    n_acc = OWNERS * ACCOUNTS_PER_OWNER

    def account_id() -> int:
        return rng.randint(1, 10) if rng.random() < 0.7 else rng.randint(1, n_acc)

    def owner_id() -> int:
        return rng.randint(1, 3) if rng.random() < 0.7 else rng.randint(1, OWNERS)

    writes: list[tuple[str, int, int, float, bool]] = []
    reads: list[tuple[str, int, int, float]] = []
    sums: list[tuple[int, int, float]] = []  # owner, sum of its accounts' versions seen, start
    wrong: list[str] = []
    errors: list[str] = []
    ops = 0

    def write(s: Any, started: float) -> None:
        model, name = (Owner, "owners") if rng.random() < 0.3 else (Account, "accounts")
        rid = owner_id() if model is Owner else account_id()
        new = s.execute(
            update(model)
            .where(model.id == rid)
            .values(version=model.version + 1)
            .returning(model.version)
        ).scalar_one()
        s.commit()
        # pending: this process could not deliver an invalidation (the store was down); other
        # processes may serve older entries until it is delivered (docs/consistency.md, "The
        # window that remains"), so reads of this write are checked as window reads
        writes.append((name, rid, int(new), time.monotonic(), cache.pending_count > 0))

    def by_id(s: Any, started: float) -> None:
        if rng.random() < 0.5:
            a = s.execute(select(Account).where(Account.id == account_id())).scalar_one()
            reads.append(("accounts", a.id, a.version, started))
        else:
            o = s.execute(select(Owner).where(Owner.id == owner_id())).scalar_one()
            reads.append(("owners", o.id, o.version, started))

    def listing(s: Any, started: float) -> None:
        o = owner_id()
        rows = s.execute(
            select(Account).where(Account.owner_id == o).order_by(Account.id)
        ).scalars()
        got = [(a.id, a.version) for a in rows]
        if [i for i, _v in got] != [x for x in range(1, n_acc + 1) if owner_of(x) == o]:
            wrong.append(f"list of owner {o}: {got}")
        reads.extend(("accounts", i, v, started) for i, v in got)

    def join_count(s: Any, started: float) -> None:
        o = owner_id()
        ver, n, total = s.execute(
            select(Owner.version, func.count(Account.id), func.sum(Account.version))
            .join(Account, Account.owner_id == Owner.id)
            .where(Owner.id == o)
            .group_by(Owner.id, Owner.version)
        ).one()
        labels = s.execute(
            select(func.count(Label.id))
            .join(Account, Label.account_id == Account.id)
            .join(Owner, Account.owner_id == Owner.id)
            .where(Owner.id == o)
        ).scalar_one()
        if n != ACCOUNTS_PER_OWNER or labels != ACCOUNTS_PER_OWNER * LABELS_PER_ACCOUNT:
            wrong.append(f"counts of owner {o}: {n} accounts, {labels} labels")
        reads.append(("owners", o, ver, started))
        sums.append((o, int(total), started))

    def eager(s: Any, started: float) -> None:
        o = s.execute(
            select(Owner).options(selectinload(Owner.accounts)).where(Owner.id == owner_id())
        ).scalar_one()
        reads.append(("owners", o.id, o.version, started))
        reads.extend(("accounts", a.id, a.version, started) for a in o.accounts)

    ops_table = [(0.12, write), (0.38, by_id), (0.2, listing), (0.2, join_count), (0.1, eager)]
    weights = [w for w, _f in ops_table]
    fns = [f for _w, f in ops_table]

    delay = args.start_at - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    end = args.start_at + args.seconds
    while time.monotonic() < end:
        fn = rng.choices(fns, weights)[0]
        started = time.monotonic()
        try:
            with CachingSession(engine, cache=cache) as s:
                fn(s, started)
        except Exception as exc:  # a request that failed: what the stress run must never see
            errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}"[:500])
        ops += 1
    pending_before_flush = cache.get_stats_sync().pending_invalidations
    cache.flush_pending_sync()
    stats = cache.get_stats_sync()
    out = {
        "ops": ops,
        "writes": writes,
        "reads": reads,
        "sums": sums,
        "wrong": wrong[:20],
        "n_wrong": len(wrong),
        "errors": errors[:20],
        "n_errors": len(errors),
        "hits": stats.hits,
        "misses": stats.misses,
        "cache_errors": stats.errors,
        "pending_at_end": pending_before_flush,
    }
    Path(args.log).write_text(json.dumps(out))
    cache.disconnect_sync()
    engine.dispose()


# -- the checker -------------------------------------------------------------------------------


def check(logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Count reads that saw a version older than a write whose commit had returned.

    A write logged as *pending* (its process could not deliver the invalidation: the store
    was down) is not a stale-read requirement: until it is delivered, other processes may
    serve older entries — the documented window of non-strict invalidation. Reads that only
    such a write makes old are counted as ``window_reads``."""
    strict = _required_index(logs, with_pending=False)
    loose = _required_index(logs, with_pending=True)

    stale: list[str] = []
    window = 0
    n_obs = 0
    for log in logs:
        for table, rid, seen, started in log["reads"]:
            n_obs += 1
            need = strict(table, rid, started)
            if seen < need:
                stale.append(f"{table}#{rid}: saw v{seen}, v{need} committed before the read")
            elif seen < loose(table, rid, started):
                window += 1
        for owner, total, started in log["sums"]:
            n_obs += 1
            first = (owner - 1) * ACCOUNTS_PER_OWNER + 1
            accounts = range(first, first + ACCOUNTS_PER_OWNER)
            need = sum(strict("accounts", a, started) for a in accounts)
            if total < need:
                stale.append(f"sum of owner {owner}'s accounts: saw {total}, needed >= {need}")
            elif total < sum(loose("accounts", a, started) for a in accounts):
                window += 1
    return {
        "stale_reads": len(stale),
        "stale_samples": stale[:10],
        "window_reads": window,
        "observations": n_obs,
    }


def _required_index(logs: list[dict[str, Any]], with_pending: bool) -> Any:
    """``(table, id, started) -> the version a read started then must see`` from the writes
    (with *with_pending*, writes whose invalidation was not delivered count too)."""
    by_row: dict[tuple[str, int], list[tuple[float, int]]] = defaultdict(list)
    for log in logs:
        for table, rid, new, returned, *rest in log["writes"]:
            pending = bool(rest and rest[0])
            if with_pending or not pending:
                by_row[(table, rid)].append((returned, new))
    index: dict[tuple[str, int], tuple[list[float], list[int]]] = {}
    for row, items in by_row.items():
        items.sort()
        times, best, top = [], [], 1
        for t, v in items:
            top = max(top, v)
            times.append(t)
            best.append(top)
        index[row] = (times, best)

    def required(table: str, rid: int, started: float) -> int:
        entry = index.get((table, rid))
        if entry is None:
            return 1
        times, best = entry
        i = bisect.bisect_left(times, started)  # writes whose commit returned before the read
        return best[i - 1] if i else 1

    return required


# -- the driver --------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> dict[str, Any]:
    memory = args.backend == "memory"
    if memory and args.variant != "plain":
        raise SystemExit("--variant restart/pause stop the Redis server: use --backend redis")
    if not memory and shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not on PATH")
    run_id = uuid.uuid4().hex[:8]
    table_prefix = f"st{run_id}_"
    workdir = Path(tempfile.mkdtemp(prefix="yc-stress-"))
    redis = RedisProcess(free_port(), workdir)
    m = models(table_prefix)
    engine = create_engine(args.pg_url)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        if not memory:
            redis.start()
        create_tables(engine, m)
        start_at = time.monotonic() + 3.0  # workers import and connect meanwhile
        for i in range(args.processes):
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--pg-url",
                args.pg_url,
                "--redis-url",
                "" if memory else redis.url,
                "--key-prefix",
                f"st{run_id}",
                "--table-prefix",
                table_prefix,
                "--start-at",
                repr(start_at),
                "--seconds",
                repr(args.seconds),
                "--seed",
                str(args.seed * 1000 + i),
                "--log",
                str(workdir / f"worker{i}.json"),
                *(["--no-invalidation"] if args.no_invalidation else []),
            ]
            err = open(workdir / f"worker{i}.err", "wb")  # noqa: SIM115 - closed with the run
            procs.append(subprocess.Popen(cmd, stdout=err, stderr=err))
        fault_at = start_at + args.seconds * 0.4
        time.sleep(max(0.0, fault_at - time.monotonic()))
        if args.variant == "restart":
            redis.kill()
            time.sleep(1.0)
            redis.start()  # same port, no data
        elif args.variant == "pause":
            redis.signal(signal.SIGSTOP)
            time.sleep(2.0)
            redis.signal(signal.SIGCONT)
        failed = []
        for i, p in enumerate(procs):
            if p.wait(timeout=args.seconds + 120) != 0:
                failed.append(i)
        if failed:
            tails = {
                i: (workdir / f"worker{i}.err").read_text(errors="replace")[-2000:] for i in failed
            }
            raise SystemExit(f"workers {failed} failed: {tails}")
        logs = [json.loads((workdir / f"worker{i}.json").read_text()) for i in range(len(procs))]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not memory:
            redis.kill()
        try:
            m.Base.metadata.drop_all(engine)
        finally:
            engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)

    checked = check(logs)
    ops = sum(log["ops"] for log in logs)
    hits = sum(log["hits"] for log in logs)
    misses = sum(log["misses"] for log in logs)
    return {
        "backend": args.backend,
        "variant": args.variant,
        "processes": args.processes,
        "seconds": args.seconds,
        "ops": ops,
        "ops_per_s": round(ops / args.seconds, 1),
        "writes": sum(len(log["writes"]) for log in logs),
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
        "stale_reads": checked["stale_reads"],
        "window_reads": checked["window_reads"],
        "pending_writes": sum(1 for log in logs for w in log["writes"] if w[4:] and w[4]),
        "errors_seen_by_callers": sum(log["n_errors"] for log in logs),
        "wrong_results": sum(log["n_wrong"] for log in logs),
        "observations": checked["observations"],
        "cache_errors": sum(log["cache_errors"] for log in logs),
        "pending_at_end": sum(log["pending_at_end"] for log in logs),
        "stale_samples": checked["stale_samples"],
        "error_samples": [e for log in logs for e in log["errors"]][:10],
        "wrong_samples": [w for log in logs for w in log["wrong"]][:10],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--processes", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--variant", choices=["plain", "restart", "pause"], default="plain")
    ap.add_argument(
        "--backend",
        choices=["redis", "memory"],
        default="redis",
        help="memory: no Redis, the workers share the host's version record",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ap.add_argument("--pg-url", default=PG_URL)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    ap.add_argument(
        "--no-invalidation",
        action="store_true",
        help="self-test of the checker: commits skip the cache, so stale reads must be found",
    )
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--key-prefix", help=argparse.SUPPRESS)
    ap.add_argument("--table-prefix", help=argparse.SUPPRESS)
    ap.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--log", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    result = drive(args)
    print(
        f"{result['variant']}: {result['processes']} processes x {result['seconds']:g}s, "
        f"seed {args.seed}: {result['ops_per_s']} ops/s, hit rate {result['hit_rate']:.1%}, "
        f"stale reads {result['stale_reads']}/{result['observations']} "
        f"(window reads {result['window_reads']} of {result['pending_writes']} pending writes), "
        f"caller errors {result['errors_seen_by_callers']}, wrong {result['wrong_results']}",
        flush=True,
    )
    for line in result["stale_samples"] + result["error_samples"] + result["wrong_samples"]:
        print("  " + line, flush=True)
    if args.json:
        print(json.dumps({"seed": args.seed, **result}), flush=True)
    ok = not (result["stale_reads"] or result["errors_seen_by_callers"] or result["wrong_results"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
