"""The inotify watch that spares the shared version record a ``stat`` per check (Linux).

Real files on the record's directory, real kernel events; the record is checked against the
file system it watches. Off Linux the watch does not exist and the record polls with ``stat``
(the last tests run the record that way everywhere).
"""

from __future__ import annotations

import mmap
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from yokedcache_sa.backends import filewatch
from yokedcache_sa.backends.filewatch import FileWatch, watcher
from yokedcache_sa.backends.shared import RECHECK, SharedVersions, shared_path
from yokedcache_sa.backends.versionlife import create

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")


@pytest.fixture
def fw() -> FileWatch:
    w = watcher()
    if w is None:
        pytest.fail("no inotify instance on Linux: is fs.inotify.max_user_instances exhausted?")
    return w


@pytest.fixture
def target(tmp_path: Path) -> Path:
    p = tmp_path / "watched.ver"
    p.write_bytes(b"\0" * 4096)
    return p


@linux
def test_quiet_until_the_file_is_unlinked_then_reported_once(fw: FileWatch, target: Path) -> None:
    wd = fw.watch(str(target))
    assert wd is not None
    assert not fw.changed(wd)
    target.unlink()
    assert fw.changed(wd)
    assert not fw.changed(wd)  # the report is forgotten once returned
    fw.unwatch(wd)


@linux
def test_writes_through_the_mapping_and_pwrite_raise_no_event(fw: FileWatch, target: Path) -> None:
    wd = fw.watch(str(target))
    fd = os.open(target, os.O_RDWR)
    try:
        m = mmap.mmap(fd, 4096)
        for i in range(100):
            m[i] = 7
        m.flush()
        m.close()
        os.pwrite(fd, b"x", 10)
    finally:
        os.close(fd)
    assert not fw.changed(wd)
    fw.unwatch(wd)


@linux
@pytest.mark.parametrize("how", ["rename_over", "move_away", "chmod"])
def test_replacement_move_and_metadata_change_are_reported(
    fw: FileWatch, target: Path, how: str
) -> None:
    wd = fw.watch(str(target))
    if how == "rename_over":
        other = target.with_suffix(".new")
        other.write_bytes(b"y")
        os.replace(other, target)
    elif how == "move_away":
        target.rename(target.with_suffix(".away"))
    else:
        target.chmod(0o600)
    assert fw.changed(wd)
    fw.unwatch(wd)


@linux
def test_a_queue_overflow_reports_every_watch(fw: FileWatch, tmp_path: Path) -> None:
    busy = [tmp_path / "busy1", tmp_path / "busy2"]
    quiet = tmp_path / "quiet"
    for p in (*busy, quiet):
        p.write_bytes(b"x")
    wds = [fw.watch(str(p)) for p in busy]
    wq = fw.watch(str(quiet))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 200_000:
        pytest.fail(f"max_queued_events is {limit}: too many events to overflow in a test")
    # each chmod queues an IN_ATTRIB (alternating files: the kernel merges a repeated event)
    for i in range(limit + 10):
        os.chmod(busy[i % 2], 0o600 if (i // 2) % 2 else 0o644)
    assert fw.changed(wq), "an overflow lost events: every watched file must be checked"
    assert all(fw.changed(wd) for wd in wds)
    for wd in (*wds, wq):
        fw.unwatch(wd)


@linux
def test_unwatchable_path_and_no_watch_mean_ask_the_file_system(
    fw: FileWatch, tmp_path: Path
) -> None:
    assert fw.watch(str(tmp_path / "missing")) is None
    assert fw.changed(None)


def test_a_failing_inotify_init_raises_and_leaves_no_watcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoInstances:  # a libc whose per-user instance limit is reached
        def inotify_init1(self, flags: int) -> int:
            return -1

    with pytest.raises(OSError, match="instance limit"):
        FileWatch(NoInstances())


@pytest.fixture
def prefix() -> Iterator[str]:
    p = "fw" + uuid.uuid4().hex[:12]
    yield p
    try:
        os.unlink(shared_path(p))
    except FileNotFoundError:
        pass


def _count_stats(monkeypatch: pytest.MonkeyPatch, path: str) -> list[int]:
    seen = [0]
    real = os.stat

    def counting(p: Any, *a: Any, **kw: Any) -> os.stat_result:
        if p == path:
            seen[0] += 1
        return real(p, *a, **kw)

    monkeypatch.setattr(os, "stat", counting)  # the module shared.py calls it through
    return seen


def _read_for(record: SharedVersions, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        record.read((1, 2))


@linux
def test_reads_of_an_unchanged_file_do_not_stat_it(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    record = SharedVersions(prefix)
    stats = _count_stats(monkeypatch, record.path)
    _read_for(record, 8 * RECHECK)
    assert stats[0] == 0, "the record asked the file system although its watch was quiet"
    record._detach()


@linux
def test_writes_to_an_unchanged_file_do_not_stat_it(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    record = SharedVersions(prefix)
    record.end_write((1,), "w")  # the first write waits until the new file is 2 * RECHECK old
    stats = _count_stats(monkeypatch, record.path)
    for i in range(20):
        record.begin_write((1, 2), f"w{i}", 30.0, False)
        record.end_write((1, 2), f"w{i}")
    assert stats[0] == 0, "a write asked the file system although the watch was quiet"
    assert record.read((1, 2))[2] == record.read(())[1]  # the writes landed in the file
    record._detach()


def test_without_the_watch_reads_stat_every_recheck(
    monkeypatch: pytest.MonkeyPatch, prefix: str
) -> None:
    filewatch.disable()
    try:
        record = SharedVersions(prefix)
        stats = _count_stats(monkeypatch, record.path)
        _read_for(record, 8 * RECHECK)
        assert stats[0] >= 3
        record._detach()
    finally:
        filewatch.disable(False)


@pytest.mark.parametrize("watch", ["inotify", "stat"])
@pytest.mark.parametrize("how", ["unlink", "rename_over", "move_away"])
def test_a_write_to_the_file_that_replaced_ours_is_seen_by_the_next_read(
    prefix: str, watch: str, how: str
) -> None:
    """Another process (a second record here) writes the file now at the path: our next read
    after ``RECHECK`` reads that file, not the one we had mapped."""
    if watch == "stat":
        filewatch.disable()
    elif not sys.platform.startswith("linux"):
        pytest.skip("inotify is Linux's")
    try:
        ours = SharedVersions(prefix)
        before = ours.read((5,))
        if how == "unlink":
            os.unlink(ours.path)
        elif how == "rename_over":
            create(ours.path, replace=True)  # what a process that found it unusable does
        else:
            os.rename(ours.path, ours.path + ".away")
        theirs = SharedVersions(prefix)  # opens (or replaces) the file at the path
        seq = theirs.end_write((5,), "w")  # waits out 2 * RECHECK on a young file
        epoch, now_seq, top, _mark = ours.read((5,))
        assert epoch != before[0] or now_seq >= seq, "our read came from the old file"
        assert (epoch, now_seq, top) == theirs.read((5,))[:3]
        theirs._detach()
        ours._detach()
    finally:
        filewatch.disable(False)
        for suffix in (".away",):
            try:
                os.unlink(shared_path(prefix) + suffix)
            except FileNotFoundError:
                pass


@linux
def test_a_forked_child_watches_with_its_own_instance(prefix: str) -> None:
    record = SharedVersions(prefix)
    parent = watcher()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own instance, and its reads must not eat the parent's events
        try:
            child = watcher()
            ok = child is not None and child is not parent
            _read_for(record, 4 * RECHECK)
            os.write(w, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"1", "the child shared its parent's inotify queue"
    os.close(r)
    os.waitpid(pid, 0)
    before = record.read((3,))
    os.unlink(record.path)
    theirs = SharedVersions(prefix)
    theirs.end_write((3,), "w")
    assert record.read((3,))[0] != before[0]  # the parent still got its event
    theirs._detach()
    record._detach()


@linux
def test_a_report_drained_for_another_file_keeps_the_watch_unquiet(tmp_path: Path) -> None:
    """quiet() is the lock-free fast path: an event drained while checking file B must not
    be lost for file A, whose record has not asked yet."""
    import ctypes

    fw = FileWatch(ctypes.CDLL(None, use_errno=True))  # its own queue: no other test's events
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    wa, wb = fw.watch(str(a)), fw.watch(str(b))
    assert fw.quiet()
    a.unlink()
    assert not fw.quiet()
    assert not fw.changed(wb)  # drains a's event
    assert not fw.quiet(), "a's report was drained by b's check and then forgotten"
    assert fw.changed(wa)
    assert fw.quiet()
    fw.close()


@linux
def test_a_closed_watch_is_never_quiet(target: Path) -> None:
    import ctypes

    w = FileWatch(ctypes.CDLL(None, use_errno=True))
    w.watch(str(target))
    assert w.quiet()
    w.close()
    assert not w.quiet()


@linux
def test_a_closed_instance_reports_changed_and_never_reads_a_reused_descriptor(
    tmp_path: Path,
) -> None:
    """After close() the old descriptor number goes to the next instance: changed() on the
    closed one must say "changed" without reading it, or it eats the new instance's events."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    old = FileWatch(libc)
    wa = old.watch(str(a))
    fd = old._fd
    old.close()
    new = FileWatch(libc)
    try:
        if new._fd != fd:
            pytest.skip("the kernel gave the new instance another descriptor")
        wb = new.watch(str(b))
        b.unlink()
        assert old.changed(wa), "a closed instance must report every file as changed"
        assert old.watch(str(a)) is None, "a closed instance must not watch (in another's queue)"
        assert new.changed(wb), "the closed instance read the new instance's event"
    finally:
        new.close()


def _in_a_child(body: Any) -> str:
    """Run *body* in a forked child; return what it reported (its exception, if any)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = str(body())
            except BaseException:  # reported to the parent
                import traceback

                out = "error: " + traceback.format_exc()
            os.write(w, out.encode()[:4000])
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 4096):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@linux
@pytest.mark.parametrize("limit", ["max_inotify_watches", "max_inotify_instances"])
def test_with_the_kernel_refusing_a_watch_or_an_instance_the_record_polls_with_stat(
    prefix: str, limit: str
) -> None:
    """A per-user limit reached for real (0 in a user namespace): inotify_add_watch or
    inotify_init1 fails, and the record must poll with stat (not trust a quiet instance):
    it sees its file unlinked, or replaced, within RECHECK."""

    def body() -> str:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        ids = {"uid": os.getuid(), "gid": os.getgid()}  # unmapped after the unshare
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
            return "skip: no user namespaces"
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        for kind, own in ids.items():
            with open(f"/proc/self/{kind}_map", "w") as f:
                f.write(f"{own} {own} 1")
        with open(f"/proc/sys/user/{limit}", "w") as f:
            f.write("0")
        filewatch.disable(False)  # a new instance, counted in this namespace
        ours = SharedVersions(prefix)
        if limit == "max_inotify_watches":
            if watcher() is None:
                return "skip: no instance"
            if ours._watch is not None:
                return "a watch beyond the limit"
        elif watcher() is not None:
            return "an instance beyond the limit"
        before = ours.read((5,))
        if limit == "max_inotify_watches":
            os.unlink(ours.path)
        else:
            create(ours.path, replace=True)
        theirs = SharedVersions(prefix)
        seq = theirs.end_write((5,), "w")
        epoch, now_seq, _top, _mark = ours.read((5,))
        theirs._detach()
        ours._detach()
        return "ok" if epoch != before[0] or now_seq >= seq else "stale"

    out = _in_a_child(body)
    if out.startswith("skip"):
        pytest.skip(out)
    assert out == "ok", out


@linux
def test_two_records_of_one_file_in_a_process_each_see_its_replacement(prefix: str) -> None:
    """inotify gives one watch id per file and instance: a second record of the same file must
    neither lose the first one's reports nor remove its watch."""
    first = SharedVersions(prefix)
    second = SharedVersions(prefix)
    first.read((5,))
    os.chmod(first.path, 0o600)  # an event: the first record re-watches the file
    time.sleep(RECHECK)
    first.read((5,))
    before = second.read((5,))
    os.rename(first.path, first.path + ".away")
    try:
        theirs = SharedVersions(prefix)
        seq = theirs.end_write((5,), "w")
        epoch, now_seq, _top, _mark = second.read((5,))
        assert epoch != before[0] or now_seq >= seq, "the second record read the moved file"
        theirs._detach()
    finally:
        os.unlink(first.path + ".away")
    first._detach()
    second._detach()


@linux
def test_a_read_while_another_thread_switches_waits_for_the_switch(prefix: str) -> None:
    """One thread takes the event and is still switching (blocked on the old file's flock,
    held by a slow writer of another process); another thread's read must not take the
    lock-free path to the old file, which a write to the new one has already passed (once the
    record of another prefix has drained what is left in the queue)."""
    import fcntl
    import threading

    ours = SharedVersions(prefix)
    other = SharedVersions(prefix + "o")
    before = ours.read((5,))
    held = os.open(ours.path, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # the slow writer's lock on the old file
    release = threading.Timer(0.2, fcntl.flock, (held, fcntl.LOCK_UN))
    try:
        create(ours.path, replace=True)  # the switching thread watches the new file
        time.sleep(RECHECK)
        switching = threading.Thread(target=ours.read, args=((5,),))
        switching.start()
        end = time.monotonic() + 2
        while not ours._lock.locked() and time.monotonic() < end:
            time.sleep(0.001)
        time.sleep(2 * RECHECK)  # our next read is due to check (RECHECK after the other's)
        theirs = SharedVersions(prefix)
        seq = theirs.end_write((5,), "w")
        other.read((5,))
        release.start()
        epoch, now_seq, _top, _mark = ours.read((5,))
        switching.join()
        assert epoch != before[0] or now_seq >= seq, "read the old file during the switch"
        theirs._detach()
    finally:
        release.cancel()
        fcntl.flock(held, fcntl.LOCK_UN)
        os.close(held)
    ours._detach()
    other._detach()


@linux
def test_quiet_never_raises_while_another_thread_closes_the_instance() -> None:
    """quiet() runs lock-free on the hit path: a close() (disable(), the fork handler) racing
    with it must make it say "not quiet", never raise."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    current = [FileWatch(libc)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            try:
                current[0].quiet()
            except BaseException as exc:  # the failure under test
                errors.append(exc)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        end = time.monotonic() + 1.5
        while time.monotonic() < end and not errors:
            old, current[0] = current[0], FileWatch(libc)
            old.close()
    finally:
        stop.set()
        spinner.join()
        sys.setswitchinterval(interval)
        current[0].close()
    assert not errors, f"quiet() raised {errors[0]!r}"


@linux
def test_no_descriptor_left_when_the_epoll_cannot_be_made() -> None:
    """With one descriptor left, inotify_init1 gets it and epoll() fails: the instance's
    descriptor must be closed again, not leaked (a real RLIMIT_NOFILE, in a child)."""

    def body() -> str:
        import ctypes
        import resource

        libc = ctypes.CDLL(None, use_errno=True)
        probe = os.open("/dev/null", os.O_RDONLY)  # the lowest free descriptor
        os.close(probe)
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (probe + 1, hard))  # room for one more
        try:
            FileWatch(libc)
        except OSError:
            pass
        else:
            return "skip: the epoll was made"
        try:
            os.fstat(probe)
        except OSError:
            return "ok"
        return f"leaked descriptor {probe}"

    out = _in_a_child(body)
    if out.startswith("skip"):
        pytest.skip(out)
    assert out == "ok", out


def _reads_the_new_file(
    ours: SharedVersions, change: Callable[[], None], prefix: str, directory: str
) -> bool:
    """Change what *ours*' path names, write through a record opened after that, and say
    whether *ours*' next read (after the creator's 2 * RECHECK wait) sees the write."""
    before = ours.read((5,))
    change()
    theirs = SharedVersions(prefix, directory)
    seq = theirs.end_write((5,), "w")
    epoch, now_seq, _top, _mark = ours.read((5,))
    theirs._detach()
    ours._detach()
    return epoch != before[0] or now_seq >= seq


@linux
@pytest.mark.parametrize("watch", ["inotify", "stat"])
@pytest.mark.parametrize("how", ["rename", "rename_target"])
def test_a_record_sees_its_directory_moved_away(tmp_path: Path, watch: str, how: str) -> None:
    """The stat poll follows the path, so it sees a directory of it renamed (also the one a
    symbolic link of the path resolves to); the watch must see that too, not only the file.
    (A symbolic link renamed over with one to elsewhere raises no event on this kernel.)"""
    filewatch.disable(watch == "stat")
    try:
        real = tmp_path / "real"
        real.mkdir()
        d = tmp_path / "versions"
        if how == "rename":
            d.mkdir()
        else:
            d.symlink_to(real)
        ours = SharedVersions("dm", str(d))

        def move() -> None:
            moved = d if how == "rename" else real
            moved.rename(moved.with_suffix(".old"))
            moved.mkdir()

        assert _reads_the_new_file(ours, move, "dm", str(d)), "read the moved directory's file"
    finally:
        filewatch.disable(False)


@pytest.mark.parametrize("watch", ["inotify", "stat"])
def test_a_symbolic_link_renamed_over_is_seen(tmp_path: Path, watch: str) -> None:
    """A path through a symbolic link is not watched (renaming another link over it raises
    no event on the old one): the record stats it, and sees the link now names elsewhere."""
    filewatch.disable(watch == "stat")
    try:
        one, two = tmp_path / "one", tmp_path / "two"
        one.mkdir()
        two.mkdir()
        d = tmp_path / "versions"
        d.symlink_to(one)
        ours = SharedVersions("sl", str(d))
        assert ours._watch is None

        def relink() -> None:
            (tmp_path / "next").symlink_to(two)
            os.replace(tmp_path / "next", d)

        assert _reads_the_new_file(ours, relink, "sl", str(d)), "read the old link's file"
    finally:
        filewatch.disable(False)
