"""Races between a reader that fills the cache and a writer that commits, made deterministic.

The interleavings are forced at exact points — right after the reader's cache lookup, right
before its SELECT (in a thread, held by an Event), right before its store — so a store of data
older than a commit can be observed being refused. No sleeps, no timing assumptions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import event, select, update
from sqlalchemy.orm import Session, sessionmaker

from tests.orm.ormkit import HERE, Env, P, Tag, User
from yokedcache_sa.orm import CachingSession, NoCache

ALL = ["alice", "bob", "carol", "dave"]
NEW = ["B-was-here", "bob", "carol", "dave"]
WAIT = 30.0  # an upper bound for Event waits (a hang fails instead of blocking the suite)


def user_names(s: Session) -> Any:
    return s.scalars(select(User.name).order_by(User.id)).all()


def writer_commits(env: Env, name: str = "B-was-here") -> None:
    """Writer B: an UPDATE statement (no cached reads of its own) and a commit."""
    with env.Session() as b:
        b.execute(update(User).where(User.id == 1).values(name=name))
        b.commit()


class Recorder:
    """Wraps the cache's store to record outcomes, optionally running a hook first once."""

    def __init__(self, env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
        self.outcomes: list[bool] = []
        self.before_store: Callable[[], None] | None = None
        self.after_lookup: Callable[[], None] | None = None
        orig_store = env.cache.store_sync
        orig_lookup = env.cache.lookup_sync

        def store_sync(*args: Any, **kw: Any) -> bool:
            hook, self.before_store = self.before_store, None
            if hook is not None:
                hook()
            ok = orig_store(*args, **kw)
            self.outcomes.append(ok)
            return ok

        def lookup_sync(*args: Any, **kw: Any) -> Any:
            look = orig_lookup(*args, **kw)
            hook, self.after_lookup = self.after_lookup, None
            if hook is not None:
                hook()
            return look

        monkeypatch.setattr(env.cache, "store_sync", store_sync)
        monkeypatch.setattr(env.cache, "lookup_sync", lookup_sync)

    def hook_ran(self) -> bool:
        """The after-lookup hook was taken (it is cleared when it runs)."""
        return self.after_lookup is None


@pytest.fixture
def rec(env: Env, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    yield Recorder(env, monkeypatch)


def test_writer_commits_between_readers_lookup_and_select(env: Env, rec: Recorder) -> None:
    """A misses; B commits before A's SELECT; A's store (snapshot from before B) is refused."""
    rec.after_lookup = lambda: writer_commits(env)
    with env.Session() as a:
        got = user_names(a)
    assert rec.hook_ran(), "the hook did not run"
    assert got == NEW  # every database here shows A the committed row
    assert rec.outcomes == [False]
    assert env.fresh_read(user_names) == NEW
    assert env.hit(user_names) == NEW


def test_reader_stores_late_after_writer_commit(env: Env, rec: Recorder) -> None:
    """A reads the old row; B commits; A's late store of the old row is refused."""
    rec.before_store = lambda: writer_commits(env)
    with env.Session() as a:
        got = user_names(a)
    assert got == ALL  # read before B committed
    assert rec.outcomes == [False]
    assert env.fresh_read(user_names) == NEW
    assert env.hit(user_names) == NEW


def test_reader_stores_while_writer_is_open_then_writer_commits(env: Env, rec: Recorder) -> None:
    """B has flushed (uncommitted) when A reads and stores the committed row; B's commit then
    makes A's entry stale."""
    b = env.Session()
    try:
        b.execute(update(User).where(User.id == 1).values(name="B-was-here"))
        with env.Session() as a:
            assert user_names(a) == ALL
        b.commit()
    finally:
        b.close()
    assert env.fresh_read(user_names) == NEW
    assert env.hit(user_names) == NEW


def test_late_store_refused_for_a_cached_not_found(env: Env, rec: Recorder) -> None:
    def zed(s: Session) -> Any:
        return s.scalars(select(User.id).where(User.name == "zed")).first()

    def insert_zed() -> None:
        with env.Session() as b:
            b.add(User(id=30, name="zed"))
            b.commit()

    rec.before_store = insert_zed
    with env.Session() as a:
        assert zed(a) is None
    assert rec.outcomes == [False]
    assert env.fresh_read(zed) == 30


def test_reader_thread_paused_before_its_select(env: Env, rec: Recorder) -> None:
    """A real thread: A is held (Event) in before_cursor_execute of its own SELECT while B
    commits in the main thread; then A runs, tries to store, and is refused."""
    paused, resume = threading.Event(), threading.Event()
    reader: dict[str, Any] = {}

    def hold(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if (
            threading.get_ident() == reader.get("ident")
            and statement.lstrip().startswith("SELECT")
            and not paused.is_set()
        ):
            paused.set()
            assert resume.wait(WAIT), "writer never resumed the reader"

    def run_reader() -> None:
        reader["ident"] = threading.get_ident()
        try:
            with env.Session() as a:
                reader["got"] = user_names(a)
        except BaseException as exc:  # surfaced by the main thread
            reader["error"] = exc
        finally:
            paused.set()

    event.listen(env.engine, "before_cursor_execute", hold)
    try:
        t = threading.Thread(target=run_reader)
        t.start()
        assert paused.wait(WAIT), "reader never reached its SELECT"
        writer_commits(env)
        resume.set()
        t.join(WAIT)
        assert not t.is_alive()
    finally:
        resume.set()
        event.remove(env.engine, "before_cursor_execute", hold)
    assert "error" not in reader, reader.get("error")
    assert reader["got"] == NEW
    assert rec.outcomes == [False]
    assert env.fresh_read(user_names) == NEW
    assert env.hit(user_names) == NEW


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("warm", [True, False], ids=["entry-before", "no-entry"])
def test_snapshot_reader_never_stores_its_old_rows_for_others(
    env: Env, rec: Recorder, warm: bool
) -> None:
    """A REPEATABLE READ transaction whose snapshot predates B's commit reads the old row;
    it must not store it where fresh sessions would take it, nor take newer cached data."""
    if warm:
        env.warm(user_names)
    bind = env.engine.execution_options(isolation_level="REPEATABLE READ")
    Snap = sessionmaker(bind, class_=CachingSession, cache=env.cache)
    with Snap() as a:
        # A's snapshot starts with its first read of a table (uncached on purpose)
        assert a.scalars(select(Tag.name).options(NoCache())).all() == ["red", "blue"]
        writer_commits(env)
        # a fresh READ COMMITTED session caches the new row …
        assert env.fresh_read(user_names) == NEW
        assert env.hit(user_names) == NEW
        rec.outcomes.clear()
        # … which A must not be served: it sees its snapshot, from the database
        assert env.queried(lambda: user_names(a)) == ALL
        assert env.queried(lambda: user_names(a)) == ALL
        assert True not in rec.outcomes
    # A's old rows were not stored for anyone
    assert env.hit(user_names) == NEW
    env.cache.invalidate_tags_sync(["unrelated"])
    assert env.hit(user_names) == NEW


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_snapshot_reader_alone_cannot_publish_old_rows(env: Env, rec: Recorder) -> None:
    """Same, but nobody reads between B's commit and A's store: A's store is refused."""
    bind = env.engine.execution_options(isolation_level="REPEATABLE READ")
    Snap = sessionmaker(bind, class_=CachingSession, cache=env.cache)
    with Snap() as a:
        assert a.scalars(select(Tag.name).options(NoCache())).all() == ["red", "blue"]
        writer_commits(env)
        assert env.queried(lambda: user_names(a)) == ALL
    assert True not in rec.outcomes
    assert env.fresh_read(user_names) == NEW
    assert env.hit(user_names) == NEW


# -- two processes sharing one Redis ---------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[4])
    from tests.orm.ormkit import SQLCounter, User
    from sqlalchemy import create_engine, select, update
    from sqlalchemy.orm import sessionmaker
    from yokedcache_sa import CacheConfig, YokedCache
    from yokedcache_sa.orm import CachingSession

    url, redis_url, prefix = sys.argv[1:4]
    # as in conftest.py: at MariaDB's REPEATABLE READ a transaction's first read queries
    engine = create_engine(url, isolation_level="READ COMMITTED" if "mysql" in url else None)
    counter = SQLCounter(engine)
    cache = YokedCache(CacheConfig(redis_url=redis_url, key_prefix=prefix))
    S = sessionmaker(engine, class_=CachingSession, cache=cache)

    def read(v):
        return lambda: s.scalars(select(User.name).where(User.id > v).order_by(User.id)).all()

    with S() as s:  # a process learns a statement's result shape by running it once
        _, learn = counter.run(read(1))
    with S() as s:  # then it is served the entry the other process stored
        names, n = counter.run(read(0))
    with S() as s:
        s.execute(update(User).where(User.id == 1).values(name="other-process"))
        s.commit()
    print(json.dumps({"names": names, "statements": n, "learn": learn}))
    cache.disconnect_sync()
    engine.dispose()
    """
)


def names_above(s: Session) -> Any:
    return s.scalars(select(User.name).where(User.id > 0).order_by(User.id)).all()


@pytest.mark.parametrize("cache", ["redis"], indirect=True)
def test_commit_in_another_process_invalidates_here(env: Env) -> None:
    """Process 1 (this one) caches a read; process 2 is served it, then commits an update;
    process 1's next read sees the new value."""
    env.warm(names_above)
    redis_url = env.cache.config.redis_url
    assert redis_url is not None
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            env.db.url,
            redis_url.get_secret_value(),
            env.cache.config.key_prefix,
            str(HERE.parent.parent),  # the repository: the models' module is tests.orm.ormkit
        ],
        env={**os.environ, "YC_TEST_TABLE_PREFIX": P},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    # the other process was served this process's entry: keys are process-independent
    assert child["learn"] >= 1
    assert child["names"] == ALL
    assert child["statements"] == 0
    # and its commit invalidated it here
    assert env.fresh_read(names_above) == ["other-process", *ALL[1:]]
    assert env.hit(names_above) == ["other-process", *ALL[1:]]
