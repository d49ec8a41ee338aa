"""Every cache operation, written once as a flow (sans-IO).

A flow is a generator taking a :class:`~yokedcache_sa.state.CacheState` and arguments; it
yields ``(op, args)`` for each backend operation (:mod:`yokedcache_sa.ops`) and
receives the result, or the op's :class:`~yokedcache_sa.errors.BackendError` raised at the
``yield``. What a failure means (a miss, a pending invalidation, an error for the caller) is
decided here, once, for the sync and the async API alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any, TypeVar

from . import codec
from .errors import BackendError, BackendUnavailable, InvalidationError
from .keys import DEFAULT_TTL, MISSING, TTL, new_token, normalize_key
from .ops import (
    ACQUIRE,
    BEGIN_WRITE,
    CLEAR,
    CLOSE,
    DELETE_MANY,
    END_WRITE,
    FETCH,
    KEY_COUNT,
    LOCKED,
    OBSERVE,
    PING,
    RELEASE,
    STORE,
    UNLOCK,
    Flow,
)
from .state import COMPUTE_LOCK_SECONDS, CacheState, ComputeLock, Lookup, debug_enabled
from .stats import CacheStats
from .tags import Snapshot, tag_id, tag_ids

C = TypeVar("C", bound=CacheState)

log = logging.getLogger("yokedcache_sa")

__all__ = [
    "begin_write",
    "clear",
    "connect",
    "delete",
    "disconnect",
    "end_write",
    "get",
    "health",
    "is_locked",
    "lookup",
    "observe",
    "release",
    "retry_pending",
    "set_value",
    "stats",
    "store",
    "try_lock",
    "unlock",
]


# -- reads -----------------------------------------------------------------------------------


def lookup(c: CacheState, key: str, horizon: int | None, lock: bool) -> Flow[Lookup]:
    """Read *key* (a store key); never fails: an unreachable store is a miss that must not
    be stored (``snapshot=None``)."""
    if c._pending.tags:
        yield from retry_pending(c)
    token = new_token() if lock else None
    t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        fetched = yield FETCH, (key, token, COMPUTE_LOCK_SECONDS)
    except BackendError as exc:
        return c.read_failed(exc)
    return c.looked_up(key, fetched, horizon, token, t0)


def get(c: CacheState, key: str, default: Any) -> Flow[Any]:
    """The fresh value at the user key *key*, or *default*."""
    look = yield from lookup(c, normalize_key(key), None, False)
    return default if look.value is MISSING else look.value


def observe(c: CacheState) -> Flow[Snapshot | None]:
    """The current epoch and write sequence, or None if the store is unreachable."""
    try:
        snap: Snapshot = yield OBSERVE, ()
    except BackendError as exc:
        c.unavailable(exc, "read")
        return None
    return snap


# -- stores ----------------------------------------------------------------------------------


def store(
    c: CacheState,
    key: str,
    value: object,
    tags: Iterable[str],
    snapshot: Snapshot,
    ttl: TTL,
    lock: ComputeLock | None,
) -> Flow[bool]:
    """Store *value* computed after *snapshot*; False if refused or the store is sick."""
    ids = tag_ids(tags)
    if c.blocked(ids):
        c.refused_pending(key, ids)
        return False
    payload = c._encode(key, value, ids, snapshot)
    token = lock.token if lock is not None and not lock.released else None
    t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        outcome = yield STORE, (key, payload, c.ttl(ttl), ids, snapshot.epoch, snapshot.seq, token)
    except BackendError as exc:
        c.unavailable(exc, "write")
        return False
    if lock is not None:
        lock.released = True  # the store script dropped it, whatever the outcome
    return c.stored(outcome, key, ids, t0)


def set_value(
    c: CacheState, key: str, value: object, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = ()
) -> Flow[bool]:
    """Observe, then store *value* under the user key *key*."""
    snap = yield from observe(c)
    if snap is None:
        codec.pack_value(value)  # still report unserializable values
        return False
    return (yield from store(c, normalize_key(key), value, tags, snap, ttl, None))


def delete(c: CacheState, key: str) -> Flow[bool]:
    """Delete the user key *key*; a sick store raises (BackendUnavailable)."""
    return bool((yield DELETE_MANY, ([normalize_key(key)],)))


def clear(c: CacheState) -> Flow[None]:
    yield CLEAR, ()


# -- two-phase writes ------------------------------------------------------------------------


def begin_write(c: CacheState, tags: Iterable[str], writer: str) -> Flow[None]:
    """Mark *tags* as being written; on failure they become pending (or, strict: raise)."""
    ids = tuple(map(tag_id, tags))
    cfg = c.config
    try:
        yield BEGIN_WRITE, (ids, writer, cfg.write_lease, cfg.strict_invalidation)
    except BackendError as exc:
        if cfg.strict_invalidation:
            c.unavailable(
                exc, "marking written tables", "strict_invalidation refuses commits meanwhile"
            )
            raise InvalidationError(
                f"strict_invalidation: could not mark {list(ids)} before COMMIT ({exc}); "
                "the transaction is not committed — retry when the cache answers, or turn "
                "strict_invalidation off to commit with a bounded staleness window"
            ) from exc
        c.unavailable(exc, "marking written tables")
        c.add_pending(ids, writer)


def end_write(c: CacheState, tags: Iterable[str], writer: str) -> Flow[None]:
    """Give *tags* new versions and drop *writer*'s marks; raise InvalidationError (and
    keep them pending) when not delivered."""
    ids = tuple(map(tag_id, tags))
    if not ids:
        return
    try:
        yield END_WRITE, (ids, writer)
    except BackendError as exc:
        c.unavailable(exc, "invalidation")
        c.add_pending(ids, writer)
        raise InvalidationError(
            f"invalidation of {list(ids)} not delivered ({exc}); those tags are bypassed in "
            "this process and retried until the cache answers"
        ) from exc
    except BaseException:
        # cancelled or interrupted after the COMMIT (the driver closes the flow): whether the
        # bump arrived is unknown, so it is retried; a second bump costs nothing but a miss
        c.add_pending(ids, writer)
        raise
    c.invalidated(ids)


def release(c: CacheState, tags: Iterable[str], writer: str) -> Flow[None]:
    """Drop *writer*'s marks without new versions; never raises."""
    ids = tuple(map(tag_id, tags))
    if not ids:
        return
    try:
        yield RELEASE, (ids, writer)
    except BackendError as exc:
        c.unavailable(exc, "release")


def retry_pending(c: CacheState, everything: bool = False) -> Flow[int]:
    """Try to deliver the due (with *everything*: all) pending invalidations; return how
    many tags remain pending."""
    pending = c._pending
    if everything:
        pending.make_all_due()
    for writer, ids in pending.due().items():
        try:
            yield END_WRITE, (ids, writer)
        except BackendError:
            pending.failed(ids)
        else:
            c.delivered(ids, writer)
    return len(pending)


# -- compute locks ---------------------------------------------------------------------------


def try_lock(c: CacheState, key: str, ttl: float) -> Flow[tuple[bool, str | None]]:
    """(True, token) taken; (False, None) held by another; (True, None) store unreachable."""
    token = new_token()
    try:
        got = yield ACQUIRE, (key, token, ttl)
    except BackendError as exc:
        c.unavailable(exc, "lock")
        return True, None
    return (True, token) if got else (False, None)


def unlock(c: CacheState, key: str, token: str | None) -> Flow[None]:
    if token is None:
        return
    try:
        yield UNLOCK, (key, token)
    except BackendError as exc:
        c.unavailable(exc, "unlock")  # the lock expires by itself


def is_locked(c: CacheState, key: str) -> Flow[bool]:
    try:
        return bool((yield LOCKED, (key,)))
    except BackendError:
        return False


# -- lifecycle and observability -------------------------------------------------------------


def stats(c: CacheState) -> Flow[CacheStats]:
    """Counters and the number of entries (-1 if the store is down)."""
    try:
        count = yield KEY_COUNT, ()
        healthy = not c._breaker.is_open
    except BackendError:
        count, healthy = -1, False
    return c._counts.snapshot(count, c.backend.name, healthy, len(c._pending))


def health(c: CacheState) -> Flow[bool]:
    """True when the store answers and the circuit breaker is closed."""
    if c._breaker.is_open:
        return False
    try:
        yield PING, ()
    except BackendError:
        return False
    return True


def connect(c: C, /, required: bool = True) -> Flow[C]:
    """Ping the store, then mark *c* connected (the default cache of ``@cached``); with
    *required* False an unreachable store is logged and *c* starts anyway."""
    try:
        yield PING, ()
    except BackendUnavailable as exc:
        if required:
            raise
        c.unavailable(
            exc,
            "connect",
            "starting anyway (required=False): reads use the database until it answers",
        )
    else:
        c.connected = True
    c._on_connected()
    return c


def disconnect(c: CacheState) -> Flow[None]:
    """Close the store's connections (they reopen on next use)."""
    c.connected = False
    yield CLOSE, ()
