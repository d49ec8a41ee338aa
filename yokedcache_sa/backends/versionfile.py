"""The shared version file: its layout, one mapping of it, its mark records.

:mod:`.versionlife` creates, opens and sweeps the files; :mod:`.shared` holds the record
built on them (lock-free reads, locked writes, reopening).

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
stale too early, never too late. The methods of :class:`MappedFile` that change the file are
called by :mod:`.shared` under its ``flock`` and seqlock.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
from bisect import bisect_right
from collections.abc import Sequence
from functools import lru_cache

__all__ = [
    "HEADER",
    "H_CREATED",
    "H_EPOCH",
    "H_GEN",
    "H_LAYOUT",
    "H_MAGIC",
    "H_PIDS",
    "H_RETIRED",
    "H_SEQ",
    "LAYOUT",
    "MAGIC",
    "MARKS",
    "PIDS",
    "SIZE",
    "SLOTS",
    "WINDOW",
    "MappedFile",
    "alive",
    "new_epoch",
    "shared_dir",
    "shared_path",
    "slot_of",
    "writer_hash",
]

SLOTS = 8192
MARKS = 1024
WINDOW = 32

MAGIC = 0x31_52_45_56_44_4B_59  # "YKDVER1" read little-endian
LAYOUT = (SLOTS << 32) | MARKS
H_MAGIC, H_LAYOUT, H_GEN, H_EPOCH, H_SEQ, H_CREATED, H_RETIRED = range(7)
"""Indexes of the header words (``MappedFile.hdr``)."""
H_PIDS = 7
PIDS = 64
HEADER = 8 * (H_PIDS + PIDS)
_VER = HEADER
_MMAX = _VER + 8 * SLOTS
_OFLOW = _MMAX + 8 * SLOTS
_FAR = _OFLOW + 8 * SLOTS
_MKEY = _FAR + 8 * SLOTS
_MEXP = _MKEY + 8 * MARKS
SIZE = _MEXP + 8 * MARKS
_SLOT_BITS = 14
_SLOT_MASK = (1 << _SLOT_BITS) - 1


@lru_cache(maxsize=65536)
def slot_of(tag: str) -> int:
    """Return the slot of tag id *tag* (stable across processes and Python runs)."""
    digest = hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "little") % SLOTS


@lru_cache(maxsize=256)  # begin_write and end_write of one transaction ask for the same
def writer_hash(writer: str) -> int:
    """The writer part of *writer*'s mark records (its low slot bits are zero)."""
    digest = hashlib.blake2b(writer.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> _SLOT_BITS << _SLOT_BITS


def _home(slot: int) -> int:
    return slot * (MARKS - WINDOW) // SLOTS


_HOMES = [_home(s) for s in range(SLOTS)]
"""``_home`` of every slot: an index instead of a call on the write path."""


def new_epoch() -> int:
    """A random odd epoch (never 0, the epoch of a zeroed file)."""
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


class MappedFile:
    """One open file and its typed views; replaced as a whole when the file changes."""

    __slots__ = ("far", "fd", "hdr", "ino", "mexp", "mkey", "mm", "mmax", "oflow", "ver")

    def __init__(self, fd: int, ino: tuple[int, int]) -> None:
        self.fd = fd
        self.ino = ino
        self.mm = mmap.mmap(fd, SIZE)
        mv = memoryview(self.mm)
        self.hdr = mv[:HEADER].cast("Q")
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

    # -- attached processes (the caller holds the ``flock``) ---------------------------------

    def join(self, pid: int) -> None:
        """Record *pid* among the processes using the file (while a place is free)."""
        pids = self.hdr[H_PIDS : H_PIDS + PIDS].tolist()
        if pid not in pids and 0 in pids:
            self.hdr[H_PIDS + pids.index(0)] = pid

    def leave(self, pid: int) -> bool:
        """Drop *pid* and dead processes from the file; return whether another lives on it."""
        hdr = self.hdr
        others = False
        for i in range(H_PIDS, H_PIDS + PIDS):
            p = hdr[i]
            if p and p != pid and alive(p):
                others = True
            elif p:
                hdr[i] = 0
        return others

    # -- versions and mark records (the caller holds the lock) -----------------------------

    def bump(self, slots: Sequence[int]) -> int:
        """Give *slots* one new version; return it (the new write sequence)."""
        seq: int = self.hdr[H_SEQ] + 1
        self.hdr[H_SEQ] = seq
        for s in slots:
            self.ver[s] = seq
        return seq

    def mark(self, slots: Sequence[int], w: int, exp: float, now: float) -> None:
        """Record writer *w*'s marks on *slots* until *exp*."""
        for s in set(slots):
            key = w | (s + 1)
            home = _HOMES[s]
            keys = self.mkey[home : home + WINDOW].tolist()  # read once: found or placed
            if key in keys:
                i = home + keys.index(key)
            else:
                i = self._find_far(s, key) if self.far[s] else -1
                if i < 0:
                    i = self._place(s, key, now, keys)
            if i < 0:
                # Table full of live marks: one that no release drops, only its expiry.
                self.oflow[s] = max(self.oflow[s], exp)
                self.mmax[s] = max(self.mmax[s], exp)
                continue
            if exp > self.mexp[i]:  # a mark made again never shortens (a free record has 0.0)
                self.mexp[i] = exp
            if exp > self.mmax[s]:
                self.mmax[s] = exp

    def release(self, slots: Sequence[int], w: int, now: float) -> None:
        """Drop writer *w*'s marks on *slots*."""
        for s in set(slots):
            key = w | (s + 1)
            home = _HOMES[s]
            keys = self.mkey[home : home + WINDOW].tolist()
            if key in keys:
                j = keys.index(key)
                mine = self.mexp[home + j]
                self._free(home + j, key)
                if mine < self.mmax[s]:
                    # A later mark (or an overflow) holds the summary, and freeing this
                    # record leaves it: the summary is an exact maximum except for expired
                    # records, whose expiry no read counts.
                    continue
                if not self.far[s]:
                    keys[j] = 0
                    self._summarize(s, now, keys)
                    continue
            else:
                i = self._find_far(s, key) if self.far[s] else -1
                if i >= 0:
                    self._free(i, key)
                elif self.mmax[s] == 0.0:
                    continue
            self._summarize(s, now)

    def _free(self, i: int, key: int) -> None:
        self.mkey[i] = 0
        self.mexp[i] = 0.0
        slot = (key & _SLOT_MASK) - 1
        home = _HOMES[slot]
        if not home <= i < home + WINDOW:
            self.far[slot] -= 1

    def _find_far(self, slot: int, key: int) -> int:
        """Index of the record *key* anywhere in the table (*slot* has far records), or -1."""
        keys = self.mkey.tolist()
        return keys.index(key) if key in keys else -1

    def _place(self, slot: int, key: int, now: float, keys: list[int]) -> int:
        """Index of a free record for *slot* (freeing expired ones), or -1 if none.

        *keys* is the slot's window of keys as read under the lock (changed here).
        """
        home = _HOMES[slot]
        exps = self.mexp[home : home + WINDOW].tolist()
        # free records have expiry 0.0: a loop only when some live record has expired
        if bisect_right(sorted(exps), now) != keys.count(0):
            for j, k in enumerate(keys):
                if k and exps[j] <= now:  # a dead writer's record
                    self._free(home + j, k)
                    keys[j] = 0
        if 0 in keys:
            i = home + keys.index(0)
        else:
            everything = self.mkey.tolist()
            if 0 not in everything:
                everything = self._purge(now)
            if 0 not in everything:
                return -1
            i = everything.index(0)
            self.far[slot] += 1
        self.mkey[i] = key
        return i

    def _purge(self, now: float) -> list[int]:
        """Free every expired record; return the keys left."""
        exps = self.mexp.tolist()
        keys = self.mkey.tolist()
        for i, k in enumerate(keys):
            if k and exps[i] <= now:
                self._free(i, k)
                keys[i] = 0
        return keys

    def _summarize(self, slot: int, now: float, window: list[int] | None = None) -> None:
        """Set the slot's ``markmax`` to the latest live expiry among its records.

        *window*: the slot's window of keys as read under the lock, when it has no far record.
        """
        tag = slot + 1
        home = _HOMES[slot]
        lo, hi = (0, MARKS) if self.far[slot] else (home, home + WINDOW)
        keys = window if window is not None else self.mkey[lo:hi].tolist()
        top = 0.0
        if keys.count(0) != len(keys):  # else no record at all: nothing to look through
            exps = self.mexp[lo:hi].tolist()
            for j, k in enumerate(keys):
                if k & _SLOT_MASK == tag and exps[j] > now and exps[j] > top:
                    top = exps[j]
        over = self.oflow[slot]
        if over > now and over > top:
            top = over
        self.mmax[slot] = top


def alive(pid: int) -> bool:
    """Whether process *pid* exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
