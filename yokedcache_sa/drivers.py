"""The two drivers: the only code that calls a backend.

Every cache operation is written once, as a *flow* (:mod:`yokedcache_sa.flows`): a generator
that yields ``(op, args)`` — a backend operation — and receives its result, or has its
failure thrown in at the ``yield``. :func:`drive_sync` runs a flow against the backend's
sync methods, :func:`drive_async` against its async twins. Both do the same three things
around each call, and nothing else:

- consult the circuit breaker before an op whose :attr:`Op.guarded` is set (a refusal is
  thrown into the flow as :class:`~yokedcache_sa.breaker.BreakerOpen`);
- map errors: a :class:`~yokedcache_sa.errors.BackendError` passes as is, an ``OSError``
  leaking from a backend becomes :class:`~yokedcache_sa.errors.BackendUnavailable`;
- record the outcome in the breaker for an op whose :attr:`Op.counted` is set.

Policy (what a failure means: a miss, a pending invalidation, an error) stays in the flow.

One hand-written fast path exists, :func:`lookup_sync`: the sync lookup with nothing unusual
afoot (no redirect, no pending invalidation, a breaker that has seen no failure) calls the
backend's ``fetch`` directly, because driving a generator costs about as much as the rest
of a memory-backend hit. It uses the same pure steps as the lookup flow
(``looked_up``/``read_failed``) and the same error mapping; anything else goes to the flow.
Flows of non-backend steps (waits, user code) run with :mod:`yokedcache_sa.steps`.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypeVar, cast

from .errors import BackendError, BackendUnavailable
from .keys import new_token
from .state import COMPUTE_LOCK_SECONDS, CacheState, Lookup

__all__ = [
    "ACQUIRE",
    "BEGIN_WRITE",
    "CLEAR",
    "CLOSE",
    "DELETE_MANY",
    "END_WRITE",
    "FETCH",
    "KEY_COUNT",
    "LOCKED",
    "OBSERVE",
    "PING",
    "RELEASE",
    "STORE",
    "UNLOCK",
    "Flow",
    "Op",
    "drive_async",
    "drive_sync",
    "lookup_sync",
]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound=CacheState)


class Op(NamedTuple):
    """A backend operation: its sync and async method names and its breaker policy."""

    name: str
    """The sync method of :class:`~yokedcache_sa.backends.base.Backend` (and the op's name)."""
    async_name: str
    guarded: bool
    """Refused while the breaker is open."""
    counted: bool
    """Its success closes the breaker, its store failure counts toward opening it."""


FETCH = Op("fetch", "afetch", True, True)
OBSERVE = Op("observe", "aobserve", True, True)
STORE = Op("store", "astore", True, True)
BEGIN_WRITE = Op("begin_write", "abegin_write", True, True)
END_WRITE = Op("end_write", "aend_write", True, True)
RELEASE = Op("release", "arelease", True, True)
ACQUIRE = Op("acquire", "aacquire", True, True)
UNLOCK = Op("unlock", "aunlock", False, True)  # always tried: a held lock delays others
LOCKED = Op("locked", "alocked", False, False)
DELETE_MANY = Op("delete_many", "adelete_many", False, False)
CLEAR = Op("clear", "aclear", False, False)
KEY_COUNT = Op("key_count", "akey_count", False, False)
PING = Op("ping", "aping", False, False)
CLOSE = Op("close", "aclose", False, False)

Flow = Generator[tuple[Op, tuple[Any, ...]], Any, T]
"""A cache operation: yields ``(op, args)``, receives the op's result, returns T."""


def _failed(cache: CacheState, op: Op, exc: BaseException) -> BackendError:
    err = (
        exc
        if isinstance(exc, BackendError)
        else BackendUnavailable(f"the cache store failed {op.name}: {exc}")
    )
    if op.counted and cache.is_store_failure(err):
        cache._breaker.failure()
    if err is not exc:
        err.__cause__ = exc
    return err


def drive_sync(
    flow_fn: Callable[Concatenate[C, P], Flow[T]],
    cache: C,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the flow ``flow_fn(cache, *args)`` against the sync methods of the backend."""
    while cache._redirect is not None:
        cache = cast(C, cache._redirect)
    flow = flow_fn(cache, *args, **kwargs)
    backend = cache.backend
    breaker = cache._breaker
    try:
        op, op_args = next(flow)
        while True:
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = getattr(backend, op.name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_failed(cache, op, exc))
                continue
            if op.counted and breaker.failures:
                breaker.success()
            op, op_args = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T


async def drive_async(
    flow_fn: Callable[Concatenate[C, P], Flow[T]],
    cache: C,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the flow ``flow_fn(cache, *args)`` against the async methods of the backend."""
    while cache._redirect is not None:
        cache = cast(C, cache._redirect)
    flow = flow_fn(cache, *args, **kwargs)
    backend = cache.backend
    breaker = cache._breaker
    try:
        op, op_args = next(flow)
        while True:
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = await getattr(backend, op.async_name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_failed(cache, op, exc))
                continue
            if op.counted and breaker.failures:
                breaker.success()
            op, op_args = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T


def lookup_sync(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    """The lookup flow (:func:`yokedcache_sa.flows.lookup`) run by the sync driver; its
    common case is hand-inlined (the documented fast path of the hit)."""
    if cache._redirect is not None or cache._pending.tags or cache._breaker.failures:
        from .flows import lookup  # the flows import this module's Ops

        return drive_sync(lookup, cache, key, horizon, lock)
    token = new_token() if lock else None
    try:
        fetched = cache.backend.fetch(key, token, COMPUTE_LOCK_SECONDS)
    except (BackendError, OSError) as exc:
        return cache.read_failed(_failed(cache, FETCH, exc))
    return cache.looked_up(key, fetched, horizon, token)
