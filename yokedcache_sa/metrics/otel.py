"""OpenTelemetry metrics and spans of one cache, through ``opentelemetry-api``.

``instrument(cache)`` creates the instruments listed in docs/observability.md on a meter of
*meter_provider* (default: the global one) and, with ``tracing=True``, makes the cache open
spans (lookup, store, commit-time marking and invalidation; the ORM adds compute-on-miss)
as children of the current span, on a tracer of *tracer_provider* (default: the global one).
Without an SDK configured the API's no-op providers make all of it nearly free; without
``instrument`` the cache makes no span at all.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import Instrumentation, TableLabels, require

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from ..cache import YokedCache

__all__ = ["instrument"]

SCOPE = "yokedcache_sa"


def instrument(
    cache: YokedCache,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    tracing: bool = True,
    max_tables: int = 100,
) -> Instrumentation:
    """Export *cache*'s events as OpenTelemetry metrics (and spans, with *tracing*); at
    most *max_tables* distinct ``table`` attribute values (then ``_other``).

    Added in 0.x.
    """
    require("opentelemetry", "otel")
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation

    from .. import observe as ev

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter(SCOPE)
    lookups = meter.create_counter("yokedcache.lookups", "{lookup}", "Lookups by outcome.")
    table_lookups = meter.create_counter(
        "yokedcache.table_lookups", "{lookup}", "Lookups by table read and outcome."
    )
    lookup_time = meter.create_histogram(
        "yokedcache.lookup.duration", "s", "Lookup latency by outcome."
    )
    stores = meter.create_counter("yokedcache.stores", "{entry}", "Results stored.")
    refusals = meter.create_counter(
        "yokedcache.store_refusals", "{store}", "Stores the fence refused, by reason."
    )
    bypasses = meter.create_counter(
        "yokedcache.bypasses", "{read}", "Reads around the cache, by reason."
    )
    invalidations = meter.create_counter(
        "yokedcache.invalidations", "{invalidation}", "Invalidations delivered, by table."
    )
    errors = meter.create_counter(
        "yokedcache.backend_errors", "{error}", "Failed or refused backend operations."
    )
    op_time = meter.create_histogram(
        "yokedcache.operation.duration", "s", "Backend operation latency by operation."
    )
    shadow = meter.create_counter(
        "yokedcache.shadow_reads", "{read}", "Sampled shadow reads by outcome."
    )
    target = cache._target()
    state = {"breaker": 1 if target._breaker.is_open else 0, "pending": len(target._pending)}

    def observe_state(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(state[name])]

        return callback

    meter.create_observable_gauge(
        "yokedcache.breaker.open", [observe_state("breaker")], "1", "1 while the breaker is open."
    )
    meter.create_observable_gauge(
        "yokedcache.pending_invalidations",
        [observe_state("pending")],
        "{tag}",
        "Tags with an undelivered invalidation (this process).",
    )
    backend = target.backend
    if hasattr(backend, "entry_count"):
        ref = weakref.ref(backend)

        def memory(attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                b = ref()
                return [] if b is None else [Observation(getattr(b, attr))]

            return callback

        meter.create_observable_gauge(
            "yokedcache.memory.entries", [memory("entry_count")], "{entry}", "Memory entries."
        )
        meter.create_observable_gauge(
            "yokedcache.memory.bytes", [memory("payload_bytes")], "By", "Memory payload bytes."
        )

    label = TableLabels(max_tables)
    attrs: dict[tuple[str, ...], dict[str, str]] = {}

    def a(*pairs: str) -> dict[str, str]:  # one attribute dict per label set, reused
        d = attrs.get(pairs)
        if d is None:
            d = attrs[pairs] = dict(zip(pairs[::2], pairs[1::2], strict=True))
        return d

    hit, miss = a("outcome", "hit"), a("outcome", "miss")

    def on_lookup(e: ev.Hit | ev.Miss, outcome: dict[str, str], word: str) -> None:
        lookups.add(1, outcome)
        lookup_time.record(e.seconds, outcome)
        for t in e.tables:
            table_lookups.add(1, a("table", label(t), "outcome", word))

    def on_invalidated(e: ev.Invalidated) -> None:
        if not e.tables:
            invalidations.add(1, a())
        for t in e.tables:
            invalidations.add(1, a("table", label(t)))

    def on_breaker(e: ev.BreakerChanged) -> None:
        state["breaker"] = 1 if e.open else 0

    def on_pending(e: ev.PendingChanged) -> None:
        state["pending"] = e.count

    handlers: dict[type, Callable[[Any], None]] = {
        ev.Hit: lambda e: on_lookup(e, hit, "hit"),
        ev.Miss: lambda e: on_lookup(e, miss, "miss"),
        ev.Stored: lambda e: stores.add(1),
        ev.StoreRefused: lambda e: refusals.add(1, a("reason", e.reason)),
        ev.Bypass: lambda e: bypasses.add(1, a("reason", e.reason)),
        ev.Invalidated: on_invalidated,
        ev.BackendFailed: lambda e: errors.add(
            1, a("operation", e.operation, "kind", "refused" if e.refused else "failure")
        ),
        ev.OperationTimed: lambda e: op_time.record(e.seconds, a("operation", e.operation)),
        ev.BreakerChanged: on_breaker,
        ev.PendingChanged: on_pending,
        ev.ShadowRead: lambda e: shadow.add(1, a("outcome", e.outcome)),
    }

    def listener(event: object) -> None:
        handler = handlers.get(type(event))
        if handler is not None:
            handler(event)

    hooks = cache.hooks
    removers: list[Callable[[], None]] = [cache.add_listener(listener)]
    if tracing:
        tp = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        hooks.set_tracer(tp.get_tracer(SCOPE))
        removers.append(lambda: hooks.set_tracer(None))
    return Instrumentation(removers)
