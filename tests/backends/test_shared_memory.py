"""The memory backend across processes of one host: the version record is shared.

Real processes (``fork`` and ``spawn``), no Redis. The "database" is a shared array of
counters; a writer follows the ORM's protocol (begin_write → COMMIT → end_write), then
publishes the value its ``commit()`` returned. A read is *stale* when it returns a value older
than what had been published before the read began.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import random
import signal
import time
import uuid
from typing import Any

import pytest

from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends import filewatch, memory
from yokedcache_sa.backends.memory import MemoryBackend
from yokedcache_sa.backends.shared import WINDOW, attach, shared_path
from yokedcache_sa.cache import MISSING

KEYS = 4
PROCS = 3
OPS = 600

pytestmark = pytest.mark.slow


def _cache(prefix: str, **kw: Any) -> YokedCache:
    return YokedCache(CacheConfig(key_prefix=prefix, default_ttl=None, **kw))


def _write(cache: YokedCache, k: int, writer: str, db: Any, published: Any, lock: Any) -> None:
    tag = f"row:{k}"
    cache.begin_write_sync([tag], writer)
    with lock:  # the database COMMIT
        db[k] += 1
        value = db[k]
    cache.end_write_sync([tag], writer)
    with lock:  # commit() has returned
        published[k] = max(published[k], value)


def _late_writer(prefix: str, db: Any, published: Any, lock: Any) -> None:
    """A process started after the file was deleted: it opens a new one and writes there."""
    cache = _cache(prefix)
    for k in range(KEYS):
        _write(cache, k, f"late{os.getpid()}-{k}", db, published, lock)
    cache.disconnect_sync()


def _worker(
    prefix: str,
    me: int,
    ops: int,
    db: Any,
    published: Any,
    lock: Any,
    start: Any,
    out: Any,
    enough: Any,
) -> None:
    """Write now and then, read the rest of the time; report (reads, stale, hits).

    Runs at least ``ops`` operations, and goes on until ``enough`` is set (the parent has
    done what it needed to do while the workers ran), at most twenty times as many.
    """
    cache = _cache(prefix)
    start.wait(60)  # spawned processes start slowly: make them overlap
    rng = random.Random(me)
    reads = stale = hits = 0
    n = 0
    while n < ops or (not enough.is_set() and n < 20 * ops):
        n += 1
        k = rng.randrange(KEYS)
        tag = f"row:{k}"
        if rng.random() < 0.15:
            _write(cache, k, f"w{me}-{n}", db, published, lock)
            continue
        floor = published[k]
        look = cache.lookup_sync(f"k{k}")
        reads += 1
        if look.value is MISSING:
            value = db[k]  # the query, after the lookup observed the snapshot
            if look.snapshot is not None:
                cache.store_sync(f"k{k}", value, tags=[tag], snapshot=look.snapshot)
        else:
            hits += 1
            value = look.value
        stale += value < floor
    cache.disconnect_sync()
    out.put((reads, stale, hits))


def _run(
    method: str, prefix: str, delete_file: bool = False, ops: int = OPS
) -> tuple[int, int, int]:
    ctx: Any = mp.get_context(method)
    db = ctx.Array("q", KEYS, lock=False)
    published = ctx.Array("q", KEYS, lock=False)
    lock = ctx.Lock()
    start = ctx.Barrier(PROCS)
    out = ctx.Queue()
    enough = ctx.Event()
    if not delete_file:
        enough.set()
    procs = [
        ctx.Process(target=_worker, args=(prefix, i, ops, db, published, lock, start, out, enough))
        for i in range(PROCS)
    ]
    for p in procs:
        p.start()
    deleted = 0
    path = shared_path(prefix)
    while delete_file and any(p.is_alive() for p in procs):
        time.sleep(0.02)
        try:
            os.unlink(path)
            deleted += 1
        except FileNotFoundError:
            pass
        late = ctx.Process(target=_late_writer, args=(prefix, db, published, lock))
        late.start()
        late.join(30)
        assert late.exitcode == 0
        if deleted >= 3:
            enough.set()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    if delete_file:
        assert deleted >= 2, "the workers ended before the file could be deleted twice"
    reads, stale, hits = (sum(r[i] for r in results) for i in range(3))
    print(f"{method}: {reads} reads, {stale} stale, hit rate {hits / reads:.1%}")
    return reads, stale, hits


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_commit_in_one_process_invalidates_every_other(method: str) -> None:
    prefix = "t" + uuid.uuid4().hex[:12]
    reads, stale, hits = _run(method, prefix)
    assert reads >= 1000
    assert stale == 0
    assert hits > 0


@pytest.mark.parametrize("watch", ["inotify", "stat"])
def test_file_deleted_mid_run_gives_a_new_epoch_not_stale_reads(watch: str) -> None:
    """With the inotify watch (Linux) and with the ``stat`` poll used elsewhere."""
    prefix = "t" + uuid.uuid4().hex[:12]
    filewatch.disable(watch == "stat")  # forked workers inherit the choice
    try:
        reads, stale, hits = _run("fork", prefix, delete_file=True, ops=3 * OPS)
    finally:
        filewatch.disable(False)
    assert reads >= 1000
    assert stale == 0
    assert hits > 0


def _hold_mark(prefix: str, ready: Any) -> None:
    cache = _cache(prefix, write_lease=1.0)
    cache.begin_write_sync(["row:0"], "doomed")
    ready.set()
    time.sleep(60)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_killed_writer_blocks_until_its_mark_expires(method: str) -> None:
    prefix = "t" + uuid.uuid4().hex[:12]
    cache = _cache(prefix)
    assert cache.set_sync("k0", "old", tags=["row:0"])
    ctx: Any = mp.get_context(method)
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_mark, args=(prefix, ready))
    proc.start()
    try:
        assert ready.wait(30)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(10)
        marked_at = time.monotonic()
        assert cache.get_sync("k0") is None, "served while another process writes the row"
        assert not cache.set_sync("k1", "x", tags=["row:0"]), "stored while being written"
        assert cache.set_sync("k2", "x", tags=["row:1"]), "an unrelated tag is not blocked"
        while time.monotonic() - marked_at < 5 and cache.get_sync("k0") is None:
            time.sleep(0.05)
        # nothing was committed: once the lease is over the entry is current again
        assert cache.get_sync("k0") == "old"
        assert cache.set_sync("k1", "x", tags=["row:0"])
        assert time.monotonic() - marked_at < 5
    finally:
        if proc.is_alive():
            proc.kill()
        cache.clear_sync()
        cache.disconnect_sync()


def test_clear_and_invalidation_reach_other_caches_of_the_prefix() -> None:
    prefix = "t" + uuid.uuid4().hex[:12]
    a, b = _cache(prefix), _cache(prefix)
    try:
        assert a.set_sync("k", 1, tags=["row:0"])
        assert a.get_sync("k") == 1
        b.invalidate_tags_sync(["row:0"])
        assert a.get_sync("k") is None
        assert a.set_sync("k", 2, tags=["row:0"])
        b.clear_sync()
        assert a.get_sync("k") is None
        assert a.set_sync("k", 3, tags=["row:0"])
        pid = os.fork()
        if pid == 0:  # a forked child (gunicorn --preload) writes through its inherited cache
            try:
                a.invalidate_all_sync()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        assert a.get_sync("k") is None
    finally:
        a.disconnect_sync()
        b.disconnect_sync()


def test_unusable_directory_warns_once_and_falls_back(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(memory, "_warned", False)
    missing = str(tmp_path / "no" / "such" / "dir")
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        first = MemoryBackend(shared_prefix="x", shared_dir=missing)
        second = MemoryBackend(shared_prefix="y", shared_dir=missing)
    assert not first.shared and not second.shared
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "stale across processes" in warnings[0].getMessage()
    c = YokedCache(CacheConfig(), backend=first)
    assert c.set_sync("k", 1) and c.get_sync("k") == 1


def test_sharing_is_the_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = "t" + uuid.uuid4().hex[:12]
    on = _cache(prefix)
    assert isinstance(on.backend, MemoryBackend) and on.backend.shared
    monkeypatch.setenv("YOKEDCACHE_MEMORY_SHARED", "false")
    off = _cache(prefix)
    assert isinstance(off.backend, MemoryBackend) and not off.backend.shared
    on.disconnect_sync()


MANY = tuple(range(300))  # a long read: a writer often lands in the middle of it


def _bump_forever(prefix: str, started: Any) -> None:
    record = attach(prefix)
    started.set()
    n = 0
    while True:
        record.end_write(MANY, f"w{n}")
        n += 1


def test_lock_free_reads_never_see_a_half_written_update() -> None:
    # end_write moves seq and then the versions: a read that mixed two updates would report a
    # version above the sequence it read.
    prefix = "t" + uuid.uuid4().hex[:12]
    record = attach(prefix)
    ctx: Any = mp.get_context("fork")
    started = ctx.Event()
    proc = ctx.Process(target=_bump_forever, args=(prefix, started))
    proc.start()
    try:
        assert started.wait(30)
        torn = 0
        first = record.read(())[1]
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            _epoch, seq, top, _mark = record.read(MANY)
            torn += top > seq
        assert seq - first > 100, "the writer did not run alongside the reads"
        assert torn == 0
    finally:
        proc.kill()
        proc.join(10)
        record.close()


def test_a_repeated_read_sees_every_kind_of_change_made_through_another_mapping() -> None:
    # A read of the same slots at the same generation is answered from memory: every change
    # (marks, bumps, releases, a new epoch) must move the generation, or readers of another
    # mapping would keep serving what the change made stale.
    from yokedcache_sa.backends.shared import SharedVersions

    prefix = "t" + uuid.uuid4().hex[:12]
    reader = attach(prefix)
    other = SharedVersions(prefix)  # a second mapping of the file, as another process has
    slots = (3, 17)
    try:
        time.sleep(0.02)  # the file's first write waits until it is 2 * RECHECK old
        epoch, seq, top, mark = reader.read(slots)
        assert reader.read(slots) == (epoch, seq, top, mark)
        other.begin_write(slots, "w1", 30.0, bump=False)
        marked = reader.read(slots)
        assert marked[3] > time.time() + 20 and marked[:3] == (epoch, seq, top)
        other.release(slots, "w1")
        assert reader.read(slots)[3] < time.time()
        other.begin_write(slots, "w2", 30.0, bump=False)
        assert reader.read(slots)[3] > time.time()
        new_seq = other.end_write(slots, "w2")
        after = reader.read(slots)
        assert after[1] == new_seq and after[2] == new_seq and after[3] < time.time()
        assert reader.read((5,))[2] == 0  # another slot set: the version it has
        other.new_epoch()
        assert reader.read(slots)[0] != epoch
        assert reader.read(()) == reader.read(())  # and repeated reads agree again
    finally:
        other._detach()
        reader.close()


def _die_inside_update(prefix: str) -> None:
    record = attach(prefix)
    with record._writing():
        os.kill(os.getpid(), signal.SIGKILL)


def test_writer_killed_inside_an_update_moves_to_a_new_epoch() -> None:
    prefix = "t" + uuid.uuid4().hex[:12]
    cache = _cache(prefix)
    assert cache.set_sync("k", 1, tags=["row:0"])
    ctx: Any = mp.get_context("spawn")
    proc = ctx.Process(target=_die_inside_update, args=(prefix,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    # the record may be half written: nothing recorded under it is served, nothing hangs
    assert cache.get_sync("k") is None
    assert cache.set_sync("k", 2, tags=["row:0"])
    assert cache.get_sync("k") == 2
    cache.invalidate_tags_sync(["row:0"])
    assert cache.get_sync("k") is None
    cache.disconnect_sync()


def test_many_writers_on_one_tag_each_keep_it_marked_until_the_last_ends() -> None:
    # more writers than a slot's window of mark records: the rest go elsewhere in the table
    record = attach("t" + uuid.uuid4().hex[:12])
    try:
        writers = [f"w{i}" for i in range(WINDOW + 8)]
        for w in writers:
            record.begin_write((7,), w, 60.0, False)
        record.begin_write((8,), "other", 60.0, False)
        for w in writers[:-1]:
            record.end_write((7,), w)
            assert record.read((7,))[3] > time.time(), f"unmarked while {writers[-1]} writes"
        record.end_write((7,), writers[-1])
        assert record.read((7,))[3] == 0.0
        assert record.read((8,))[3] > time.time()
        record.release((8,), "other")
        assert record.read((8,))[3] == 0.0
    finally:
        record.close()


def _attach_and_exit(prefix: str, directory: str, hold: Any) -> None:
    attach(prefix, directory)
    if hold is not None:
        time.sleep(60)
    os._exit(0)  # like SIGKILL: no exit handlers, the file stays


def test_files_left_by_dead_processes_are_swept(tmp_path: Any) -> None:
    d = str(tmp_path)
    ctx: Any = mp.get_context("fork")
    dead = ctx.Process(target=_attach_and_exit, args=("gone", d, None))
    dead.start()
    dead.join(30)
    alive = ctx.Process(target=_attach_and_exit, args=("kept", d, True))
    alive.start()
    try:
        gone, kept = shared_path("gone", d), shared_path("kept", d)
        deadline = time.monotonic() + 30
        while not os.path.exists(kept):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # let it register
        assert os.path.exists(gone)
        an_hour_ago = time.time() - 3600
        for path in (gone, kept):
            os.utime(path, (an_hour_ago, an_hour_ago))
        fresh = MemoryBackend(shared_prefix="fresh", shared_dir=d)
        assert fresh.shared
        assert not os.path.exists(gone), "a file no live process uses is left behind"
        assert os.path.exists(kept), "a file in use was deleted"
        fresh.close()
    finally:
        alive.kill()
        alive.join(10)


def test_a_change_that_raises_leaves_the_record_unlocked_and_readable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A write whose change fails (here: marking raises) releases the thread lock and the
    file lock and closes its seqlock generation: later reads and writes go on, in this
    process and in others."""
    import fcntl

    from yokedcache_sa.backends import versionfile

    prefix = "t" + uuid.uuid4().hex[:12]
    record = attach(prefix)
    try:
        record.end_write((3,), "warm")  # past the new file's first-write wait
        real_mark = versionfile.MappedFile.mark

        def failing_mark(self: Any, *args: Any) -> None:
            raise RuntimeError("mark failed")

        monkeypatch.setattr(versionfile.MappedFile, "mark", failing_mark)
        with pytest.raises(RuntimeError, match="mark failed"):
            record.begin_write((3,), "w1", 30.0, False)
        assert not record._lock.locked()
        assert record._map.hdr[versionfile.H_GEN] % 2 == 0  # no read waits for it
        fd = os.open(shared_path(prefix), os.O_RDWR)
        try:  # another process could take the file lock
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        monkeypatch.setattr(versionfile.MappedFile, "mark", real_mark)
        before = record.read((3,))[2]
        record.begin_write((3,), "w2", 30.0, False)
        assert record.read((3,))[3] > time.time()
        assert record.end_write((3,), "w2") > before
        assert record.read((3,))[3] == 0.0
    finally:
        record.close()


@pytest.mark.parametrize("watch", ["inotify", "stat"])
def test_a_shared_record_that_cannot_be_reopened_makes_reads_unavailable(
    watch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was deleted and a new one cannot be made (/dev/shm full): the backend's reads
    raise BackendUnavailable saying what to do, and the cache answers them as misses."""
    from yokedcache_sa.backends import shared
    from yokedcache_sa.errors import BackendUnavailable

    filewatch.disable(watch == "stat")
    prefix = "t" + uuid.uuid4().hex[:12]
    cache = _cache(prefix)
    try:
        assert cache.set_sync("k", 1, tags=["row:0"])
        assert cache.get_sync("k") == 1
        backend = cache.backend
        assert isinstance(backend, MemoryBackend) and backend._shared is not None

        def full(self: Any) -> Any:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(shared.SharedVersions, "_open", full)
        os.unlink(shared_path(prefix))
        backend._shared._next_check = 0.0  # the next read checks the path now
        with pytest.raises(BackendUnavailable, match="shared version file failed"):
            backend.fetch("any-key")
        assert cache.get_sync("k") is None  # a sick cache is a miss, not an error
        assert cache.get_stats_sync().errors >= 1
    finally:
        monkeypatch.undo()
        cache.disconnect_sync()
        filewatch.disable(False)
