"""Cost of asking PostgreSQL what a transaction modified (pg_stat_xact_user_tables).

Times a one-row UPDATE transaction through a CachingSession (memory cache, PostgreSQL on
loopback), round-robin between: the check on (as shipped), the check off (patched out),
and a table with a trigger (its counters are counted again before the transaction's writes
are next read; here the commit-time check does it), and the check without
forcing the statistics flush (so every transaction asks for a baseline). Also times the
commit-time check itself. Medians in microseconds.

    python benchmarks/bench_pg_write_check.py [--iterations 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import Integer, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from yokedcache_sa import CacheConfig, CachingSession, YokedCache
from yokedcache_sa.orm import engine_events, pgwrites, transactions

PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
SUFFIX = uuid.uuid4().hex[:6]


class Base(DeclarativeBase):
    pass


class Plain(Base):
    __tablename__ = f"bench_pgw_plain_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


class Trig(Base):
    __tablename__ = f"bench_pgw_trig_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    n: Mapped[int] = mapped_column(Integer)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=2000)
    args = ap.parse_args()
    engine = create_engine(PG_URL, pool_size=1, max_overflow=0)
    Base.metadata.create_all(engine)
    fn = f"bench_pgw_fn_{SUFFIX}"
    with engine.begin() as c:
        c.execute(Plain.__table__.insert(), [{"id": 1, "n": 0}])
        c.execute(Trig.__table__.insert(), [{"id": 1, "n": 0}])
        c.exec_driver_sql(
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RETURN NEW; END $$"
        )
        c.exec_driver_sql(
            f"CREATE TRIGGER {fn}_t BEFORE UPDATE ON {Trig.__tablename__} "
            f"FOR EACH ROW EXECUTE FUNCTION {fn}()"
        )
    cache = YokedCache(CacheConfig(key_prefix=f"bpw{SUFFIX}"))
    S = sessionmaker(engine, class_=CachingSession, cache=cache)
    real_note, real_add = engine_events._pg_note_write, transactions._add_pg_modified
    check_times: list[float] = []

    def timed_add(st: Any) -> None:
        t0 = time.perf_counter()
        real_add(st)
        check_times.append(time.perf_counter() - t0)

    flush_sql = pgwrites._PG_COUNTS_FLUSH

    def txn(model: Any, on: bool, flush: bool = True) -> Callable[[], None]:
        def run() -> None:
            engine_events._pg_note_write = real_note if on else (lambda *a: None)  # type: ignore[assignment]
            transactions._add_pg_modified = timed_add if on else (lambda st: None)  # type: ignore[assignment]
            pgwrites._PG_COUNTS_FLUSH = flush_sql if flush else pgwrites._PG_COUNTS
            if not flush:
                engine.pool._pool.queue[0].info.pop(pgwrites._PG_CLEAN, None)  # type: ignore[attr-defined]
            with S() as s:
                s.execute(update(model).where(model.id == 1).values(n=model.n + 1))
                s.commit()

        return run

    variants = {
        "check off": txn(Plain, False),
        "check on": txn(Plain, True),
        "check on, no flush": txn(Plain, True, flush=False),
        "check on, trigger": txn(Trig, True),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for i in range(args.iterations + 50):
            for name, fn_ in variants.items():
                t0 = time.perf_counter()
                fn_()
                if i >= 50:
                    times[name].append(time.perf_counter() - t0)
    finally:
        engine_events._pg_note_write, transactions._add_pg_modified = real_note, real_add
        pgwrites._PG_COUNTS_FLUSH = flush_sql
        with engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE {Trig.__tablename__}")
            c.exec_driver_sql(f"DROP FUNCTION {fn}()")
        Base.metadata.drop_all(engine)
        engine.dispose()
    for name, ts in times.items():
        print(f"{name:20} median {statistics.median(ts) * 1e6:8.1f} us per write transaction")
    print(f"{'commit-time check':20} median {statistics.median(check_times) * 1e6:8.1f} us")
    pgwrites._PG_COUNTS_FLUSH = flush_sql


if __name__ == "__main__":
    main()
