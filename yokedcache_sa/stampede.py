"""Stampede protection: concurrent misses of one key wait for a single computation.

Within a process, the first caller of a key leads and the others wait on an event; across
processes, the leader also takes a short lock in the cache store and callers of other
processes poll for the result while that lock lives. A waiter never trusts the leader's value
directly: it looks the key up again (under its own snapshot), so waiting never makes a result
staler than computing it would. Waits are bounded; after them a caller computes itself.

The state machine is written once, as the flow :func:`flight_flow` of steps (claim, wait,
look up again, compute, lock ...); :func:`run_sync` performs its steps with a
:class:`FlightIO` (threads, or a greenlet that may await), :func:`run_async` with asyncio.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from .cache import COMPUTE_LOCK_SECONDS, MISSING, ComputeLock, Lookup, YokedCache
from .steps import run_steps_async, run_steps_sync

__all__ = ["FlightIO", "Flights", "flight_flow", "run_async", "run_sync", "sync_io"]

T = TypeVar("T")

WAIT_SECONDS = 10.0
"""Longest a caller waits for another's computation before computing itself."""
LOCK_SECONDS = COMPUTE_LOCK_SECONDS


class Flights:
    """In-process registry of keys being computed (threads and event loops).

    Twins follow the scheme below the public API: ``claim`` for threads, ``aclaim`` for the
    running event loop.
    """

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

# The steps of a flight: a name and its arguments. "compute" and "relookup" are the
# caller's; the others are FlightIO's (the cache-bound ones get the cache first).
Step = tuple[Any, ...]
FlightFlow = Generator[Step, Any, T]


def flight_flow(key: str, first: Lookup, on_hit: Callable[[Lookup], T]) -> FlightFlow[T]:
    """The stampede state machine for *key*, started by the miss *first* (looked up with
    ``lock=True``): when that lookup took the compute lock the caller computes at once (and
    compute hands the lock to ``store``, which drops it); when another caller holds it, this
    one waits for that result."""
    if first.lock is not None:  # the lookup took the lock: compute, whoever else waits
        mine = (yield "claim", key) is None
        try:
            return (yield "compute", first)  # type: ignore[no-any-return]
        finally:
            if not first.lock.released:
                yield "unlock", key, first.lock.token
            if mine:
                yield "release", key
    handle = yield "claim", key
    if handle is not None:  # another caller in this process computes it
        yield "wait", handle, WAIT_SECONDS
        look = yield ("relookup",)
        return on_hit(look) if look.value is not MISSING else (yield "compute", look)
    try:
        busy = first.lock_busy
        if not busy and first.snapshot is not None:
            got, token = yield "try_lock", key  # the lookup could not ask (fresh there)
            if got:
                held = first._replace(lock=ComputeLock(token)) if token else first
                try:
                    return (yield "compute", held)  # type: ignore[no-any-return]
                finally:
                    if held.lock is not None and not held.lock.released:
                        yield "unlock", key, held.lock.token
            busy = True
        look = first
        if busy:  # another process computes it: poll until its result or its lock is gone
            deadline = time.monotonic() + WAIT_SECONDS
            delay = 0.005
            while time.monotonic() < deadline:
                yield "sleep", delay
                delay = min(delay * 2, 0.1)
                look = yield ("relookup",)
                if look.value is not MISSING:
                    return on_hit(look)
                if not (yield "is_locked", key):
                    look = yield ("relookup",)  # the leader may have stored and unlocked since
                    if look.value is not MISSING:
                        return on_hit(look)
                    break
        return (yield "compute", look)  # type: ignore[no-any-return]
    finally:
        yield "release", key


_CACHE_STEPS = frozenset({"try_lock", "unlock", "is_locked"})


def run_sync(
    cache: YokedCache,
    key: str,
    relookup: Callable[[], Lookup],
    compute: Callable[[Lookup], T],
    on_hit: Callable[[Lookup], T],
    first: Lookup,
    io: FlightIO = sync_io,
) -> T:
    """Compute *key* once across concurrent callers; the others get it from the cache."""

    def perform(step: Step) -> Any:
        kind = step[0]
        if kind == "compute":
            return compute(step[1])
        if kind == "relookup":
            return relookup()
        if kind in _CACHE_STEPS:
            return getattr(io, kind)(cache, *step[1:])
        return getattr(io, kind)(*step[1:])

    return run_steps_sync(flight_flow(key, first, on_hit), perform)


class _AsyncIO:
    """FlightIO's steps for a coroutine caller (asyncio events, awaited cache calls)."""

    def __init__(self, cache: YokedCache) -> None:
        self.cache = cache

    async def claim(self, key: str) -> Any:
        return FLIGHTS.aclaim(key)

    async def release(self, key: str) -> None:
        FLIGHTS.arelease(key)

    async def wait(self, handle: asyncio.Event, timeout: float) -> None:
        try:
            await asyncio.wait_for(handle.wait(), timeout)
        except TimeoutError:
            pass

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def try_lock(self, key: str) -> tuple[bool, str | None]:
        return await self.cache.try_lock(key, COMPUTE_LOCK_SECONDS)

    async def unlock(self, key: str, token: str | None) -> None:
        await self.cache.unlock(key, token)

    async def is_locked(self, key: str) -> bool:
        return await self.cache.is_locked(key)


async def run_async(
    cache: YokedCache,
    key: str,
    relookup: Callable[[], Awaitable[Lookup]],
    compute: Callable[[Lookup], Awaitable[T]],
    on_hit: Callable[[Lookup], T],
    first: Lookup,
) -> T:
    """Async twin of :func:`run_sync` for coroutine callers."""
    io = _AsyncIO(cache)

    def perform(step: Step) -> Awaitable[Any]:
        kind = step[0]
        if kind == "compute":
            return compute(step[1])
        if kind == "relookup":
            return relookup()
        return getattr(io, kind)(*step[1:])  # type: ignore[no-any-return]

    return await run_steps_async(flight_flow(key, first, on_hit), perform)
