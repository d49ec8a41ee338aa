"""Notice, without a ``stat`` per check, that a mapped version file was unlinked or moved.

The shared version record (:mod:`.shared`) must notice within ``RECHECK`` seconds that its
path no longer names the file it maps. Asking the file system (``os.stat``) every ``RECHECK``
costs a syscall that builds a ``stat_result`` and, on a hit path that runs on cold CPU
caches, about 5 % of a memory-backend hit. On Linux the kernel can tell instead: one inotify
instance per process watches each mapped file and every directory above it for a change of
link count (``IN_ATTRIB``: unlinked, or replaced by a rename over it), a move
(``IN_MOVE_SELF``) and an end (``IN_DELETE_SELF``; ``IN_IGNORED`` comes unasked). The kernel
queues those events inside the syscall that caused them, so a non-blocking ``epoll_wait``
of the instance every ``RECHECK`` keeps the same guarantee as the ``stat`` did. Writes
through the mapping raise no event. Any event, and a queue overflow, sends the record back
to its ``stat`` check: an event can cost a check, never a missed change.

Elsewhere (no inotify, a per-user instance or watch limit reached, ``ctypes`` unavailable,
a path through a symbolic link) there is no watch, and the record polls with ``stat``.
"""

from __future__ import annotations

import os
import select
import struct
import sys
import threading
from typing import Any

__all__ = ["FileWatch", "disable", "watcher"]

_IN_ATTRIB = 0x004
_IN_MOVE_SELF = 0x800
_IN_DELETE_SELF = 0x400
_IN_NONBLOCK = 0o4000
_IN_CLOEXEC = 0o2000000
_MASK = _IN_ATTRIB | _IN_MOVE_SELF | _IN_DELETE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class FileWatch:
    """One process's inotify instance and the watches of its mapped files.

    ``watch(path)`` returns a watch id, or ``None`` when this file cannot be watched (the
    caller then checks with ``stat``). ``quiet()`` is the lock-free common case: no event is
    queued and none drained is still unreported, so no watched file changed. Otherwise
    ``changed(wid)`` drains the queue and says whether the file behind *wid* may have been
    unlinked, moved or replaced since it was watched (or last reported); ``True`` also for
    ``None``, for an id this instance does not hold (or no longer: closed) and after an
    overflow.

    The kernel gives one watch descriptor per file and instance: two ``watch`` calls on one
    file (two records of it in a process) get the same descriptor. Each call gets its own
    watch id instead, with its own reports, and the descriptor is removed with its last id.
    """

    def __init__(self, libc: Any) -> None:
        self._libc = libc
        self._lock = threading.Lock()
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            raise OSError("inotify_init1 failed (the per-user instance limit?)")
        try:
            self._epoll = select.epoll()  # unlike poll objects, safe to poll from any thread
            self._epoll.register(fd, select.EPOLLIN)
        except BaseException:
            os.close(fd)  # no epoll descriptor left: no instance either
            raise
        self._fd = fd
        self._queued = self._epoll.poll
        # True from before a drain until every drained report was returned (and for ever once
        # closed): quiet() reads it after polling, so a drain by another thread is never missed
        self._pending = False
        self._dirty: set[int] = set()  # watch ids with a report not yet returned
        self._ids: dict[int, set[int]] = {}  # kernel watch descriptor -> the watch ids on it
        self._wd: dict[int, list[int]] = {}  # watch id -> its kernel watch descriptors
        self._last_id = 0
        self._closed = False

    def watch(self, path: str) -> int | None:
        """Watch the file *path* names now, and its directories (a rename of one changes what
        the path names as a rename of the file would); ``None`` if the kernel refuses one."""
        path = os.path.abspath(path)
        if os.path.realpath(path) != path:
            return None  # a symbolic link replaced by a rename raises no event: stat instead
        with self._lock:
            if self._closed:  # the descriptor number may be another instance's by now
                return None
            self._last_id += 1
            wid = self._last_id
            self._wd[wid] = []
            for name, flags in _components(path):
                wd = int(self._libc.inotify_add_watch(self._fd, os.fsencode(name), flags))
                if wd < 0:
                    self._forget(wid)
                    return None
                if wd not in self._wd[wid]:  # two names of one inode: one descriptor
                    self._ids.setdefault(wd, set()).add(wid)
                    self._wd[wid].append(wd)
            return wid

    def unwatch(self, wid: int | None) -> None:
        """Stop watching *wid* (a file already gone is no error)."""
        if wid is None:
            return
        with self._lock:
            self._forget(wid)
            if not self._closed:
                self._pending = bool(self._dirty)

    def _forget(self, wid: int) -> None:
        self._dirty.discard(wid)
        for wd in self._wd.pop(wid, ()):
            ids = self._ids.get(wd, set())
            ids.discard(wid)
            if not ids:
                self._ids.pop(wd, None)
                if not self._closed:
                    self._libc.inotify_rm_watch(self._fd, wd)

    def quiet(self) -> bool:
        """Whether no watched file can have changed since each was last reported (no lock)."""
        try:
            return not self._queued(0) and not self._pending
        except (OSError, ValueError):  # closed by another thread meanwhile
            return False

    def changed(self, wid: int | None) -> bool:
        """Whether the file behind *wid* may have changed; forgets the report it returns."""
        if wid is None:
            return True
        with self._lock:
            if self._closed:  # never read the descriptor: its number may be reused
                return True
            if self._queued(0):
                self._drain()
            hit = wid in self._dirty or wid not in self._wd
            self._dirty.discard(wid)
            self._pending = bool(self._dirty)
            return hit

    def _drain(self) -> None:
        self._pending = True  # before the queue empties: see quiet()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            at = 0
            while at + _EVENT.size <= len(data):
                wd, _mask, _cookie, length = _EVENT.unpack_from(data, at)
                at += _EVENT.size + length
                if wd == -1:  # IN_Q_OVERFLOW: events were lost, any watch may have fired
                    self._dirty.update(self._wd)
                else:
                    self._dirty.update(self._ids.get(wd, ()))

    def close(self) -> None:
        """Close the instance (its watches go with it); it reports every file as changed."""
        with self._lock:
            if self._closed:
                return
            # never quiet from here on (a quiet() that meets the closed epoll says so too)
            self._closed = self._pending = True
            self._epoll.close()
            os.close(self._fd)
            self._ids.clear()
            self._wd.clear()


def _components(path: str) -> list[tuple[str, int]]:
    """What to watch for *path* (absolute, no symbolic link): the file and every directory
    above it."""
    out = [(path, _MASK)]
    parent = os.path.dirname(path)
    while parent != out[-1][0]:
        out.append((parent, _MASK))
        parent = os.path.dirname(parent)
    return out


_state: dict[str, Any] = {"watch": None, "tried": False, "disabled": False}
_state_lock = threading.Lock()


def watcher() -> FileWatch | None:
    """This process's :class:`FileWatch`, made on first use; ``None`` where there is none."""
    w: FileWatch | None = _state["watch"]
    if w is not None or _state["tried"]:
        return w
    with _state_lock:
        if not _state["tried"]:
            _state["tried"] = True
            if not _state["disabled"] and sys.platform.startswith("linux"):
                try:
                    import ctypes

                    libc = ctypes.CDLL(None, use_errno=True)
                    _state["watch"] = FileWatch(libc)
                except (OSError, AttributeError, ImportError):
                    _state["watch"] = None  # no inotify here, or the instance limit
        result: FileWatch | None = _state["watch"]
        return result


def disable(off: bool = True) -> None:
    """Turn the watch off (*off*) or back on for records opened from now on (tests)."""
    with _state_lock:
        _state["disabled"] = off
        _state["tried"] = False
        old = _state["watch"]
        _state["watch"] = None
    if old is not None:
        old.close()


def _after_fork() -> None:
    # The child shares the parent's inotify instance (one event queue): reading it would
    # steal the parent's events. Close the child's descriptor of it (the parent keeps its
    # own); the child's records make a new instance when they reopen.
    global _state_lock
    _state_lock = threading.Lock()
    old = _state["watch"]
    _state["watch"] = None
    _state["tried"] = False
    if old is not None:
        old._lock = threading.Lock()  # another thread may have held it at the fork
        try:
            old.close()  # closes the child's descriptors; the parent's queue stays its own
        except OSError:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
