"""The backend contract.

A backend stores opaque entry payloads under keys, each with the list of tag ids it depends
on, and keeps the tag-version state (an epoch, a global write sequence, a version and a set
of write leases per tag). Every method is one atomic step on the store (one round trip on a
network store). Backends know nothing of SQL, sessions or entry encoding; the freshness
decision is made by the caller from what :meth:`Backend.fetch` reports.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

from ..tags import Snapshot

__all__ = ["Backend", "Fetched", "NonBlockingTwins", "StoreOutcome", "StoreState", "SyncBackend"]


class StoreOutcome(enum.IntEnum):
    """Result of a conditional store."""

    STORED = 1
    STALE = 0
    """A tag was written after the observation, or the version space changed."""
    MARKED = -1
    """A tag carries a live write lease."""


class Fetched(NamedTuple):
    """An entry payload (None on a miss) and the version state of its tags, read atomically."""

    payload: bytes | None
    snapshot: Snapshot
    tags: tuple[str, ...] = ()
    """The tag ids the store holds for the entry (checked against the signed header)."""
    lock: int = 0
    """Compute lock asked for with the fetch: 1 taken, -1 held by another caller, 0 not
    asked, or not taken because the entry is fresh."""


@dataclass(frozen=True)
class StoreState:
    """What a store holds right now, for operators (``describe()``, not part of the protocol).

    ``versions``/``marks`` map tag ids to their version and to the number of live "being
    written" marks; None when the store cannot list them by tag (the shared memory record
    keeps hashed slots). ``bytes`` is None when the store does not count payload bytes.

    Added in 0.x.
    """

    entries: int
    epoch: str | None
    seq: int
    versions: dict[str, int] | None = field(default_factory=dict)
    marks: dict[str, int] | None = field(default_factory=dict)
    bytes: int | None = None
    scope: str = "global"
    """``global``: every process using this store sees these figures; ``process``: only this
    process (the memory backend's entries)."""


class SyncBackend(Protocol):
    """The sync half of :class:`Backend` (what :class:`NonBlockingTwins` builds on)."""

    name: str

    def fetch(self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0) -> Fetched:
        """Read the entry at *key* and, atomically with it, the state of the entry's tags.

        With *lock_token*, also take the compute lock of *key* for *lock_ttl* seconds unless
        the entry is fresh or someone holds it (stampede protection, no extra round trip).
        """
        ...

    def observe(self) -> Snapshot:
        """Report the current epoch and write sequence (creating the epoch if absent)."""
        ...

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
        """Store *payload* unless a tag moved after *seq*, is marked, or the epoch changed.

        Whatever the outcome, drop the compute lock of *key* if *lock_token* holds it.
        """
        ...

    def begin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        """Mark *tags* as being written by *writer* for at most *lease* seconds.

        With *bump*, also give them new versions now (strict mode: entries stored before the
        write are stale even if the final ``end_write`` is never delivered).
        """
        ...

    def end_write(self, tags: Sequence[str], writer: str) -> int:
        """Give *tags* a new version (one new write sequence) and drop *writer*'s marks."""
        ...

    def release(self, tags: Sequence[str], writer: str) -> None:
        """Drop *writer*'s marks on *tags* without changing versions (rollback)."""
        ...

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        """Take the lock *name* for *ttl* seconds unless someone holds it."""
        ...

    def unlock(self, name: str, token: str) -> None:
        """Drop the lock *name* if *token* still holds it."""
        ...

    def locked(self, name: str) -> bool:
        """Whether someone holds the lock *name*."""
        ...

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete entries; return how many existed."""
        ...

    def clear(self) -> None:
        """Remove every entry and the version state of this backend's prefix, nothing else."""
        ...

    def key_count(self) -> int:
        """Return the number of entries stored under this backend's prefix."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable unless the store answers."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class Backend(SyncBackend, Protocol):
    """The narrow interface every store implements, sync and async twins alike."""

    async def afetch(
        self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0
    ) -> Fetched: ...
    async def aobserve(self) -> Snapshot: ...
    async def astore(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None = None,
    ) -> StoreOutcome: ...
    async def abegin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None: ...
    async def aend_write(self, tags: Sequence[str], writer: str) -> int: ...
    async def arelease(self, tags: Sequence[str], writer: str) -> None: ...
    async def aacquire(self, name: str, token: str, ttl: float) -> bool: ...
    async def aunlock(self, name: str, token: str) -> None: ...
    async def alocked(self, name: str) -> bool: ...
    async def adelete_many(self, keys: Sequence[str]) -> int: ...
    async def aclear(self) -> None: ...
    async def akey_count(self) -> int: ...
    async def aping(self) -> None: ...
    async def aclose(self) -> None: ...


class NonBlockingTwins:
    """The async twins of a store whose calls never block: each one calls its sync method.

    A mixin for :class:`SyncBackend` implementations (the memory backend); awaiting adds no
    thread hop, the sync call runs on the event loop as it is quick and takes no I/O.

    Added in 0.x.
    """

    __slots__ = ()

    async def afetch(
        self: SyncBackend, key: str, lock_token: str | None = None, lock_ttl: float = 0.0
    ) -> Fetched:
        return self.fetch(key, lock_token, lock_ttl)

    async def aobserve(self: SyncBackend) -> Snapshot:
        return self.observe()

    async def astore(
        self: SyncBackend,
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
        self: SyncBackend, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        self.begin_write(tags, writer, lease, bump)

    async def aend_write(self: SyncBackend, tags: Sequence[str], writer: str) -> int:
        return self.end_write(tags, writer)

    async def arelease(self: SyncBackend, tags: Sequence[str], writer: str) -> None:
        self.release(tags, writer)

    async def aacquire(self: SyncBackend, name: str, token: str, ttl: float) -> bool:
        return self.acquire(name, token, ttl)

    async def aunlock(self: SyncBackend, name: str, token: str) -> None:
        self.unlock(name, token)

    async def alocked(self: SyncBackend, name: str) -> bool:
        return self.locked(name)

    async def adelete_many(self: SyncBackend, keys: Sequence[str]) -> int:
        return self.delete_many(keys)

    async def aclear(self: SyncBackend) -> None:
        self.clear()

    async def akey_count(self: SyncBackend) -> int:
        return self.key_count()

    async def aping(self: SyncBackend) -> None:
        self.ping()

    async def aclose(self: SyncBackend) -> None:
        self.close()
