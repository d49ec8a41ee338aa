"""Prometheus metrics of one cache, through ``prometheus_client``.

``instrument(cache)`` registers the metrics listed in docs/observability.md in *registry*
(default: ``prometheus_client.REGISTRY``) and keeps them current from the cache's events;
expose them as usual (``prometheus_client.start_http_server``, ``make_asgi_app`` …).
Counters are tallied in plain dicts and read when the registry collects (a hit costs a
few dict increments and one histogram observation); instrument each registry once.
"""

from __future__ import annotations

import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from . import Instrumentation, Tally, attach, require

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

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
    from prometheus_client import REGISTRY

    reg = registry if registry is not None else REGISTRY
    histograms: dict[tuple[str, str], _Histogram] = {}

    def latency(kind: str, name: str, seconds: float) -> None:
        h = histograms.get((kind, name))
        if h is None:
            h = histograms[(kind, name)] = _Histogram()
        h.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h.sum += seconds

    tally, detach = attach(cache, max_tables, latency)
    backend = cache.resolved().backend
    memory = weakref.ref(backend) if hasattr(backend, "entry_count") else None
    collector = _Collector(f"{namespace}_", tally, histograms, memory)
    reg.register(collector)

    def remove() -> None:
        detach()
        collector.tally = tally.frozen()  # the last values remain

    removers: list[Callable[[], None]] = [remove]
    return Instrumentation(removers)


class _Histogram:
    """Bucket counts (``le`` each of LATENCY_BUCKETS, then +Inf) and the sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0


class _Collector:
    """Reads a :class:`Tally` into metric families when the registry collects."""

    def __init__(
        self,
        ns: str,
        tally: Tally,
        histograms: dict[tuple[str, str], _Histogram],
        memory: weakref.ref[Any] | None,
    ) -> None:
        self.ns = ns
        self.tally = tally
        self.histograms = histograms
        self.memory = memory

    def _histograms(self) -> Iterator[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        families = {
            "lookup": HistogramMetricFamily(
                self.ns + "lookup_seconds",
                "Lookup latency by outcome (the store's answer, decoding included).",
                labels=["outcome"],
            ),
            "operation": HistogramMetricFamily(
                self.ns + "operation_seconds",
                "Backend operation latency (store; begin_write and end_write: commit).",
                labels=["operation"],
            ),
        }
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for (kind, name), h in sorted(self.histograms.items()):
            running, buckets = 0, []
            for bound, n in zip(bounds, list(h.counts), strict=True):
                running += n
                buckets.append((bound, running))
            families[kind].add_metric([name], buckets, h.sum)
        yield from families.values()

    def describe(self) -> list[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ns, t = self.ns, self.tally
        yield from self._histograms()

        def counter(
            name: str, doc: str, labels: list[str], values: dict[Any, int]
        ) -> CounterMetricFamily:
            fam = CounterMetricFamily(ns + name, doc, labels=labels)
            for key, value in list(values.items()):
                fam.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            return fam

        def single(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(ns + name, doc, value=value)

        yield counter("lookups", "Cache lookups by outcome (hit, miss).", ["outcome"], t.lookups)
        yield counter(
            "table_lookups",
            "Lookups by table read and outcome.",
            ["table", "outcome"],
            t.table_lookups,
        )
        yield single("stores", "Results stored.", t.stores)
        yield counter(
            "store_refusals",
            "Stores the fence refused, by reason (version_moved, marked, pending).",
            ["reason"],
            t.refusals,
        )
        yield counter(
            "bypasses", "Reads that went to the database around the cache.", ["reason"], t.bypasses
        )
        yield single("invalidations", "Invalidations delivered.", t.invalidations)
        yield counter(
            "table_invalidations",
            "Invalidations delivered, by table.",
            ["table"],
            t.table_invalidations,
        )
        yield counter(
            "backend_errors",
            "Backend operations that failed (kind=failure) or the breaker refused (refused).",
            ["operation", "kind"],
            t.errors,
        )
        yield counter("shadow_reads", "Shadow reads by outcome.", ["outcome"], t.shadow)
        yield counter(
            "shadow_mismatches", "Shadow-read mismatches by table.", ["table"], t.shadow_tables
        )
        yield GaugeMetricFamily(
            ns + "breaker_open", "1 while the circuit breaker is open.", value=t.breaker_open
        )
        yield GaugeMetricFamily(
            ns + "pending_invalidations",
            "Tags with an undelivered invalidation (this process).",
            value=t.pending,
        )
        backend = self.memory() if self.memory is not None else None
        if backend is not None:
            yield GaugeMetricFamily(
                ns + "memory_entries", "Entries held by the memory backend.", backend.entry_count
            )
            yield GaugeMetricFamily(
                ns + "memory_bytes",
                "Payload bytes held by the memory backend.",
                backend.payload_bytes,
            )
