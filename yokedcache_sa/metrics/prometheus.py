"""Prometheus metrics of one cache, through ``prometheus_client``.

``instrument(cache)`` registers the metrics listed in docs/observability.md in *registry*
(default: ``prometheus_client.REGISTRY``) and keeps them current from the cache's events;
expose them as usual (``prometheus_client.start_http_server``, ``make_asgi_app`` …).
Instrument each registry once (metric names are unique within a registry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import Instrumentation, TableLabels, require

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..cache import YokedCache

__all__ = ["LATENCY_BUCKETS", "instrument"]

LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Histogram buckets (seconds): a memory hit is microseconds, a Redis round trip ~0.2 ms."""


def instrument(
    cache: YokedCache,
    registry: CollectorRegistry | None = None,
    namespace: str = "yokedcache",
    *,
    max_tables: int = 100,
) -> Instrumentation:
    """Export *cache*'s events as Prometheus metrics in *registry*; at most *max_tables*
    distinct ``table`` label values (then ``_other``).

    Added in 0.x.
    """
    require("prometheus_client", "prometheus")
    from prometheus_client import REGISTRY, Counter, Gauge, Histogram

    from .. import observe as ev

    reg = registry if registry is not None else REGISTRY
    kw: dict[str, Any] = {"namespace": namespace, "registry": reg}
    lookups = Counter("lookups", "Cache lookups by outcome (hit, miss).", ["outcome"], **kw)
    table_lookups = Counter(
        "table_lookups", "Lookups by table read and outcome.", ["table", "outcome"], **kw
    )
    lookup_seconds = Histogram(
        "lookup_seconds",
        "Lookup latency (the store's answer, decoding included).",
        ["outcome"],
        buckets=LATENCY_BUCKETS,
        **kw,
    )
    stores = Counter("stores", "Results stored.", **kw)
    refusals = Counter(
        "store_refusals",
        "Stores the fence refused, by reason (version_moved, being_written, pending).",
        ["reason"],
        **kw,
    )
    bypasses = Counter(
        "bypasses", "Reads that went to the database around the cache, by reason.", ["reason"], **kw
    )
    invalidations = Counter("invalidations", "Invalidations delivered.", **kw)
    table_invalidations = Counter(
        "table_invalidations", "Invalidations delivered, by table.", ["table"], **kw
    )
    errors = Counter(
        "backend_errors",
        "Backend operations that failed (kind=failure) or the breaker refused (kind=refused).",
        ["operation", "kind"],
        **kw,
    )
    op_seconds = Histogram(
        "operation_seconds",
        "Backend operation latency by operation (fetch: lookup, store, begin_write and "
        "end_write: commit).",
        ["operation"],
        buckets=LATENCY_BUCKETS,
        **kw,
    )
    breaker = Gauge("breaker_open", "1 while the circuit breaker is open.", **kw)
    pending = Gauge(
        "pending_invalidations", "Tags with an undelivered invalidation (this process).", **kw
    )
    shadow = Counter(
        "shadow_reads", "Sampled shadow reads by outcome (match, mismatch, ...).", ["outcome"], **kw
    )
    shadow_tables = Counter(
        "shadow_mismatches", "Shadow-read mismatches by table.", ["table"], **kw
    )
    removers: list[Callable[[], None]] = []
    backend = cache._target().backend
    if hasattr(backend, "entry_count"):
        import weakref

        ref = weakref.ref(backend)
        mem_entries = Gauge("memory_entries", "Entries held by the memory backend.", **kw)
        mem_bytes = Gauge("memory_bytes", "Payload bytes held by the memory backend.", **kw)
        mem_entries.set_function(lambda: float(getattr(ref(), "entry_count", 0)))
        mem_bytes.set_function(lambda: float(getattr(ref(), "payload_bytes", 0)))
        removers += [lambda: reg.unregister(mem_entries), lambda: reg.unregister(mem_bytes)]
    breaker.set(1 if cache._target()._breaker.is_open else 0)
    pending.set(len(cache._target()._pending))

    label = TableLabels(max_tables)
    hit, miss = lookups.labels("hit"), lookups.labels("miss")
    hit_s, miss_s = lookup_seconds.labels("hit"), lookup_seconds.labels("miss")
    by_table: dict[tuple[str, str], Any] = {}

    def table_count(table: str, outcome: str) -> None:
        child = by_table.get((table, outcome))
        if child is None:
            child = by_table[(table, outcome)] = table_lookups.labels(label(table), outcome)
        child.inc()

    def on_hit(e: ev.Hit) -> None:
        hit.inc()
        hit_s.observe(e.seconds)
        for t in e.tables:
            table_count(t, "hit")

    def on_miss(e: ev.Miss) -> None:
        miss.inc()
        miss_s.observe(e.seconds)
        for t in e.tables:
            table_count(t, "miss")

    def on_invalidated(e: ev.Invalidated) -> None:
        invalidations.inc()
        for t in e.tables:
            table_invalidations.labels(label(t)).inc()

    def on_shadow(e: ev.ShadowRead) -> None:
        shadow.labels(e.outcome).inc()
        if e.outcome == "mismatch":
            for t in e.tables:
                shadow_tables.labels(label(t)).inc()

    handlers: dict[type, Callable[[Any], None]] = {
        ev.Hit: on_hit,
        ev.Miss: on_miss,
        ev.Stored: lambda e: stores.inc(),
        ev.StoreRefused: lambda e: refusals.labels(e.reason).inc(),
        ev.Bypass: lambda e: bypasses.labels(e.reason).inc(),
        ev.Invalidated: on_invalidated,
        ev.BackendFailed: lambda e: errors.labels(
            e.operation, "refused" if e.refused else "failure"
        ).inc(),
        ev.OperationTimed: lambda e: op_seconds.labels(e.operation).observe(e.seconds),
        ev.BreakerChanged: lambda e: breaker.set(1 if e.open else 0),
        ev.PendingChanged: lambda e: pending.set(e.count),
        ev.ShadowRead: on_shadow,
    }

    def listener(event: object) -> None:
        handler = handlers.get(type(event))
        if handler is not None:
            handler(event)

    removers.append(cache.add_listener(listener))
    return Instrumentation(removers)
