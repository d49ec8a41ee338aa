"""The tag-version protocol's operations as methods: :class:`TagVersionProtocol`.

What the ORM layer and ``@cached`` drive: look a key up and store a result against the
snapshot observed before computing it, mark the tags a transaction writes and bump them
after its commit (or release them), and the compute locks of stampede protection. Users hold
:class:`~yokedcache_sa.cache.YokedCache`, which inherits these and adds the lifecycle and the
key/value API. Each method is one line over a flow (:mod:`yokedcache_sa.flows`) and a driver
(:mod:`yokedcache_sa.drivers`); plain names are async, ``_sync`` twins sync.
"""

from __future__ import annotations

from asyncio import _get_running_loop
from collections.abc import Iterable

from . import flows
from .drivers import drive_async, drive_sync, lookup_async, lookup_sync
from .keys import DEFAULT_TTL, TTL, new_token
from .logs import loop_check
from .state import CacheState, ComputeLock, Lookup
from .tags import Snapshot

__all__ = ["TagVersionProtocol"]


class TagVersionProtocol(CacheState):
    """The read, write and lock operations of one cache (see the module docstring)."""

    # -- reads: lookup, store, observe -----------------------------------------------------

    async def lookup(self, key: str, *, horizon: int | None = None, lock: bool = False) -> Lookup:
        """Read *key*; on a miss the returned snapshot is what a later store must carry.

        Args:
            horizon: the write sequence a snapshot-isolated transaction began at.
            lock: on a miss, also take the compute lock of *key* (same round trip).

        Never raises for a sick cache: an unreachable store or a bad entry is a miss with
        ``snapshot=None`` (do not store) or a plain miss. (Its hit has a documented fast
        path: see :mod:`yokedcache_sa.drivers`.)
        """
        return await lookup_async(self, key, horizon, lock)

    def lookup_sync(self, key: str, *, horizon: int | None = None, lock: bool = False) -> Lookup:
        """Sync twin of :meth:`lookup`."""
        return lookup_sync(self, key, horizon, lock)

    async def store(
        self,
        key: str,
        value: object,
        *,
        tags: Iterable[str],
        snapshot: Snapshot,
        ttl: TTL = DEFAULT_TTL,
        lock: ComputeLock | None = None,
    ) -> bool:
        """Store *value* computed after *snapshot* was observed; refused if a tag moved since.

        Raises:
            SerializationError: the value cannot be encoded (nothing stored).
        """
        return await drive_async(flows.store, self, key, value, tags, snapshot, ttl, lock)

    def store_sync(
        self,
        key: str,
        value: object,
        *,
        tags: Iterable[str],
        snapshot: Snapshot,
        ttl: TTL = DEFAULT_TTL,
        lock: ComputeLock | None = None,
    ) -> bool:
        """Sync twin of :meth:`store`."""
        return drive_sync(flows.store, self, key, value, tags, snapshot, ttl, lock)

    async def observe(self) -> Snapshot | None:
        """Return the current epoch and write sequence, or None if the store is unreachable."""
        return await drive_async(flows.observe, self)

    def observe_sync(self) -> Snapshot | None:
        """Sync twin of :meth:`observe`."""
        return drive_sync(flows.observe, self)

    # -- two-phase writes ------------------------------------------------------------------

    @staticmethod
    def new_writer() -> str:
        """Return a fresh writer id for :meth:`begin_write_sync`."""
        return new_token()

    async def begin_write(self, tags: Iterable[str], writer: str) -> None:
        """Mark *tags* as being written: no entry for them is served or stored until
        :meth:`end_write` or :meth:`release` (or the lease expires).

        If the store is unreachable the tags become pending in this process (bypassed here,
        and the later ``end_write`` retried until delivered).

        Raises:
            InvalidationError: only with ``strict_invalidation``, when the mark (and its
                version bump) could not be delivered; the caller must not commit.
        """
        await drive_async(flows.begin_write, self, tags, writer)

    def begin_write_sync(self, tags: Iterable[str], writer: str) -> None:
        """Sync twin of :meth:`begin_write`."""
        if loop_check.armed and _get_running_loop() is not None:
            loop_check.fire("commit")
        drive_sync(flows.begin_write, self, tags, writer)

    async def end_write(self, tags: Iterable[str], writer: str) -> None:
        """Give *tags* new versions and drop *writer*'s marks (after the commit).

        Raises:
            InvalidationError: the store could not be reached; the tags stay pending in this
                process (bypassed, retried with backoff) until delivered.
        """
        await drive_async(flows.end_write, self, tags, writer)

    def end_write_sync(self, tags: Iterable[str], writer: str) -> None:
        """Sync twin of :meth:`end_write`."""
        drive_sync(flows.end_write, self, tags, writer)

    async def release(self, tags: Iterable[str], writer: str) -> None:
        """Drop *writer*'s marks without new versions (after a rollback). Never raises.

        An unreleased mark only makes other processes bypass until its lease expires.
        """
        await drive_async(flows.release, self, tags, writer)

    def release_sync(self, tags: Iterable[str], writer: str) -> None:
        """Sync twin of :meth:`release`."""
        drive_sync(flows.release, self, tags, writer)

    async def flush_pending(self) -> int:
        """Try to deliver undelivered invalidations now; return how many tags remain.

        Added in 0.2 (``flush_pending_sync`` had no async twin).
        """
        return await drive_async(flows.retry_pending, self, True)

    def flush_pending_sync(self) -> int:
        """Sync twin of :meth:`flush_pending`."""
        return drive_sync(flows.retry_pending, self, True)

    # -- locks for stampede protection ----------------------------------------------------

    async def try_lock(self, key: str, ttl: float) -> tuple[bool, str | None]:
        """Try to take the compute lock of *key*.

        Returns ``(True, token)`` when taken, ``(False, None)`` when another caller holds it,
        and ``(True, None)`` when the store is unreachable (compute without a lock).
        """
        return await drive_async(flows.try_lock, self, key, ttl)

    def try_lock_sync(self, key: str, ttl: float) -> tuple[bool, str | None]:
        """Sync twin of :meth:`try_lock`."""
        return drive_sync(flows.try_lock, self, key, ttl)

    async def unlock(self, key: str, token: str | None) -> None:
        """Drop a lock taken with :meth:`try_lock` (no-op for a None token)."""
        await drive_async(flows.unlock, self, key, token)

    def unlock_sync(self, key: str, token: str | None) -> None:
        """Sync twin of :meth:`unlock`."""
        drive_sync(flows.unlock, self, key, token)

    async def is_locked(self, key: str) -> bool:
        """Whether another caller holds the compute lock of *key* (False if unreachable)."""
        return await drive_async(flows.is_locked, self, key)

    def is_locked_sync(self, key: str) -> bool:
        """Sync twin of :meth:`is_locked`."""
        return drive_sync(flows.is_locked, self, key)
