"""Look at one entry without serving, counting or storing anything: :func:`peek_sync`.

The operator's view of a key (used by ``explain`` and the CLI): does an entry exist, is it
fresh now, and if not, why not. Same freshness rule as a lookup (:func:`~.tags.is_fresh`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from . import codec
from .backends.base import Fetched
from .cache import YokedCache
from .drivers import drive_async, drive_sync
from .errors import BackendError, CorruptEntryError
from .ops import PEEK, Flow
from .tags import Snapshot, is_fresh

__all__ = ["EntryState", "peek", "peek_sync"]


@dataclass(frozen=True)
class EntryState:
    """What the store holds under one key, now.

    ``exists`` is None when the store could not be asked (``reason`` says why). ``fresh``:
    a lookup now would serve it (outside a snapshot-isolated transaction).

    Added in 0.x.
    """

    exists: bool | None
    fresh: bool
    reason: str
    tags: tuple[str, ...] = ()
    age_seconds: float | None = None
    size_bytes: int | None = None
    versions: Snapshot | None = None
    """The version state of its tags now (when it is fresh). Added in 0.x."""


def _judge(cache: YokedCache, key: str, fetched: Fetched, horizon: int | None) -> EntryState:
    payload = fetched.payload
    if payload is None:
        return EntryState(False, False, "no entry under this key")
    try:
        header = cache.entry_header(key, payload)
    except codec.KeyMismatch:
        return EntryState(True, False, "an entry stored for another key (ignored)")
    except CorruptEntryError as exc:
        return EntryState(True, False, f"an unreadable entry (ignored): {exc}")
    age = max(0.0, time.time() - header.created)
    size = len(payload)
    snap = fetched.snapshot

    def stale(why: str) -> EntryState:
        return EntryState(True, False, why, header.tags, age, size)

    if fetched.tags != header.tags:
        return stale("the stored tags disagree with the entry's header (ignored)")
    if cache.blocked(header.tags):
        return stale("an invalidation of one of its tags is pending in this process")
    if snap.marked:
        return stale("one of its tables/tags is being written right now")
    if header.epoch != snap.epoch:
        return stale("stored under an older version space (cleared or Redis restarted)")
    if snap.max_version > header.seq:
        return stale(
            f"stale: one of its tags was written after it was stored (tag version "
            f"{snap.max_version} > entry's {header.seq}); the next read recomputes it"
        )
    if not is_fresh(header.epoch, header.seq, snap, horizon):
        return stale("newer than this transaction's snapshot (served after it ends)")
    return EntryState(True, True, "fresh: a lookup now serves it", header.tags, age, size, snap)


def peek_flow(cache: YokedCache, key: str, horizon: int | None = None) -> Flow[EntryState]:
    """The flow of :func:`peek_sync` / :func:`peek`: one fetch, judged; never raises."""
    try:
        fetched = yield PEEK, (key,)
    except BackendError as exc:
        return EntryState(None, False, f"the store did not answer: {exc}")
    return _judge(cache, key, fetched, horizon)


def peek_sync(cache: YokedCache, key: str, horizon: int | None = None) -> EntryState:
    """Report the entry at *key* (a normalized key, as ``explain`` gives it). Never raises."""
    return drive_sync(peek_flow, cache, key, horizon)


async def peek(cache: YokedCache, key: str, horizon: int | None = None) -> EntryState:
    """Async twin of :func:`peek_sync`."""
    return await drive_async(peek_flow, cache, key, horizon)
