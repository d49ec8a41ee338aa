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

One hand-written fast path exists, :func:`lookup_sync` / :func:`lookup_async`: a lookup with
nothing unusual afoot (no redirect, no pending invalidation, a breaker that has seen no
failure) calls the backend's ``fetch`` / ``afetch`` directly, because driving a generator
costs about a third of a memory-backend hit (measured: 0.7us of 2.5us async, 1us of 2.3us
sync). It uses the same pure steps as the lookup flow (``looked_up``/``read_failed``) and
the same error mapping; anything else goes to the flow.
Flows of non-backend steps (waits, user code) run with :mod:`yokedcache_sa.steps`.

Observability (:mod:`yokedcache_sa.observe`) hangs here too: while a cache has listeners or
a tracer (``cache._hooks.active``, the one check the unobserved paths pay), each entry point
takes an observed twin that times every backend op, reports failures by op, emits the
lookup's hit or miss, and opens a span around the lookup and the traced flows (store,
commit-time marking and invalidation).
"""

from __future__ import annotations

import time
from asyncio import _get_running_loop
from collections.abc import Callable
from typing import Any, Concatenate, Final, ParamSpec, TypeVar, cast

from . import flows
from .errors import BackendError, BackendUnavailable
from .keys import new_token, normalize_key
from .logs import key_digest, loop_check
from .observe import BackendFailed, Hit, Hooks, Miss, OperationTimed, tables_in
from .ops import FETCH, Flow, Op
from .state import COMPUTE_LOCK_SECONDS, CacheState, Lookup, debug_enabled

__all__ = ["drive_async", "drive_sync", "lookup_async", "lookup_sync"]

T = TypeVar("T")
P = ParamSpec("P")
C = TypeVar("C", bound=CacheState)


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
    if cache._hooks.active:
        cache._hooks.emit(
            BackendFailed(op.name, type(err).__name__, not cache.is_store_failure(err))
        )
    return err


def drive_sync(
    flow_fn: Callable[Concatenate[C, P], Flow[T]],
    cache: C,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the flow ``flow_fn(cache, *args)`` against the sync methods of the backend."""
    cache, flow, obs = _started(flow_fn, cache, args, kwargs)
    backend, breaker = cache.backend, cache._breaker
    try:
        op, op_args = next(flow)
        while True:
            t0 = obs.clock(op) if obs is not None else 0.0
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = getattr(backend, op.name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_op_failed(cache, op, exc, obs, t0))
                continue
            # the op answered: time it (when timed); a counted success closes the breaker
            if t0 and obs is not None:
                obs.timed(op, t0, True)
            if op.counted and breaker.failures:
                breaker.success()
            op, op_args = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value  # the flow's return value
        if obs is not None:
            obs.end(value, None)
        return value
    except BaseException as exc:
        _aborted(obs, exc)
        raise
    finally:
        flow.close()  # interrupted (a cancelled task): the flow's cleanup runs now


async def drive_async(
    flow_fn: Callable[Concatenate[C, P], Flow[T]],
    cache: C,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run the flow ``flow_fn(cache, *args)`` against the async methods of the backend."""
    cache, flow, obs = _started(flow_fn, cache, args, kwargs)
    backend, breaker = cache.backend, cache._breaker
    try:
        op, op_args = next(flow)
        while True:
            t0 = obs.clock(op) if obs is not None else 0.0
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = await getattr(backend, op.async_name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_op_failed(cache, op, exc, obs, t0))
                continue
            # the op answered: time it (when timed); a counted success closes the breaker
            if t0 and obs is not None:
                obs.timed(op, t0, True)
            if op.counted and breaker.failures:
                breaker.success()
            op, op_args = flow.send(result)
    except StopIteration as stop:
        value: T = stop.value  # the flow's return value
        if obs is not None:
            obs.end(value, None)
        return value
    except BaseException as exc:
        _aborted(obs, exc)
        raise
    finally:
        flow.close()  # interrupted (a cancelled task): the flow's cleanup runs now


def lookup_sync(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    """The lookup flow (:func:`yokedcache_sa.flows.lookup`) run by the sync driver; its
    common case is hand-inlined (the documented fast path of the hit)."""
    if loop_check.armed and _get_running_loop() is not None:
        loop_check.fire("cache read")
    while cache._redirect is not None:
        cache = cache._redirect
    if cache._hooks.active or cache._pending.tags or cache._breaker.failures:
        cache, obs, token, t0 = _lookup_started(cache, key, lock)
    else:  # the common case, inlined
        obs, token = None, new_token() if lock else None
        t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        if token is _SLOW:
            look = drive_sync(flows.lookup, cache, key, horizon, lock)
        else:
            try:
                fetched = cache.backend.fetch(key, token, COMPUTE_LOCK_SECONDS)
            except (BackendError, OSError) as exc:
                look = cache.read_failed(_failed(cache, FETCH, exc))
            else:
                look = cache.looked_up(key, fetched, horizon, token, t0)
    except BaseException:
        if obs is not None:
            obs.end()
        raise
    return look if obs is None else obs.looked(look)


async def lookup_async(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    """The lookup flow run by the async driver; its common case is hand-inlined."""
    while cache._redirect is not None:
        cache = cache._redirect
    if cache._hooks.active or cache._pending.tags or cache._breaker.failures:
        cache, obs, token, t0 = _lookup_started(cache, key, lock)
    else:  # the common case, inlined
        obs, token = None, new_token() if lock else None
        t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        if token is _SLOW:
            look = await drive_async(flows.lookup, cache, key, horizon, lock)
        else:
            try:
                fetched = await cache.backend.afetch(key, token, COMPUTE_LOCK_SECONDS)
            except (BackendError, OSError) as exc:
                look = cache.read_failed(_failed(cache, FETCH, exc))
            else:
                look = cache.looked_up(key, fetched, horizon, token, t0)
    except BaseException:
        if obs is not None:
            obs.end()
        raise
    return look if obs is None else obs.looked(look)


_SLOW: Final = "slow"
"""The token of :func:`_lookup_started` that sends a lookup to the flow."""


def _lookup_started(
    cache: CacheState, key: str, lock: bool
) -> tuple[Any, _LookupObserved | None, str | None, float]:
    """The cache a lookup goes to, its observation (while observed), and the fast path's
    lock token and DEBUG start time — or the token :data:`_SLOW` when something unusual is
    afoot (a pending invalidation, a breaker that has seen a failure)."""
    while cache._redirect is not None:
        cache = cache._redirect
    obs = _LookupObserved(cache, key) if cache._hooks.active else None
    if cache._pending.tags or cache._breaker.failures:
        return cache, obs, _SLOW, 0.0
    return (
        cache,
        obs,
        new_token() if lock else None,
        time.perf_counter() if debug_enabled() else 0.0,
    )


def _started(
    flow_fn: Callable[..., Flow[T]], cache: C, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[C, Flow[T], _FlowObserved | None]:
    """The cache a flow runs against (a redirect followed), the flow, its observation."""
    while cache._redirect is not None:
        cache = cast(C, cache._redirect)
    flow = flow_fn(cache, *args, **kwargs)
    hooks = cache._hooks
    return cache, flow, _FlowObserved(hooks, flow_fn.__name__, args) if hooks.active else None


def _op_failed(
    cache: CacheState, op: Op, exc: Exception, obs: _FlowObserved | None, t0: float
) -> BackendError:
    """After a backend op raised: time it (when timed), count it, map it for the flow."""
    if t0 and obs is not None:
        obs.timed(op, t0, False)
    return _failed(cache, op, exc)


def _aborted(obs: _FlowObserved | None, exc: BaseException) -> None:
    if obs is not None:
        obs.end(None, exc)


# -- observation (while a cache has listeners or a tracer) --------------------------------

_SPANS: dict[str, str] = {
    "store": "yokedcache.store",
    "set_value": "yokedcache.store",
    "begin_write": "yokedcache.mark_written",
    "end_write": "yokedcache.invalidate",
    "retry_pending": "yokedcache.invalidate_pending",
}
"""The flows that get a span (the lookup has its own), by flow name."""


def _flow_attributes(name: str, args: tuple[object, ...]) -> dict[str, object]:
    attrs: dict[str, object] = {}
    if name in ("store", "set_value") and args and isinstance(args[0], str):
        key = args[0] if name == "store" else normalize_key(args[0])
        attrs["yokedcache.key_digest"] = key_digest(key)
        at = 2 if name == "store" else 3
        tags = args[at] if len(args) > at else ()
    elif name in ("begin_write", "end_write") and args:
        tags = args[0]
    else:
        tags = ()
    if isinstance(tags, (list, tuple, set, frozenset)):
        attrs["yokedcache.tables"] = list(tables_in(str(t) for t in tags))
    return attrs


class _FlowObserved:
    """One observed flow: each backend op timed (a fetch is timed by the lookup's Hit or
    Miss instead), and the flow inside its span when it is one of :data:`_SPANS`."""

    __slots__ = ("_cm", "_span", "emit")

    def __init__(self, hooks: Hooks, name: str, args: tuple[object, ...]) -> None:
        self.emit = hooks.emit
        span_name = _SPANS.get(name)
        self._cm: Any = None
        self._span: Any = None
        if hooks.tracer is not None and span_name is not None:
            attributes = _flow_attributes(name, args)
            self._cm = hooks.tracer.start_as_current_span(span_name, attributes=attributes)
            self._span = self._cm.__enter__()

    @staticmethod
    def clock(op: Op) -> float:
        """The start time of *op*, or 0.0 for an op that is not timed here."""
        return 0.0 if op.name == "fetch" else time.perf_counter()

    def timed(self, op: Op, t0: float, ok: bool) -> None:
        self.emit(OperationTimed(op.name, time.perf_counter() - t0, ok))

    def end(self, result: object, exc: BaseException | None) -> None:
        """Close the span: the flow returned *result*, or raised *exc*."""
        if self._cm is None:
            return
        if exc is None:
            if isinstance(result, bool):
                self._span.set_attribute("yokedcache.stored", result)
            self._cm.__exit__(None, None, None)
        else:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)


class _LookupObserved:
    """One observed lookup: timed, reported as a Hit or a Miss, inside a lookup span (with
    ``hit_spans=False`` only a miss gets one, made when the lookup ends)."""

    __slots__ = ("cache", "key", "span", "started", "t0", "tracer")

    def __init__(self, cache: CacheState, key: str) -> None:
        self.cache = cache
        self.key = key
        tracer = self.tracer = cache._hooks.tracer
        self.span: Any = None
        self.started = 0
        if tracer is not None:
            self.started = time.time_ns()
            if getattr(tracer, "hit_spans", True):
                self.span = tracer.start_span("yokedcache.lookup", None)
        self.t0 = time.perf_counter()

    def looked(self, look: Lookup) -> Lookup:
        """Emit the lookup's Hit or Miss, describe it on its span, end the span."""
        try:
            seconds = time.perf_counter() - self.t0
            cache, span = self.cache, self.span
            digest = key_digest(self.key)
            tables = tables_in(look.tags)
            event = Hit(digest, tables, seconds) if look.hit else Miss(digest, tables, seconds)
            cache._hooks.emit(event)
            if span is None and self.tracer is not None and not look.hit:
                span = self.span = self.tracer.start_span("yokedcache.lookup", None, self.started)
            if span is not None:
                attrs: dict[str, object] = {
                    "yokedcache.key_digest": digest,
                    "yokedcache.tables": tables,
                    "yokedcache.hit": look.hit,
                }
                if look.snapshot is None:
                    broken = cache._breaker.is_open
                    attrs["yokedcache.bypass_reason"] = "breaker_open" if broken else "unavailable"
                span.set_attributes(attrs)
        finally:
            self.end()
        return look

    def end(self) -> None:
        if self.span is not None:
            self.span.end()
            self.span = None
