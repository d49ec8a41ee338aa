"""The memory backend's version record, shared by every process of one host through a file.

Entries stay in each process; the *version record* (epoch, write sequence, per-tag versions,
write marks) lives in a memory-mapped file that every process of a key prefix maps, so a
commit in one worker makes the others' entries stale before it returns. The file is in
:mod:`.versionfile` and :mod:`.versionlife`; this module is the record: lock-free reads,
locked writes, reopening. Updates run under an exclusive ``flock`` and inside a seqlock
(``gen`` odd while writing); readers take no lock and retry when ``gen`` moved. A writer
killed mid-update leaves ``gen`` odd: the next locked access moves to a new epoch (every
entry becomes a miss), since the record may be half written.

A file deleted or replaced while in use: every ``RECHECK`` seconds of reads, and on every
write, each process checks that the path still names its mapping (an inotify watch on Linux,
:mod:`.filewatch`, else ``stat``); the first to notice retires the old file (new epoch,
``retired`` set), so every process on it drops its entries and reopens. A file's creator
waits until it is ``2 * RECHECK`` old before its first write completes.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from .filewatch import FileWatch, watcher
from .versionfile import (
    H_CREATED,
    H_EPOCH,
    H_GEN,
    H_RETIRED,
    H_SEQ,
    SIZE,
    SLOTS,
    WINDOW,
    MappedFile,
    new_epoch,
    shared_dir,
    shared_path,
    slot_of,
    writer_hash,
)
from .versionlife import open_file

if sys.platform != "win32":
    import fcntl

__all__ = ["SLOTS", "WINDOW", "SharedVersions", "attach", "shared_dir", "shared_path", "slot_of"]

RECHECK = 0.02
"""Seconds between two checks that the path still names the mapped file."""
_SPINS = 64
_SETTLED_MAX = 1024  # reads remembered per generation (distinct tag sets of the hits)

_live: weakref.WeakSet[SharedVersions] = weakref.WeakSet()
_attached: dict[str, SharedVersions] = {}
_attached_lock = threading.Lock()


def attach(prefix: str, directory: str | None = None) -> SharedVersions:
    """Return this process's record of *prefix* (one per file, shared by its backends).

    Raises:
        OSError: the file cannot be created or opened.
    """
    if sys.platform == "win32":
        raise OSError("no flock on Windows; the version record stays process-local")
    path = shared_path(prefix, directory)
    with _attached_lock:
        record = _attached.get(path)
        if record is None:
            record = _attached[path] = SharedVersions(prefix, directory)
        record._users += 1
        return record


def _reopen_after_fork() -> None:
    # A flock belongs to the open file description, which a fork shares: without a new
    # descriptor, parent and child would not exclude each other.
    global _attached_lock
    _attached_lock = threading.Lock()
    for record in list(_live):
        record._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reopen_after_fork)


class SharedVersions:
    """The version record of one key prefix, mapped from a file shared by the host.

    Raises:
        OSError: the file cannot be created or opened (the caller falls back to a
            process-local record and says so).
    """

    def __init__(self, prefix: str, directory: str | None = None) -> None:
        self.path = shared_path(prefix, directory)
        self._lock = threading.Lock()
        self._map = self._open()
        self._hot = (self._map.hdr, self._map.ver, self._map.mmax)
        # (header, gen, {slots: read}): reads made at that gen; every change moves gen
        self._settled: tuple[object, int, dict[Sequence[int], tuple[str, int, int, float]]]
        self._settled = (None, -1, {})
        # (raw epoch, its text), one attribute so that threads never see a mixed pair
        self._epoch: tuple[int, str] = (0, "")
        # (watcher, watch id) of the mapped file in this process's inotify instance, if any
        self._watch: tuple[FileWatch, int] | None = None
        self._next_check = time.monotonic() + RECHECK
        self._users = 0
        self._detached = False
        self._aged: MappedFile | None = None  # the mapping found old enough to write at once
        _live.add(self)
        with self._lock:
            self._verify()

    # -- opening -------------------------------------------------------------------------

    def _open(self) -> MappedFile:
        m = open_file(self.path)
        self._attach(m)
        return m

    def _attach(self, m: MappedFile) -> None:
        self._detached = False
        pid = os.getpid()
        fcntl.flock(m.fd, fcntl.LOCK_EX)
        try:
            m.join(pid)
        finally:
            fcntl.flock(m.fd, fcntl.LOCK_UN)

    def _switch(self) -> None:
        """Leave a mapping whose path now names another file (or none); called locked."""
        old = self._map
        try:
            st = os.fstat(old.fd)
            intact = st.st_size == SIZE  # never touch a truncated mapping (SIGBUS)
        except OSError:
            intact = False
        if intact:
            fcntl.flock(old.fd, fcntl.LOCK_EX)
            try:
                hdr = old.hdr
                hdr[H_GEN] += 2 if hdr[H_GEN] & 1 else 1  # odd, whatever a dead writer left
                hdr[H_EPOCH] = new_epoch()
                hdr[H_RETIRED] = 1
                hdr[H_GEN] += 1
            finally:
                fcntl.flock(old.fd, fcntl.LOCK_UN)
        new = self._open()
        self._map = new
        self._hot = (new.hdr, new.ver, new.mmax)
        self._settled = (None, -1, {})
        old.close()
        self._unwatch()  # the next check watches the new file and compares inodes again

    def _current(self) -> bool:
        m = self._map
        if m.hdr[H_RETIRED]:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == m.ino and st.st_size == SIZE

    def _recheck(self, force: bool = False) -> None:
        held = self._watch  # quiet and not locked (a thread switching holds the lock): done
        if not force and held is not None and held[0].quiet() and not self._lock.locked():
            self._next_check = time.monotonic() + RECHECK
            return
        with self._lock:
            if force or self._may_have_moved():
                self._verify()
            # after the check: a thread reading meanwhile must not skip it and read the old file
            self._next_check = time.monotonic() + RECHECK

    def _may_have_moved(self) -> bool:
        """Whether the path may no longer name our mapping: an event on it, or no watch."""
        held = self._watch
        if held is None or held[0] is not watcher():
            return True
        return not held[0].quiet() and held[0].changed(held[1])

    def _verify(self) -> None:
        """Watch the path, then make sure it names our mapping (switching if not); locked."""
        for _ in range(8):
            self._unwatch()
            w = watcher()
            wid = w.watch(self.path) if w is not None else None  # before the check, so that
            self._watch = None if w is None or wid is None else (w, wid)  # no change slips by
            if self._current():
                return
            self._switch()
        self._unwatch()  # the path keeps changing: stat again at the next check

    def _unwatch(self) -> None:
        held, self._watch = self._watch, None
        if held is not None and held[0] is watcher():
            held[0].unwatch(held[1])

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        old = self._map
        self._map = self._open()
        self._hot = (self._map.hdr, self._map.ver, self._map.mmax)
        self._settled = (None, -1, {})
        old.close()
        self._watch = None  # the parent's instance, which the child no longer reads
        with self._lock:
            self._verify()

    # -- reading (no lock) -----------------------------------------------------------------

    def _epoch_str(self, raw: int) -> str:
        known = self._epoch
        if raw != known[0]:
            known = self._epoch = (raw, f"{raw:016x}")
        return known[1]

    def read(self, slots: Sequence[int], _tries: int = _SPINS) -> tuple[str, int, int, float]:
        """Return ``(epoch, seq, max version of slots, latest mark expiry of slots)``."""
        if time.monotonic() >= self._next_check:
            self._recheck()
        hdr, ver, mmax = self._hot
        gen = hdr[2]
        settled = self._settled
        if settled[1] == gen and settled[0] is hdr:  # nothing written since: read before
            known_read = settled[2].get(slots)
            if known_read is not None:
                return known_read
        epoch = hdr[3]
        seq = hdr[4]
        top = 0
        mark = 0.0
        for s in slots:  # plain indexing: map(ver.__getitem__, ...) is 10x slower
            v = ver[s]
            if v > top:
                top = v
            m = mmax[s]
            if m > mark:
                mark = m
        if gen & 1 or hdr[2] != gen:  # a write ran meanwhile: read again, then under the lock
            return self.read(slots, _tries - 1) if _tries > 1 else self._read_locked(slots)
        known = self._epoch
        if epoch != known[0]:
            if hdr[H_RETIRED]:
                self._recheck(force=True)
                if self._hot[0] is not hdr:  # reopened: read the new file
                    return self.read(slots)
            return self._epoch_str(epoch), seq, top, mark
        if settled[1] != gen or settled[0] is not hdr or len(settled[2]) >= _SETTLED_MAX:
            settled = self._settled = (hdr, gen, {})
        settled[2][slots] = read = (known[1], seq, top, mark)
        return read

    def _read_locked(self, slots: Sequence[int]) -> tuple[str, int, int, float]:
        with self._writing(bump_gen=False) as m:
            top = max((m.ver[s] for s in slots), default=0)
            mark = max((m.mmax[s] for s in slots), default=0.0)
            return self._epoch_str(m.hdr[H_EPOCH]), m.hdr[H_SEQ], top, mark

    def observe(self) -> tuple[str, int]:
        epoch, seq, _top, _mark = self.read(())
        return epoch, seq

    # -- writing (flock) -------------------------------------------------------------------

    @contextmanager
    def _writing(self, bump_gen: bool = True) -> Iterator[MappedFile]:
        """The mapping, locked (thread lock and ``flock``) and, with *bump_gen*, inside the
        seqlock's odd generation; the hot writers call :meth:`_enter` and :meth:`_leave`."""
        m = self._enter(bump_gen)
        try:
            yield m
        finally:
            self._leave(m, bump_gen)

    def _enter(self, bump_gen: bool) -> MappedFile:
        """Lock the record for a change (see :meth:`_writing`); pair with :meth:`_leave`."""
        self._lock.acquire()
        try:
            if self._may_have_moved():
                self._verify()  # compare inodes, switch if they differ
            elif self._map.hdr[H_RETIRED]:
                self._switch()
            self._next_check = time.monotonic() + RECHECK
            m = self._map
            if m is not self._aged:
                young = m.hdr[H_CREATED] + int(2 * RECHECK * 1e9) - time.time_ns()
                if young <= 0:
                    self._aged = m
                elif bump_gen:
                    time.sleep(young / 1e9)
            fcntl.flock(m.fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise
        try:
            hdr = m.hdr
            if hdr[H_GEN] & 1:
                # A writer died inside its update: the record may be half written.
                hdr[H_EPOCH] = new_epoch()
                hdr[H_GEN] += 1
            if bump_gen:
                hdr[H_GEN] += 1
        except BaseException:
            self._leave(m, False)
            raise
        return m

    def _leave(self, m: MappedFile, bump_gen: bool) -> None:
        """End what :meth:`_enter` began (also after the change raised)."""
        try:
            if bump_gen:
                m.hdr[H_GEN] += 1
        finally:
            try:
                fcntl.flock(m.fd, fcntl.LOCK_UN)
            finally:
                self._lock.release()

    def begin_write(self, slots: Sequence[int], writer: str, lease: float, bump: bool) -> None:
        """Mark *slots* as written by *writer* until ``now + lease`` (and bump them)."""
        w = writer_hash(writer)
        m = self._enter(True)
        try:
            now = time.time()
            if bump:
                m.bump(slots)
            m.mark(slots, w, now + lease, now)
        finally:
            self._leave(m, True)

    def end_write(self, slots: Sequence[int], writer: str) -> int:
        """Give *slots* one new version and drop *writer*'s marks on them; return the seq."""
        w = writer_hash(writer)
        m = self._enter(True)
        try:
            seq = m.bump(slots)
            m.release(slots, w, time.time())
        finally:
            self._leave(m, True)
        return seq

    def release(self, slots: Sequence[int], writer: str) -> None:
        """Drop *writer*'s marks on *slots* without new versions."""
        w = writer_hash(writer)
        with self._writing() as m:
            m.release(slots, w, time.time())

    def new_epoch(self) -> None:
        """Start a new version space: every process's entries become misses."""
        with self._writing() as m:
            m.hdr[H_EPOCH] = new_epoch()

    def close(self) -> None:
        """Detach one user; with the last, delete the file if no other process uses it.

        The record stays usable (it reopens or recreates the file on the next access).
        """
        with _attached_lock:
            self._users -= 1
            if self._users > 0:
                return
            if _attached.get(self.path) is self:
                del _attached[self.path]
        self._detach()

    def _detach(self) -> None:
        with self._lock:
            if self._detached:
                return
            self._detached = True
            self._unwatch()
            m = self._map
            fcntl.flock(m.fd, fcntl.LOCK_EX)
            try:
                if not m.leave(os.getpid()) and self._current():
                    # Deleting a file in use is safe (see the module docstring), only slower.
                    try:
                        os.unlink(self.path)
                    except FileNotFoundError:
                        pass
            finally:
                fcntl.flock(m.fd, fcntl.LOCK_UN)


@atexit.register
def _detach_all() -> None:
    """At exit, leave every file; the last process of a file deletes it."""
    for record in list(_live):
        try:
            record._detach()
        except OSError:
            pass
