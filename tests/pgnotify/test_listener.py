"""Outside writers (no caching session) on PostgreSQL: the listener invalidates what they
changed shortly after their COMMIT, on the memory and the Redis backend."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import create_engine

from tests.conftest import PG_URL
from tests.pgnotify.conftest import Item, Other, Qualified, Sentinel, World
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.pgnotify import NotifyListener
from yokedcache_sa.pgnotify.conninfo import connect, target_of

BOUND = 10.0  # seconds: a generous bound for a loaded 2-core machine (no timing asserts)


def wait_until(pred: Callable[[], bool], timeout: float = BOUND) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.005)
    return pred()


def sync(world: World, listener: NotifyListener) -> int:
    """Commit a sentinel write and wait until its notification was handled; return how many
    notifications arrived meanwhile (1 = only the sentinel's)."""
    before = listener.stats().notifications
    world.outside(f"DELETE FROM {Sentinel.__tablename__}")  # fires with no rows too
    assert wait_until(lambda: listener.stats().notifications > before), "no notification"
    return listener.stats().notifications - before


def test_outside_write_refuses_the_cached_read(world: World, listener: NotifyListener) -> None:
    assert world.warm() == ("a", 0)
    world.outside(f"UPDATE {Item.__tablename__} SET name = 'fresh' WHERE id = 1")
    # the read right after COMMIT may still be a hit (the window); within the bound it is a
    # miss that returns the new row
    seen: list[tuple[object, int]] = []

    def fresh() -> bool:
        value, n = world.read()
        seen.append((value, n))
        return n >= 1 and value == ("fresh", 0)

    assert wait_until(fresh), f"still stale: {seen[-3:]}"
    assert world.read() == (("fresh", 0), 0)  # stored again and served
    assert listener.stats().batches >= 1


def test_qualified_table_in_another_schema(world: World, listener: NotifyListener) -> None:
    assert world.warm(Qualified) == "q"
    world.outside(f"UPDATE \"{Qualified.__table__.schema}\".qualified SET name = 'q2'")
    assert wait_until(lambda: world.read(Qualified) == ("q2", 1))


def test_truncate_counts(world: World, listener: NotifyListener) -> None:
    assert world.warm(Other) == "o"
    world.outside(f"TRUNCATE {Other.__tablename__}")
    world.outside(f"INSERT INTO {Other.__tablename__} (id, name) VALUES (1, 'after')")
    assert wait_until(lambda: world.read(Other)[0] == "after")


def test_truncate_alone_invalidates(world: World, listener: NotifyListener) -> None:
    world.outside(f"DELETE FROM {Item.__tablename__} WHERE id = 2")
    sync(world, listener)  # else its notification may bump what is warmed next
    assert world.warm(Item, 1) == ("a", 0)
    before = listener.stats().notifications
    world.outside(f"TRUNCATE {Item.__tablename__}")
    assert wait_until(lambda: listener.stats().notifications > before)
    from sqlalchemy import select

    with world.Session() as s:
        assert wait_until(lambda: s.execute(select(Item)).scalars().all() == [])


def test_rolled_back_outside_write_invalidates_nothing(
    world: World, listener: NotifyListener
) -> None:
    assert world.warm() == ("a", 0)
    batches = listener.stats().batches
    with world.engine.connect() as c:
        c.exec_driver_sql(f"UPDATE {Item.__tablename__} SET name = 'never' WHERE id = 1")
        c.rollback()
    assert sync(world, listener) == 1  # only the sentinel's notification arrived
    assert listener.stats().batches == batches + 1
    assert world.read() == (("a", 0), 0)  # still a hit


def test_burst_is_coalesced(world: World, listener: NotifyListener) -> None:
    world.warm()
    batches, notes = listener.stats().batches, listener.stats().notifications
    with world.engine.begin() as c:  # one transaction: identical notifications fold into one
        for i in range(50):
            c.exec_driver_sql(f"UPDATE {Item.__tablename__} SET v = {i} WHERE id = 1")
    assert wait_until(lambda: listener.stats().notifications > notes)
    assert listener.stats().notifications == notes + 1
    assert listener.stats().batches == batches + 1
    # many transactions while the listener is busy: fewer batches than notifications
    gate, entered = threading.Event(), threading.Event()
    real = listener.cache.invalidate_tags_sync

    def slow(tags: object) -> None:
        entered.set()
        gate.wait(5)
        real(tags)  # type: ignore[arg-type]

    listener.cache.invalidate_tags_sync = slow  # type: ignore[method-assign]
    try:
        notes, batches = listener.stats().notifications, listener.stats().batches
        world.outside(f"UPDATE {Item.__tablename__} SET v = 100 WHERE id = 1")
        assert entered.wait(BOUND)  # the listener is now busy with that one
        for i in range(20):
            world.outside(f"UPDATE {Item.__tablename__} SET v = {101 + i} WHERE id = 1")
        gate.set()
        assert wait_until(lambda: listener.stats().notifications == notes + 21)
        # the 20 that queued up meanwhile were drained together
        assert listener.stats().batches - batches < 21, listener.stats().batches - batches
    finally:
        del listener.cache.invalidate_tags_sync
    assert wait_until(lambda: world.read() == (("a", 120), 1))


def test_terminated_listener_reconnects_and_invalidates_watched_tables(
    world: World, listener: NotifyListener, caplog: pytest.LogCaptureFixture
) -> None:
    assert world.warm(Other) == "o"  # never written below: only the gap cover refuses it
    assert world.warm() == ("a", 0)
    pid = listener.backend_pid
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        with world.engine.begin() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        # written while the listener is (most likely) down: its notification is lost
        world.outside(f"UPDATE {Item.__tablename__} SET name = 'gap' WHERE id = 1")
        assert wait_until(lambda: listener.stats().reconnects >= 1 and listener.connected)
    assert listener.backend_pid != pid
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("is disconnected" in m for m in warnings) == 1, warnings
    assert sum("reconnected; invalidated" in m for m in warnings) == 1, warnings
    assert world.read(Other) == ("o", 1)  # refused: the reconnect invalidated it
    assert world.read() == (("gap", 0), 1)
    # and it still listens
    world.warm()
    world.outside(f"UPDATE {Item.__tablename__} SET name = 'later' WHERE id = 1")
    assert wait_until(lambda: world.read() == (("later", 0), 1))


def test_watching_all_tables_invalidates_everything_on_reconnect(world: World) -> None:
    world.cache.set_sync("unrelated", 1, tags=["not-a-table"])
    with NotifyListener(world.cache, world.engine) as lst:
        assert lst.wait_ready(10)
        with world.engine.begin() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend({lst.backend_pid})")
        assert wait_until(lambda: lst.stats().reconnects >= 1 and lst.connected)
    assert world.cache.get_sync("unrelated") is None


def test_unreachable_database_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    from tests.redis_process import free_port

    cache = YokedCache(CacheConfig(key_prefix="ycpnlog"))
    url = f"postgresql+psycopg://postgres:s3cretpw@127.0.0.1:{free_port()}/test"
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        lst = NotifyListener(cache, url, max_backoff=0.2).start()
        try:
            assert wait_until(lambda: lst._attempts >= 4)
        finally:
            lst.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("is disconnected" in m for m in msgs) == 1, msgs
    assert "s3cretpw" not in caplog.text
    assert not lst.connected


def test_cache_down_when_the_notification_arrives(world: World, redis_server: object) -> None:
    """The invalidation is kept pending in the cache (bypassed, retried), never dropped."""
    from tests.redis_process import RedisProcess

    server = redis_server
    assert isinstance(server, RedisProcess)
    cache = YokedCache(
        CacheConfig(
            redis_url=server.url,
            key_prefix="ycpndown",
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
        )
    )
    from sqlalchemy.orm import sessionmaker

    from yokedcache_sa.orm import CachingSession

    w = World(
        world.engine,
        cache,
        world.sql,
        sessionmaker(world.engine, class_=CachingSession, cache=cache),
    )
    with NotifyListener(cache, world.engine) as lst:
        assert lst.wait_ready(10)
        assert w.warm() == ("a", 0)
        server.pause()  # answers nothing: the invalidation times out
        try:
            w.outside(f"UPDATE {Item.__tablename__} SET name = 'down' WHERE id = 1")
            assert wait_until(lambda: lst.stats().undelivered >= 1)
            assert cache.get_stats_sync().pending_invalidations >= 1
        finally:
            server.resume()
        # while pending, this process bypasses the tags; once delivered, everyone sees it
        assert wait_until(lambda: cache.flush_pending_sync() == 0)
        assert w.read() == (("down", 0), 1)
    cache.disconnect_sync()


def _reads(world: World, want: tuple[str, int]) -> bool:
    return bool(world.read()[0] == want)


class _Writer:
    """Another process that commits ``UPDATE … SET v = i`` when told, and says when done."""

    def __init__(self, kind: str) -> None:
        from urllib.parse import urlsplit

        conn = target_of(PG_URL)
        table = Item.__tablename__
        if kind == "psql":
            if shutil.which("psql") is None:
                pytest.skip("psql is not on PATH")
            kw = conn.kwargs
            cmd = [
                "psql",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(kw.get("host", "")),
                "-p",
                str(kw.get("port", 5432)),
                "-U",
                str(kw.get("user", "")),
                str(kw.get("dbname", "")),
            ]
            env = {**os.environ, "PGPASSWORD": str(kw.get("password", ""))}
            self.template = f"UPDATE {table} SET v = {{i}} WHERE id = 1;\n\\echo committed {{i}}\n"
        else:
            assert urlsplit(conn.url).scheme == "postgresql"
            script = (
                "import sys, psycopg\n"
                f"c = psycopg.connect({conn.url!r}, autocommit=True)\n"
                "for line in sys.stdin:\n"
                "    i = int(line)\n"
                f"    c.execute('UPDATE {table} SET v = %s WHERE id = 1', (i,))\n"
                "    print('committed', i, flush=True)\n"
            )
            cmd = [sys.executable, "-c", script]
            env = dict(os.environ)
            self.template = "{i}\n"
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def commit(self, i: int) -> None:
        """Return once the other process's COMMIT of ``v = i`` returned."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(self.template.format(i=i))
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            assert line, "the writer process ended"
            if line.strip() == f"committed {i}":
                return

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            assert self.proc.wait(10) == 0
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self.proc.stdout.close()


@pytest.mark.parametrize("kind", ["python", "psql"])
def test_outside_writer_process_while_readers_run(
    world: World, listener: NotifyListener, kind: str
) -> None:
    """Another process commits 30 increments; readers run all along. Each commit is seen
    within the bound, and no read after that returns an older value."""
    world.warm()
    writer = _Writer(kind)
    stop = threading.Event()
    confirmed = [0]  # highest value whose window has closed
    stale: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                floor = confirmed[0]
                (_name, v), _n = world.read()
                if v < floor:
                    stale.append((v, floor))
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 31):
            writer.commit(i)
            assert wait_until(functools.partial(_reads, world, ("a", i))), f"write {i} unseen"
            confirmed[0] = i
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        writer.close()
    assert not errors, errors
    assert stale == []


def test_own_session_commit_is_synchronous_and_listener_bumps_again(
    world: World, listener: NotifyListener
) -> None:
    world.warm()
    batches = listener.stats().batches
    with world.Session() as s:
        s.get(Item, 1).name = "own"
        s.commit()
    assert world.read() == (("own", 0), 1)  # commit() invalidated before returning
    assert wait_until(lambda: listener.stats().batches > batches)  # and the trigger told us


def test_async_driver_url_is_accepted(world: World) -> None:
    url = PG_URL.replace("+psycopg", "+asyncpg")
    with NotifyListener(
        world.cache, create_engine(PG_URL).url.set(drivername="postgresql+asyncpg")
    ) as lst:
        assert lst.wait_ready(10)
    conn = connect(target_of(url))
    assert conn.execute("SELECT 1").fetchone() == (1,)
    conn.close()


def test_write_to_a_partition_invalidates_reads_of_the_parent(world: World) -> None:
    """A statement on a partition notifies the partition and its ancestors."""
    from sqlalchemy import Column, MetaData, Table, select

    from tests.pgnotify.conftest import SCHEMA
    from yokedcache_sa.pgnotify import install, uninstall

    with world.engine.begin() as c:
        c.exec_driver_sql(
            f'CREATE TABLE "{SCHEMA}".parted (id int, name text) PARTITION BY RANGE (id)'
        )
        c.exec_driver_sql(
            f'CREATE TABLE "{SCHEMA}".parted_1 PARTITION OF "{SCHEMA}".parted '
            "FOR VALUES FROM (0) TO (100)"
        )
        c.exec_driver_sql(f"INSERT INTO \"{SCHEMA}\".parted VALUES (1, 'p')")
    parted = Table("parted", MetaData(), Column("id"), Column("name"), schema=SCHEMA)
    try:
        st = install(world.engine, schema=SCHEMA, tables=["parted", "parted_1"])
        assert {f"{SCHEMA}.parted", f"{SCHEMA}.parted_1"} <= set(st.tables)

        def names() -> tuple[list[str], int]:
            before = world.sql.n
            with world.Session() as s:
                got = list(s.execute(select(parted.c.name)).scalars())
            return got, world.sql.n - before

        with NotifyListener(world.cache, world.engine) as lst:
            assert lst.wait_ready(10)
            names()
            assert names() == (["p"], 0)
            world.outside(f"UPDATE \"{SCHEMA}\".parted_1 SET name = 'p2'")
            assert wait_until(lambda: names() == (["p2"], 1))
    finally:
        uninstall(world.engine, schema=SCHEMA, tables=["parted", "parted_1"])
        with world.engine.begin() as c:
            c.exec_driver_sql(f'DROP TABLE "{SCHEMA}".parted')


def test_a_payload_that_is_not_a_table_list_invalidates_everything(world: World) -> None:
    from yokedcache_sa.pgnotify import start_listener

    world.cache.set_sync("unrelated", 1, tags=["not-a-table"])
    with start_listener(world.cache, world.engine, tables=["nothing"]) as lst:
        assert lst.wait_ready(10)
        with world.engine.connect() as c:
            c.exec_driver_sql("SELECT pg_notify('yokedcache', 'a.b.c')")
            c.commit()
        assert wait_until(lambda: lst.stats().notifications == 1)
    assert world.cache.get_sync("unrelated") is None


def test_own_commit_on_a_notifying_table_counts_nothing(
    world: World, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our trigger changes no rows: a caching session's write to its table does not ask
    pg_stat_xact_* what the transaction changed (that is for tables with user triggers)."""
    from yokedcache_sa.orm import pgwrites, routines

    routines.forget_catalog(world.engine)
    calls: list[object] = []
    real = pgwrites._pg_counts

    def spy(*args: object, **kw: object) -> object:
        calls.append(args)
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pgwrites, "_pg_counts", spy)
    with world.Session() as s:
        s.get(Item, 1).name = "x"
        s.commit()
    assert calls == []


async def test_async_app_with_an_asyncpg_engine(world: World) -> None:
    """The thread serves an asyncio app as well: AsyncEngine in, AsyncSession reads refreshed."""
    from sqlalchemy import select
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from tests.conftest import PG_ASYNC_URL
    from yokedcache_sa.orm import CachingSession

    engine = create_async_engine(PG_ASYNC_URL)
    factory = async_sessionmaker(engine, sync_session_class=CachingSession, cache=world.cache)
    sent = [0]

    def count(*_a: object) -> None:
        sent[0] += 1

    from sqlalchemy import event

    event.listen(engine.sync_engine, "before_cursor_execute", count)

    async def read() -> tuple[str, int]:
        before = sent[0]
        async with factory() as s:
            name = (await s.execute(select(Item.name).where(Item.id == 1))).scalar_one()
        return name, sent[0] - before

    try:
        with NotifyListener(world.cache, engine, tables=[Item.__tablename__]) as lst:
            assert lst.wait_ready(10)
            await read()
            assert await read() == ("a", 0)
            world.outside(f"UPDATE {Item.__tablename__} SET name = 'async' WHERE id = 1")
            deadline = time.monotonic() + BOUND
            while await read() != ("async", 1):
                assert time.monotonic() < deadline, "still stale"
                await asyncio.sleep(0.005)
    finally:
        await engine.dispose()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_starts_its_own_listener(world: World, listener: NotifyListener) -> None:
    """The thread does not survive fork: the child restarts it on a connection of its own
    (covering the gap), and the parent's connection is left alone."""
    import warnings

    parent_pid = listener.backend_pid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads running
        pid = os.fork()
    if pid == 0:  # child: report through the exit code only
        code = 1
        try:
            if listener.connected:
                code = 2
            elif not listener.start().wait_ready(10):
                code = 3
            elif listener.backend_pid == parent_pid or listener.stats().reconnects != 1:
                code = 4
            else:
                code = 0
            listener.stop()
            # closing what the child inherited must not end the parent's session
            from yokedcache_sa.pgnotify import listener as listener_mod

            for inherited in listener_mod._inherited:
                inherited.close()
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert listener.connected and listener.backend_pid == parent_pid
    assert listener.stats().reconnects == 0
    world.warm()
    world.outside(f"UPDATE {Item.__tablename__} SET name = 'after-fork' WHERE id = 1")
    assert wait_until(lambda: world.read() == (("after-fork", 0), 1))


def test_reconnect_also_covers_tables_found_in_the_catalog(world: World) -> None:
    """``tables=`` with a bare name: after a reconnect the listener also invalidates its
    schema-qualified tag and every other table whose trigger notifies the channel."""
    from sqlalchemy import Column, MetaData, Table, select

    qualified = Table(Item.__tablename__, MetaData(), Column("id"), Column("name"), schema="public")

    def read_qualified() -> tuple[str, int]:
        before = world.sql.n
        with world.Session() as s:
            name = s.execute(select(qualified.c.name).where(qualified.c.id == 1)).scalar_one()
        return name, world.sql.n - before

    with NotifyListener(world.cache, world.engine, tables=[Item.__tablename__]) as lst:
        assert lst.wait_ready(10)
        read_qualified()
        assert read_qualified() == ("a", 0)
        assert world.warm(Other) == "o"
        with world.engine.begin() as c:
            c.exec_driver_sql(f"SELECT pg_terminate_backend({lst.backend_pid})")
        assert wait_until(lambda: lst.stats().reconnects >= 1 and lst.connected)
        assert read_qualified() == ("a", 1)
        assert world.read(Other) == ("o", 1)
