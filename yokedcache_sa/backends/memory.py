"""In-process backend: bounded (entries and bytes, LRU), TTL, thread-safe, zero services.

Entries always live in the process. The version record (epoch, write sequence, tag versions,
write marks) is either process-local or, with *shared_prefix*, mapped from a file shared by
every process of the host using that prefix (:mod:`.shared`), so that a commit in one worker
process makes the other workers' entries stale. Compute locks stay process-local.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..errors import BackendUnavailable
from ..tags import Snapshot
from .base import Fetched, NonBlockingTwins, StoreOutcome, StoreState
from .shared import SharedVersions, attach
from .versionfile import shared_dir, slot_of

__all__ = ["MemoryBackend"]

_INF = float("inf")
_tuple_new = tuple.__new__  # a NamedTuple made from all its fields, without its __new__
log = logging.getLogger("yokedcache_sa")
_warned = False


def _new_epoch() -> str:
    return os.urandom(8).hex()


def _slots(tags: Sequence[str]) -> tuple[int, ...]:
    return tuple(sorted(set(map(slot_of, tags))))


def _open_shared(prefix: str, directory: str | None) -> SharedVersions | None:
    global _warned
    try:
        return attach(prefix, directory)
    except OSError as exc:
        if not _warned:
            _warned = True
            log.warning(
                "yokedcache_sa: memory backend could not share its version record (%s); "
                "falling back to a process-local record: with several worker processes and no "
                "Redis, entries may be stale across processes. Make %s writable, run one "
                "process, or set YOKEDCACHE_REDIS_URL.",
                exc,
                directory if directory is not None else shared_dir(),
            )
        return None


def _unavailable(exc: OSError) -> BackendUnavailable:
    return BackendUnavailable(
        f"memory backend: the shared version file failed ({exc}); check that its directory "
        "is writable and not full, or set YOKEDCACHE_MEMORY_SHARED=false for one process"
    )


class MemoryBackend(NonBlockingTwins):
    """A process-local store with the same atomic semantics as the Redis backend.

    Args:
        max_entries: entries kept at most; the least recently used go first.
        max_bytes: payload bytes kept at most.
        clock: monotonic clock for TTLs (injectable for tests; also times the marks of a
            process-local record; a shared record uses the wall clock).
        shared_prefix: share the version record with every process of this host that uses
            the same prefix (a file in ``/dev/shm``, else the temp dir). None: process-local.
            If the file cannot be used, one warning is logged and the record is local.
        shared_dir: directory of the shared file (default: see above).

    Added in 0.x: *shared_prefix*, *shared_dir*.
    """

    name = "memory"
    stable_payloads = True
    """fetch() returns the same bytes object that store() kept (callers may memoize by it)."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        clock: object = None,
        shared_prefix: str | None = None,
        shared_dir: str | None = None,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        # key -> (tags, payload, expires_at, epoch, seq, slots of the tags when shared)
        self._entries: OrderedDict[
            str, tuple[tuple[str, ...], bytes, float, str, int, tuple[int, ...]]
        ] = OrderedDict()
        self._bytes = 0
        self._epoch = _new_epoch()
        self._seq = 0
        self._versions: dict[str, int] = {}
        self._marks: dict[str, dict[str, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}
        self._closed = False
        self._shared = (
            _open_shared(shared_prefix, shared_dir) if shared_prefix is not None else None
        )

    @property
    def entry_count(self) -> int:
        """Entries held now (expired ones included until they are touched or evicted)."""
        return len(self._entries)

    @property
    def payload_bytes(self) -> int:
        """Payload bytes held now."""
        return self._bytes

    @property
    def shared(self) -> bool:
        """Whether the version record is shared with the other processes of the host."""
        return self._shared is not None

    # -- internals (called with the lock held) -------------------------------------------

    def _state(self, tags: Sequence[str], now: float) -> tuple[int, bool]:
        versions = self._versions
        marks = self._marks
        top = 0
        marked = False
        for t in tags:
            v = versions.get(t, 0)
            if v > top:
                top = v
            if not marked:
                m = marks.get(t)
                if m:
                    marked = any(exp > now for exp in m.values())
        return top, marked

    def _drop(self, key: str) -> None:
        payload = self._entries.pop(key)[1]
        self._bytes -= len(payload)

    def _evict(self) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_entries or self._bytes > self.max_bytes):
            payload = entries.popitem(last=False)[1][1]
            self._bytes -= len(payload)

    # -- sync API --------------------------------------------------------------------------

    def fetch(self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0) -> Fetched:
        now = self._clock()
        shared = self._shared
        try:  # only the shared record's read raises OSError here (mapped like _read's)
            with self._lock:
                item = self._entries.get(key)
                if item is not None and item[2] <= now:
                    self._drop(key)
                    item = None
                if item is None:
                    lock = self._take(key, lock_token, lock_ttl, now) if lock_token else 0
                    if shared is None:
                        return Fetched(None, Snapshot(self._epoch, self._seq), (), lock)
                    cur, seq, _top, _mark = shared.read(())
                    return Fetched(None, Snapshot(cur, seq), (), lock)
                tags, payload, _expires, epoch, seq, slots = item
                self._entries.move_to_end(key)
                if shared is None:
                    cur, now_seq = self._epoch, self._seq
                    top, marked = self._state(tags, now)
                else:
                    cur, now_seq, top, mark = shared.read(slots)
                    marked = mark > 0.0 and mark > time.time()
                lock = 0
                if lock_token and (marked or epoch != cur or top > seq):
                    lock = self._take(key, lock_token, lock_ttl, now)
                # the hit's two tuples made without their Python-level __new__ (all fields)
                snap = _tuple_new(Snapshot, (cur, now_seq, top, marked))
                fetched: Fetched = _tuple_new(Fetched, (payload, snap, tags, lock))
                return fetched
        except OSError as exc:
            raise _unavailable(exc) from exc

    @staticmethod
    def _read(shared: SharedVersions, slots: Sequence[int]) -> tuple[str, int, int, float]:
        try:
            return shared.read(slots)
        except OSError as exc:
            raise _unavailable(exc) from exc

    def _take(self, name: str, token: str, ttl: float, now: float) -> int:
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return -1
        self._locks[name] = (token, now + ttl)
        return 1

    def observe(self) -> Snapshot:
        if self._shared is not None:
            epoch, seq, _top, _mark = self._read(self._shared, ())
            return Snapshot(epoch, seq)
        with self._lock:
            return Snapshot(self._epoch, self._seq)

    def store(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None = None,
    ) -> StoreOutcome:
        now = self._clock()
        with self._lock:
            if lock_token is not None:
                held = self._locks.get(key)
                if held is not None and held[0] == lock_token:
                    del self._locks[key]
            shared = self._shared
            if shared is None:
                slots: tuple[int, ...] = ()
                if epoch != self._epoch:
                    return StoreOutcome.STALE
                top, marked = self._state(tags, now)
            else:
                slots = _slots(tags)
                cur, _seq, top, mark = self._read(shared, slots)
                if epoch != cur:
                    return StoreOutcome.STALE
                marked = mark > 0.0 and mark > time.time()
            if top > seq:
                return StoreOutcome.STALE
            if marked:
                return StoreOutcome.MARKED
            if len(payload) > self.max_bytes:
                # It could never be kept: refuse it instead of evicting every other entry.
                return StoreOutcome.STALE
            if key in self._entries:
                self._drop(key)
            expires = now + ttl if ttl else _INF
            self._entries[key] = (tuple(tags), payload, expires, epoch, seq, slots)
            self._bytes += len(payload)
            self._evict()
            return StoreOutcome.STORED

    def begin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        if self._shared is not None:
            try:
                self._shared.begin_write(_slots(tags), writer, lease, bump)
            except OSError as exc:
                raise _unavailable(exc) from exc
            return
        now = self._clock()
        with self._lock:
            if bump:
                self._seq += 1
                for t in tags:
                    self._versions[t] = self._seq
            for t in tags:
                m = self._marks.setdefault(t, {})
                for w in [w for w, exp in m.items() if exp <= now]:
                    del m[w]
                m[writer] = now + lease

    def end_write(self, tags: Sequence[str], writer: str) -> int:
        if self._shared is not None:
            try:
                return self._shared.end_write(_slots(tags), writer)
            except OSError as exc:
                raise _unavailable(exc) from exc
        with self._lock:
            self._seq += 1
            for t in tags:
                self._versions[t] = self._seq
            self._release(tags, writer)
            return self._seq

    def _release(self, tags: Sequence[str], writer: str) -> None:
        for t in tags:
            m = self._marks.get(t)
            if m is not None:
                m.pop(writer, None)
                if not m:
                    del self._marks[t]

    def release(self, tags: Sequence[str], writer: str) -> None:
        if self._shared is not None:
            try:
                self._shared.release(_slots(tags), writer)
            except OSError as exc:
                raise _unavailable(exc) from exc
            return
        with self._lock:
            self._release(tags, writer)

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        now = self._clock()
        with self._lock:
            held = self._locks.get(name)
            if held is not None and held[1] > now:
                return False
            self._locks[name] = (token, now + ttl)
            if len(self._locks) > 4 * self.max_entries:  # drop expired locks now and then
                self._locks = {k: v for k, v in self._locks.items() if v[1] > now}
            return True

    def unlock(self, name: str, token: str) -> None:
        with self._lock:
            held = self._locks.get(name)
            if held is not None and held[0] == token:
                del self._locks[name]

    def locked(self, name: str) -> bool:
        now = self._clock()
        with self._lock:
            held = self._locks.get(name)
            return held is not None and held[1] > now

    def delete_many(self, keys: Sequence[str]) -> int:
        n = 0
        with self._lock:
            for k in keys:
                if k in self._entries:
                    self._drop(k)
                    n += 1
        return n

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._versions.clear()
            self._marks.clear()
            self._seq = 0
            self._epoch = _new_epoch()
        if self._shared is not None:
            try:
                self._shared.new_epoch()
            except OSError as exc:
                raise _unavailable(exc) from exc

    def key_count(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for item in self._entries.values() if item[2] > now)

    def describe(self) -> StoreState:
        """Entries and bytes of this process; tag versions when the record is local.

        Added in 0.x.
        """
        now = self._clock()
        with self._lock:
            entries = sum(1 for item in self._entries.values() if item[2] > now)
            if self._shared is not None:
                versions: dict[str, int] | None = None
                marks: dict[str, int] | None = None
            else:
                versions = dict(self._versions)
                marks = {
                    t: n for t, m in self._marks.items() if (n := sum(e > now for e in m.values()))
                }
            epoch, seq = self._epoch, self._seq
        if self._shared is not None:
            try:
                epoch, seq = self._shared.observe()
            except OSError as exc:
                raise _unavailable(exc) from exc
        return StoreState(entries, epoch, seq, versions, marks, self._bytes, scope="process")

    @property
    def bytes_used(self) -> int:
        """Payload bytes currently held."""
        return self._bytes

    def ping(self) -> None:
        return None

    def close(self) -> None:
        shared = self._shared
        if shared is not None and not self._closed:
            self._closed = True
            shared.close()
