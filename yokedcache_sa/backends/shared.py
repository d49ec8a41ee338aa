"""The memory backend's version record, shared by every process of one host through a file.

Entries stay in each process; the *version record* (epoch, write sequence, per-tag versions,
write marks) lives in a fixed-size memory-mapped file that every process using the same key
prefix maps, so a commit in one worker makes the others' entries stale before it returns.

Layout (native byte order, every field 8 bytes and 8-byte aligned)::

    header   magic, layout, gen, epoch, seq, created_ns, retired, 64 attached pids
    versions u64[SLOTS]   slot version = max over the tags hashed there (seq of last bump)
    markmax  f64[SLOTS]   latest expiry (wall clock) of the live marks on the slot
    overflow f64[SLOTS]   expiry of marks that found no free record (table full)
    far      u64[SLOTS]   mark records of the slot placed outside its window
    mkey     u64[MARKS]   mark record: writer hash << 14 | slot + 1 (0 = free)
    mexp     f64[MARKS]   expiry of the record

A slot's mark records go in a window of ``WINDOW`` records at a home derived from the slot
(slots share windows), so placing, finding and summarising them reads one short window; only
when a window is full does a record go elsewhere in the table (counted in ``far``, and then
the whole table is searched for that slot).

Tags hash into slots: two tags in one slot share a version, so a collision only makes entries
stale too early, never too late. Updates run under an exclusive ``flock`` and inside a
seqlock (``gen`` odd while writing); readers take no lock and retry when ``gen`` moved. A
writer killed mid-update leaves ``gen`` odd: the next locked access sees it and moves to a
new epoch (every entry becomes a miss), since the record may be half written.

A file deleted or replaced while in use: each process compares the path's inode with its own
mapping at least every ``RECHECK`` seconds of reads and on every write; the first to notice
retires the old file (new epoch there, ``retired`` set) so every process still on it drops its
entries and reopens. A process that creates a file waits until it is ``2 * RECHECK`` old before
its first write completes, so no one still reads an older file when that write returns.
"""

from __future__ import annotations

import atexit
import hashlib
import mmap
import os
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache

if sys.platform != "win32":
    import fcntl

__all__ = ["SLOTS", "SharedVersions", "attach", "shared_path", "slot_of"]

SLOTS = 8192
MARKS = 1024
RECHECK = 0.005
"""Seconds between two checks that the path still names the mapped file."""

_MAGIC = 0x31_52_45_56_44_4B_59  # "YKDVER1" read little-endian
_LAYOUT = (SLOTS << 32) | MARKS
_H_MAGIC, _H_LAYOUT, _H_GEN, _H_EPOCH, _H_SEQ, _H_CREATED, _H_RETIRED = range(7)
_H_PIDS = 7
_PIDS = 64
_HEADER = 8 * (_H_PIDS + _PIDS)
_VER = _HEADER
_MMAX = _VER + 8 * SLOTS
_OFLOW = _MMAX + 8 * SLOTS
_FAR = _OFLOW + 8 * SLOTS
_MKEY = _FAR + 8 * SLOTS
_MEXP = _MKEY + 8 * MARKS
SIZE = _MEXP + 8 * MARKS
_SLOT_BITS = 14
_SLOT_MASK = (1 << _SLOT_BITS) - 1
WINDOW = 32
_SPINS = 64


@lru_cache(maxsize=65536)
def slot_of(tag: str) -> int:
    """Return the slot of tag id *tag* (stable across processes and Python runs)."""
    digest = hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "little") % SLOTS


def _writer_hash(writer: str) -> int:
    digest = hashlib.blake2b(writer.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> _SLOT_BITS << _SLOT_BITS


def _home(slot: int) -> int:
    return slot * (MARKS - WINDOW) // SLOTS


def _new_epoch() -> int:
    return int.from_bytes(os.urandom(8), "little") | 1


def shared_dir() -> str:
    """The directory of version files: ``/dev/shm`` when writable, else the temp dir."""
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK | os.X_OK):
        return "/dev/shm"
    return tempfile.gettempdir()


def shared_path(prefix: str, directory: str | None = None) -> str:
    """The version file of *prefix* for this user."""
    digest = hashlib.blake2b(prefix.encode(), digest_size=10).hexdigest()
    uid = os.getuid() if hasattr(os, "getuid") else 0
    name = f"yokedcache-v1-{digest}-{uid}.ver"
    return os.path.join(directory if directory is not None else shared_dir(), name)


class _Mapping:
    """One open file and its typed views; replaced as a whole when the file changes."""

    __slots__ = ("far", "fd", "hdr", "ino", "mexp", "mkey", "mm", "mmax", "oflow", "ver")

    def __init__(self, fd: int, ino: tuple[int, int]) -> None:
        self.fd = fd
        self.ino = ino
        self.mm = mmap.mmap(fd, SIZE)
        mv = memoryview(self.mm)
        self.hdr = mv[:_HEADER].cast("Q")
        self.ver = mv[_VER:_MMAX].cast("Q")
        self.mmax = mv[_MMAX:_OFLOW].cast("d")
        self.oflow = mv[_OFLOW:_FAR].cast("d")
        self.far = mv[_FAR:_MKEY].cast("Q")
        self.mkey = mv[_MKEY:_MEXP].cast("Q")
        self.mexp = mv[_MEXP:SIZE].cast("d")

    def close(self) -> None:
        # Other threads may still hold the views: let the last reference unmap the file.
        try:
            os.close(self.fd)
        except OSError:
            pass


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
        # (raw epoch, its text), one attribute so that threads never see a mixed pair
        self._epoch: tuple[int, str] = (0, "")
        self._next_check = time.monotonic() + RECHECK
        self._users = 0
        self._detached = False
        _live.add(self)

    # -- opening -------------------------------------------------------------------------

    def _create(self, replace: bool) -> None:
        _sweep(os.path.dirname(self.path))
        tmp = f"{self.path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, SIZE)
            m = _Mapping(fd, (0, 0))
            hdr = m.hdr
            hdr[_H_LAYOUT] = _LAYOUT
            hdr[_H_EPOCH] = _new_epoch()
            hdr[_H_CREATED] = time.time_ns()
            hdr[_H_MAGIC] = _MAGIC
            if replace:
                os.replace(tmp, self.path)
            else:
                try:
                    os.link(tmp, self.path)
                except FileExistsError:
                    pass  # another process created it first: use theirs
        finally:
            os.close(fd)
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _open(self) -> _Mapping:
        for _ in range(8):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                self._create(replace=False)
                continue
            st = os.fstat(fd)
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                os.close(fd)
                raise PermissionError(f"{self.path} belongs to uid {st.st_uid}, not to us")
            if st.st_size != SIZE:
                os.close(fd)
                self._create(replace=True)  # truncated, or another layout: a new epoch
                continue
            m = _Mapping(fd, (st.st_dev, st.st_ino))
            hdr = m.hdr
            if hdr[_H_MAGIC] != _MAGIC or hdr[_H_LAYOUT] != _LAYOUT or hdr[_H_RETIRED]:
                m.close()
                self._create(replace=True)
                continue
            self._attach(m)
            return m
        raise OSError(f"could not open a stable version file at {self.path}")

    def _attach(self, m: _Mapping) -> None:
        self._detached = False
        pid = os.getpid()
        fcntl.flock(m.fd, fcntl.LOCK_EX)
        try:
            hdr = m.hdr
            pids = [hdr[_H_PIDS + i] for i in range(_PIDS)]
            if pid not in pids and 0 in pids:
                hdr[_H_PIDS + pids.index(0)] = pid
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
                hdr[_H_GEN] += 2 if hdr[_H_GEN] & 1 else 1  # odd, whatever a dead writer left
                hdr[_H_EPOCH] = _new_epoch()
                hdr[_H_RETIRED] = 1
                hdr[_H_GEN] += 1
            finally:
                fcntl.flock(old.fd, fcntl.LOCK_UN)
        new = self._open()
        self._map = new
        self._hot = (new.hdr, new.ver, new.mmax)
        old.close()

    def _current(self) -> bool:
        m = self._map
        if m.hdr[_H_RETIRED]:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == m.ino and st.st_size == SIZE

    def _recheck(self) -> None:
        with self._lock:
            self._next_check = time.monotonic() + RECHECK
            if not self._current():
                self._switch()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        old = self._map
        self._map = self._open()
        self._hot = (self._map.hdr, self._map.ver, self._map.mmax)
        old.close()

    # -- reading (no lock) -----------------------------------------------------------------

    def _epoch_str(self, raw: int) -> str:
        known = self._epoch
        if raw != known[0]:
            known = self._epoch = (raw, f"{raw:016x}")
        return known[1]

    def read(self, slots: Sequence[int]) -> tuple[str, int, int, float]:
        """Return ``(epoch, seq, max version of slots, latest mark expiry of slots)``."""
        if time.monotonic() >= self._next_check:
            self._recheck()
        hdr, ver, mmax = self._hot
        for _ in range(_SPINS):
            gen = hdr[2]
            if gen & 1:
                continue
            epoch = hdr[3]
            seq = hdr[4]
            top = 0
            mark = 0.0
            for s in slots:
                v = ver[s]
                if v > top:
                    top = v
                m = mmax[s]
                if m > mark:
                    mark = m
            if hdr[2] == gen:
                break
        else:
            return self._read_locked(slots)
        known = self._epoch
        if epoch != known[0]:
            if hdr[_H_RETIRED]:
                self._recheck()
                if self._hot[0] is not hdr:  # reopened: read the new file
                    return self.read(slots)
            return self._epoch_str(epoch), seq, top, mark
        return known[1], seq, top, mark

    def _read_locked(self, slots: Sequence[int]) -> tuple[str, int, int, float]:
        with self._writing(bump_gen=False) as m:
            top = max((m.ver[s] for s in slots), default=0)
            mark = max((m.mmax[s] for s in slots), default=0.0)
            return self._epoch_str(m.hdr[_H_EPOCH]), m.hdr[_H_SEQ], top, mark

    def observe(self) -> tuple[str, int]:
        epoch, seq, _top, _mark = self.read(())
        return epoch, seq

    # -- writing (flock) -------------------------------------------------------------------

    @contextmanager
    def _writing(self, bump_gen: bool = True) -> Iterator[_Mapping]:
        with self._lock:
            if not self._current():
                self._switch()
            self._next_check = time.monotonic() + RECHECK
            m = self._map
            young = m.hdr[_H_CREATED] + int(2 * RECHECK * 1e9) - time.time_ns()
            if young > 0 and bump_gen:
                time.sleep(young / 1e9)
            fcntl.flock(m.fd, fcntl.LOCK_EX)
            try:
                hdr = m.hdr
                if hdr[_H_GEN] & 1:
                    # A writer died inside its update: the record may be half written.
                    hdr[_H_EPOCH] = _new_epoch()
                    hdr[_H_GEN] += 1
                if not bump_gen:
                    yield m
                    return
                hdr[_H_GEN] += 1
                try:
                    yield m
                finally:
                    hdr[_H_GEN] += 1
            finally:
                fcntl.flock(m.fd, fcntl.LOCK_UN)

    def _bump(self, m: _Mapping, slots: Sequence[int]) -> int:
        seq: int = m.hdr[_H_SEQ] + 1
        m.hdr[_H_SEQ] = seq
        for s in slots:
            m.ver[s] = seq
        return seq

    def _free(self, m: _Mapping, i: int, key: int) -> None:
        m.mkey[i] = 0
        m.mexp[i] = 0.0
        slot = (key & _SLOT_MASK) - 1
        home = _home(slot)
        if not home <= i < home + WINDOW:
            m.far[slot] -= 1

    def _find(self, m: _Mapping, slot: int, key: int) -> int:
        """Index of the record *key* of *slot*, or -1."""
        home = _home(slot)
        window = m.mkey[home : home + WINDOW].tolist()
        if key in window:
            return home + window.index(key)
        if m.far[slot]:
            keys = m.mkey.tolist()
            if key in keys:
                return keys.index(key)
        return -1

    def _place(self, m: _Mapping, slot: int, key: int, now: float) -> int:
        """Index of a free record for *slot* (freeing expired ones), or -1 if none."""
        home = _home(slot)
        keys = m.mkey[home : home + WINDOW].tolist()
        exps = m.mexp[home : home + WINDOW].tolist()
        for j, k in enumerate(keys):
            if k and exps[j] <= now:  # a dead writer's record
                self._free(m, home + j, k)
                keys[j] = 0
        if 0 in keys:
            i = home + keys.index(0)
        else:
            everything = m.mkey.tolist()
            if 0 not in everything:
                everything = self._purge(m, now)
            if 0 not in everything:
                return -1
            i = everything.index(0)
            m.far[slot] += 1
        m.mkey[i] = key
        return i

    def _purge(self, m: _Mapping, now: float) -> list[int]:
        """Free every expired record; return the keys left."""
        exps = m.mexp.tolist()
        keys = m.mkey.tolist()
        for i, k in enumerate(keys):
            if k and exps[i] <= now:
                self._free(m, i, k)
                keys[i] = 0
        return keys

    def _summarize(self, m: _Mapping, slot: int, now: float) -> None:
        """Set the slot's ``markmax`` to the latest live expiry among its records."""
        tag = slot + 1
        home = _home(slot)
        lo, hi = (0, MARKS) if m.far[slot] else (home, home + WINDOW)
        exps = m.mexp[lo:hi].tolist()
        top = 0.0
        for j, k in enumerate(m.mkey[lo:hi].tolist()):
            if k & _SLOT_MASK == tag and exps[j] > now and exps[j] > top:
                top = exps[j]
        over = m.oflow[slot]
        if over > now and over > top:
            top = over
        m.mmax[slot] = top

    def begin_write(self, slots: Sequence[int], writer: str, lease: float, bump: bool) -> None:
        """Mark *slots* as written by *writer* until ``now + lease`` (and bump them)."""
        w = _writer_hash(writer)
        with self._writing() as m:
            now = time.time()
            exp = now + lease
            if bump:
                self._bump(m, slots)
            for s in set(slots):
                key = w | (s + 1)
                i = self._find(m, s, key)
                if i < 0:
                    i = self._place(m, s, key, now)
                if i < 0:
                    # Table full of live marks: one that no release drops, only its expiry.
                    m.oflow[s] = max(m.oflow[s], exp)
                    m.mmax[s] = max(m.mmax[s], exp)
                    continue
                m.mexp[i] = exp
                if exp > m.mmax[s]:
                    m.mmax[s] = exp

    def _release(self, m: _Mapping, slots: Sequence[int], w: int, now: float) -> None:
        for s in set(slots):
            key = w | (s + 1)
            i = self._find(m, s, key)
            if i >= 0:
                self._free(m, i, key)
            elif m.mmax[s] == 0.0:
                continue
            self._summarize(m, s, now)

    def end_write(self, slots: Sequence[int], writer: str) -> int:
        """Give *slots* one new version and drop *writer*'s marks on them; return the seq."""
        w = _writer_hash(writer)
        with self._writing() as m:
            seq = self._bump(m, slots)
            self._release(m, slots, w, time.time())
            return seq

    def release(self, slots: Sequence[int], writer: str) -> None:
        """Drop *writer*'s marks on *slots* without new versions."""
        w = _writer_hash(writer)
        with self._writing() as m:
            self._release(m, slots, w, time.time())

    def new_epoch(self) -> None:
        """Start a new version space: every process's entries become misses."""
        with self._writing() as m:
            m.hdr[_H_EPOCH] = _new_epoch()

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
            m = self._map
            pid = os.getpid()
            others = False
            fcntl.flock(m.fd, fcntl.LOCK_EX)
            try:
                hdr = m.hdr
                for i in range(_H_PIDS, _H_PIDS + _PIDS):
                    p = hdr[i]
                    if p == pid:
                        hdr[i] = 0
                    elif p and _alive(p):
                        others = True
                    elif p:
                        hdr[i] = 0
                if not others and self._current():
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


_swept: set[str] = set()


def _sweep(directory: str) -> None:
    """Delete this user's version files that no live process uses (once per directory).

    Files of processes killed with SIGKILL are left behind; with a fresh prefix per test or
    per deployment they would pile up. A file is deleted only when every process recorded
    in it is dead and it was last modified over a minute ago (so none is being created);
    deleting a file in use would be safe anyway, only slower.
    """
    if directory in _swept:
        return
    _swept.add(directory)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    suffix = f"-{uid}.ver"
    old = time.time() - 60
    try:
        names = [n for n in os.listdir(directory) if n.startswith("yokedcache-v1-")]
    except OSError:
        return
    for name in names:
        if not name.endswith(suffix):
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_mtime > old:
                continue
            with open(path, "rb") as f:
                raw = f.read(_HEADER)
        except OSError:
            continue
        if len(raw) < _HEADER:
            continue
        words = memoryview(raw).cast("Q")
        if words[_H_MAGIC] != _MAGIC:
            continue
        if any(p and _alive(p) for p in words[_H_PIDS : _H_PIDS + _PIDS]):
            continue
        try:
            os.unlink(path)
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
