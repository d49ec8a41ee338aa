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
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

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
    while cache._redirect is not None:
        cache = cast(C, cache._redirect)
    flow = flow_fn(cache, *args, **kwargs)
    if cache._hooks.active:
        return _drive_observed_sync(flow, cache, flow_fn.__name__, args)
    return _run_sync(flow, cache, False)


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
    if cache._hooks.active:
        return await _drive_observed_async(flow, cache, flow_fn.__name__, args)
    return await _run_async(flow, cache, False)


def _plain(cache: CacheState) -> bool:
    """Nothing for the lookup flow to do but fetch: the fast path's condition."""
    return cache._redirect is None and not cache._pending.tags and not cache._breaker.failures


def lookup_sync(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    """The lookup flow (:func:`yokedcache_sa.flows.lookup`) run by the sync driver; its
    common case is hand-inlined (the documented fast path of the hit)."""
    if loop_check.armed and _get_running_loop() is not None:
        loop_check.fire("cache read")
    if cache._hooks.active:
        return _lookup_observed_sync(cache, key, horizon, lock)
    return _fetch_sync(cache, key, horizon, lock)


def _fetch_sync(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    if not _plain(cache):
        return drive_sync(flows.lookup, cache, key, horizon, lock)
    token = new_token() if lock else None
    t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        fetched = cache.backend.fetch(key, token, COMPUTE_LOCK_SECONDS)
    except (BackendError, OSError) as exc:
        return cache.read_failed(_failed(cache, FETCH, exc))
    return cache.looked_up(key, fetched, horizon, token, t0)


async def lookup_async(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    """The lookup flow run by the async driver; its common case is hand-inlined."""
    if cache._hooks.active:
        return await _lookup_observed_async(cache, key, horizon, lock)
    return await _fetch_async(cache, key, horizon, lock)


async def _fetch_async(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    if not _plain(cache):
        return await drive_async(flows.lookup, cache, key, horizon, lock)
    token = new_token() if lock else None
    t0 = time.perf_counter() if debug_enabled() else 0.0
    try:
        fetched = await cache.backend.afetch(key, token, COMPUTE_LOCK_SECONDS)
    except (BackendError, OSError) as exc:
        return cache.read_failed(_failed(cache, FETCH, exc))
    return cache.looked_up(key, fetched, horizon, token, t0)


# -- the observed twins (taken while the cache has listeners or a tracer) --------------------

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


def _span(hooks: Hooks, name: str, args: tuple[object, ...]) -> Any:
    span_name = _SPANS.get(name)
    if hooks.tracer is None or span_name is None:
        return None
    return hooks.tracer.start_as_current_span(span_name, attributes=_flow_attributes(name, args))


def _drive_observed_sync(
    flow: Flow[T], cache: CacheState, name: str, args: tuple[object, ...]
) -> T:
    cm = _span(cache._hooks, name, args)
    if cm is None:
        return _run_sync(flow, cache, True)
    with cm as span:
        return _described(span, _run_sync(flow, cache, True))


async def _drive_observed_async(
    flow: Flow[T], cache: CacheState, name: str, args: tuple[object, ...]
) -> T:
    cm = _span(cache._hooks, name, args)
    if cm is None:
        return await _run_async(flow, cache, True)
    with cm as span:
        return _described(span, await _run_async(flow, cache, True))


def _described(span: Any, result: T) -> T:
    """*result*, noted on the flow's span (a store's outcome)."""
    if isinstance(result, bool):
        span.set_attribute("yokedcache.stored", result)
    return result


def _op_failed(
    cache: CacheState, op: Op, exc: Exception, emit: Callable[[Any], None] | None, t0: float
) -> BackendError:
    """After a backend op raised: time it (when timed), count it, map it for the flow."""
    if t0 and emit is not None:
        emit(OperationTimed(op.name, time.perf_counter() - t0, False))
    return _failed(cache, op, exc)


def _op_done(op: Op, breaker: Any, emit: Callable[[Any], None] | None, t0: float) -> None:
    """After a backend op answered: time it (when timed); a counted success closes the
    breaker."""
    if t0 and emit is not None:
        emit(OperationTimed(op.name, time.perf_counter() - t0, True))
    if op.counted and breaker.failures:
        breaker.success()


def _run_sync(flow: Flow[T], cache: CacheState, timed: bool) -> T:
    """Drive *flow* to its end against the backend (*timed*: emit each op's duration)."""
    backend = cache.backend
    breaker = cache._breaker
    emit = cache._hooks.emit if timed else None
    clock = time.perf_counter
    try:
        op, op_args = next(flow)
        while True:
            # a fetch is the lookup (timed by its Hit / Miss event) or a peek
            t0 = clock() if emit is not None and op.name != "fetch" else 0.0
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = getattr(backend, op.name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_op_failed(cache, op, exc, emit, t0))
                continue
            _op_done(op, breaker, emit, t0)
            op, op_args = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T
    finally:
        flow.close()  # interrupted (a cancelled task): the flow's cleanup runs now


async def _run_async(flow: Flow[T], cache: CacheState, timed: bool) -> T:
    """Drive *flow* to its end against the backend (*timed*: emit each op's duration)."""
    backend = cache.backend
    breaker = cache._breaker
    emit = cache._hooks.emit if timed else None
    clock = time.perf_counter
    try:
        op, op_args = next(flow)
        while True:
            # a fetch is the lookup (timed by its Hit / Miss event) or a peek
            t0 = clock() if emit is not None and op.name != "fetch" else 0.0
            try:
                if op.guarded and breaker.failures and not breaker.allow():
                    raise breaker.refusal()
                result = await getattr(backend, op.async_name)(*op_args)
            except (BackendError, OSError) as exc:
                op, op_args = flow.throw(_op_failed(cache, op, exc, emit, t0))
                continue
            _op_done(op, breaker, emit, t0)
            op, op_args = flow.send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]  # the flow's return value is T
    finally:
        flow.close()  # interrupted (a cancelled task): the flow's cleanup runs now


def _looked(
    cache: CacheState,
    key: str,
    look: Lookup,
    seconds: float,
    span: Any,
    tracer: Any,
    started: int,
) -> None:
    """Emit the lookup's Hit or Miss; describe it on its span (with ``hit_spans=False``,
    a miss gets its span now, started when the lookup did)."""
    digest = key_digest(key)
    tables = tables_in(look.tags)
    cache._hooks.emit(Hit(digest, tables, seconds) if look.hit else Miss(digest, tables, seconds))
    if span is None and tracer is not None and not look.hit:
        span = tracer.start_span("yokedcache.lookup", None, started)
        if span is not None:
            _looked_attributes(cache, span, digest, tables, look)
            span.end()
    elif span is not None:
        _looked_attributes(cache, span, digest, tables, look)


def _looked_attributes(
    cache: CacheState, span: Any, digest: str, tables: tuple[str, ...], look: Lookup
) -> None:
    attrs: dict[str, object] = {
        "yokedcache.key_digest": digest,
        "yokedcache.tables": tables,
        "yokedcache.hit": look.hit,
    }
    if look.snapshot is None:
        attrs["yokedcache.bypass_reason"] = _unread_reason(cache)
    span.set_attributes(attrs)


def _unread_reason(cache: CacheState) -> str:
    return "breaker_open" if cache._breaker.is_open else "unavailable"


def _lookup_span(tracer: Any) -> Any:
    """A started lookup span, or None (no tracer, no recording parent, hit_spans=False)."""
    if tracer is None or not getattr(tracer, "hit_spans", True):
        return None
    return tracer.start_span("yokedcache.lookup", None)


def _lookup_observed_sync(cache: CacheState, key: str, horizon: int | None, lock: bool) -> Lookup:
    while cache._redirect is not None:
        cache = cache._redirect
    tracer = cache._hooks.tracer
    span = _lookup_span(tracer)
    started = time.time_ns() if tracer is not None else 0
    t0 = time.perf_counter()
    try:
        look = _fetch_sync(cache, key, horizon, lock)
        _looked(cache, key, look, time.perf_counter() - t0, span, tracer, started)
        return look
    finally:
        if span is not None:
            span.end()


async def _lookup_observed_async(
    cache: CacheState, key: str, horizon: int | None, lock: bool
) -> Lookup:
    while cache._redirect is not None:
        cache = cache._redirect
    tracer = cache._hooks.tracer
    span = _lookup_span(tracer)
    started = time.time_ns() if tracer is not None else 0
    t0 = time.perf_counter()
    try:
        look = await _fetch_async(cache, key, horizon, lock)
        _looked(cache, key, look, time.perf_counter() - t0, span, tracer, started)
        return look
    finally:
        if span is not None:
            span.end()
