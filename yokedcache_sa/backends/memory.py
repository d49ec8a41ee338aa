"""In-process backend: bounded (entries and bytes, LRU), TTL, thread-safe, zero services."""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from ..tags import Snapshot
from .base import Fetched, StoreOutcome

__all__ = ["MemoryBackend"]

_INF = float("inf")


def _new_epoch() -> str:
    return os.urandom(8).hex()


class MemoryBackend:
    """A process-local store with the same atomic semantics as the Redis backend.

    Args:
        max_entries: entries kept at most; the least recently used go first.
        max_bytes: payload bytes kept at most.
        clock: monotonic clock (injectable for tests).
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
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._clock = clock if callable(clock) else time.monotonic
        self._lock = threading.Lock()
        # key -> (tags, payload, expires_at, epoch, seq)
        self._entries: OrderedDict[str, tuple[tuple[str, ...], bytes, float, str, int]] = (
            OrderedDict()
        )
        self._bytes = 0
        self._epoch = _new_epoch()
        self._seq = 0
        self._versions: dict[str, int] = {}
        self._marks: dict[str, dict[str, float]] = {}
        self._locks: dict[str, tuple[str, float]] = {}

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
        with self._lock:
            item = self._entries.get(key)
            if item is not None and item[2] <= now:
                self._drop(key)
                item = None
            if item is None:
                lock = self._take(key, lock_token, lock_ttl, now) if lock_token else 0
                return Fetched(None, Snapshot(self._epoch, self._seq), (), lock)
            tags, payload, _expires, epoch, seq = item
            self._entries.move_to_end(key)
            top, marked = self._state(tags, now)
            lock = 0
            if lock_token and (marked or epoch != self._epoch or top > seq):
                lock = self._take(key, lock_token, lock_ttl, now)
            return Fetched(payload, Snapshot(self._epoch, self._seq, top, marked), tags, lock)

    def _take(self, name: str, token: str, ttl: float, now: float) -> int:
        held = self._locks.get(name)
        if held is not None and held[1] > now:
            return -1
        self._locks[name] = (token, now + ttl)
        return 1

    def observe(self) -> Snapshot:
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
            if epoch != self._epoch:
                return StoreOutcome.STALE
            top, marked = self._state(tags, now)
            if top > seq:
                return StoreOutcome.STALE
            if marked:
                return StoreOutcome.BEING_WRITTEN
            if len(payload) > self.max_bytes:
                # It could never be kept: refuse it instead of evicting every other entry.
                return StoreOutcome.STALE
            if key in self._entries:
                self._drop(key)
            self._entries[key] = (tuple(tags), payload, now + ttl if ttl else _INF, epoch, seq)
            self._bytes += len(payload)
            self._evict()
            return StoreOutcome.STORED

    def begin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
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

    def key_count(self) -> int:
        now = self._clock()
        with self._lock:
            return sum(1 for item in self._entries.values() if item[2] > now)

    @property
    def bytes_used(self) -> int:
        """Payload bytes currently held."""
        return self._bytes

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    # -- async twins: the memory store never blocks, so they call the sync methods ---------

    async def afetch(
        self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0
    ) -> Fetched:
        return self.fetch(key, lock_token, lock_ttl)

    async def aobserve(self) -> Snapshot:
        return self.observe()

    async def astore(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None = None,
    ) -> StoreOutcome:
        return self.store(key, payload, ttl, tags, epoch, seq, lock_token)

    async def abegin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        self.begin_write(tags, writer, lease, bump)

    async def aend_write(self, tags: Sequence[str], writer: str) -> int:
        return self.end_write(tags, writer)

    async def arelease(self, tags: Sequence[str], writer: str) -> None:
        self.release(tags, writer)

    async def aacquire(self, name: str, token: str, ttl: float) -> bool:
        return self.acquire(name, token, ttl)

    async def aunlock(self, name: str, token: str) -> None:
        self.unlock(name, token)

    async def alocked(self, name: str) -> bool:
        return self.locked(name)

    async def adelete_many(self, keys: Sequence[str]) -> int:
        return self.delete_many(keys)

    async def aclear(self) -> None:
        self.clear()

    async def akey_count(self) -> int:
        return self.key_count()

    async def aping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
