"""Stampede protection: concurrent misses of one key wait for a single computation.

Within a process, the first caller of a key leads and the others wait on an event; across
processes, the leader also takes a short lock in the cache store and callers of other
processes poll for the result while that lock lives. A waiter never trusts the leader's value
directly: it looks the key up again (under its own snapshot), so waiting never makes a result
staler than computing it would. Waits are bounded; after them a caller computes itself.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .cache import COMPUTE_LOCK_SECONDS, MISSING, ComputeLock, Lookup, YokedCache

__all__ = ["FlightIO", "Flights", "run_async", "run_sync", "sync_io"]

T = TypeVar("T")

WAIT_SECONDS = 10.0
"""Longest a caller waits for another's computation before computing itself."""
LOCK_SECONDS = COMPUTE_LOCK_SECONDS


class Flights:
    """In-process registry of keys being computed (threads and event loops)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}
        self._aevents: dict[tuple[int, str], asyncio.Event] = {}

    def claim(self, key: str) -> threading.Event | None:
        """None if the caller leads *key*; else the event the leader sets when done."""
        with self._lock:
            ev = self._events.get(key)
            if ev is None:
                self._events[key] = threading.Event()
            return ev

    def release(self, key: str) -> None:
        with self._lock:
            ev = self._events.pop(key, None)
        if ev is not None:
            ev.set()

    def aclaim(self, key: str) -> asyncio.Event | None:
        k = (id(asyncio.get_running_loop()), key)
        ev = self._aevents.get(k)
        if ev is None:
            self._aevents[k] = asyncio.Event()
        return ev

    def arelease(self, key: str) -> None:
        k = (id(asyncio.get_running_loop()), key)
        ev = self._aevents.pop(k, None)
        if ev is not None:
            ev.set()


FLIGHTS = Flights()


class FlightIO(Protocol):
    """The blocking steps of a sync-style flight (threads, or a greenlet that may await)."""

    def claim(self, key: str) -> Any: ...
    def release(self, key: str) -> None: ...
    def wait(self, handle: Any, timeout: float) -> None: ...
    def sleep(self, seconds: float) -> None: ...
    def try_lock(self, cache: YokedCache, key: str) -> tuple[bool, str | None]: ...
    def unlock(self, cache: YokedCache, key: str, token: str | None) -> None: ...
    def is_locked(self, cache: YokedCache, key: str) -> bool: ...


@dataclass(frozen=True)
class _ThreadIO:
    def claim(self, key: str) -> Any:
        return FLIGHTS.claim(key)

    def release(self, key: str) -> None:
        FLIGHTS.release(key)

    def wait(self, handle: Any, timeout: float) -> None:
        handle.wait(timeout)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def try_lock(self, cache: YokedCache, key: str) -> tuple[bool, str | None]:
        return cache.try_lock_sync(key, COMPUTE_LOCK_SECONDS)

    def unlock(self, cache: YokedCache, key: str, token: str | None) -> None:
        cache.unlock_sync(key, token)

    def is_locked(self, cache: YokedCache, key: str) -> bool:
        return cache.is_locked_sync(key)


sync_io: FlightIO = _ThreadIO()


def run_sync(
    cache: YokedCache,
    key: str,
    relookup: Callable[[], Lookup],
    compute: Callable[[Lookup], T],
    on_hit: Callable[[Lookup], T],
    first: Lookup,
    io: FlightIO = sync_io,
) -> T:
    """Compute *key* once across concurrent callers; the others get it from the cache.

    *first* is the miss that started this, looked up with ``lock=True``: when it took the
    compute lock the caller computes at once (and *compute* hands the lock to ``store``,
    which drops it); when another caller holds it, this one waits for that result.
    """
    if first.lock is not None:  # the lookup took the lock: compute, whoever else waits
        mine = io.claim(key) is None
        try:
            return compute(first)
        finally:
            if not first.lock.released:
                io.unlock(cache, key, first.lock.token)
            if mine:
                io.release(key)
    handle = io.claim(key)
    if handle is not None:  # another caller in this process computes it
        io.wait(handle, WAIT_SECONDS)
        look = relookup()
        return on_hit(look) if look.value is not MISSING else compute(look)
    try:
        busy = first.lock_busy
        if not busy and first.snapshot is not None:
            got, token = io.try_lock(cache, key)  # the lookup could not ask (fresh there)
            if got:
                held = first._replace(lock=ComputeLock(token)) if token else first
                try:
                    return compute(held)
                finally:
                    if held.lock is not None and not held.lock.released:
                        io.unlock(cache, key, held.lock.token)
            busy = True
        look = first
        if busy:  # another process computes it: poll until its result or its lock is gone
            deadline = time.monotonic() + WAIT_SECONDS
            delay = 0.005
            while time.monotonic() < deadline:
                io.sleep(delay)
                delay = min(delay * 2, 0.1)
                look = relookup()
                if look.value is not MISSING:
                    return on_hit(look)
                if not io.is_locked(cache, key):
                    look = relookup()  # the leader may have stored and unlocked since
                    if look.value is not MISSING:
                        return on_hit(look)
                    break
        return compute(look)
    finally:
        io.release(key)


async def run_async(
    cache: YokedCache,
    key: str,
    relookup: Callable[[], Awaitable[Lookup]],
    compute: Callable[[Lookup], Awaitable[T]],
    on_hit: Callable[[Lookup], T],
    first: Lookup,
) -> T:
    """Async twin of :func:`run_sync` for coroutine callers."""
    if first.lock is not None:
        mine = FLIGHTS.aclaim(key) is None
        try:
            return await compute(first)
        finally:
            if not first.lock.released:
                await cache.unlock(key, first.lock.token)
            if mine:
                FLIGHTS.arelease(key)
    ev = FLIGHTS.aclaim(key)
    if ev is not None:
        try:
            await asyncio.wait_for(ev.wait(), WAIT_SECONDS)
        except TimeoutError:
            pass
        look = await relookup()
        return on_hit(look) if look.value is not MISSING else await compute(look)
    try:
        busy = first.lock_busy
        if not busy and first.snapshot is not None:
            got, token = await cache.try_lock(key, COMPUTE_LOCK_SECONDS)
            if got:
                held = first._replace(lock=ComputeLock(token)) if token else first
                try:
                    return await compute(held)
                finally:
                    if held.lock is not None and not held.lock.released:
                        await cache.unlock(key, held.lock.token)
            busy = True
        look = first
        if busy:
            deadline = time.monotonic() + WAIT_SECONDS
            delay = 0.005
            while time.monotonic() < deadline:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.1)
                look = await relookup()
                if look.value is not MISSING:
                    return on_hit(look)
                if not await cache.is_locked(key):
                    look = await relookup()  # the leader may have stored and unlocked since
                    if look.value is not MISSING:
                        return on_hit(look)
                    break
        return await compute(look)
    finally:
        FLIGHTS.arelease(key)
