"""OpenTelemetry metrics and spans of one cache, through ``opentelemetry-api``.

``instrument(cache)`` creates the instruments listed in docs/observability.md on a meter of
*meter_provider* (default: the global one). Counts are tallied in plain dicts and reported
by observable counters when the reader collects; latencies are buffered (at most
``BUFFERED`` values) and recorded into the histograms at collection time, so a hit pays a
few dict operations, not the SDK's measurement path.

With ``tracing=True`` the cache opens spans — lookup, store, commit-time marking and
invalidation; the ORM adds compute-on-miss — as children of the current span, on a
tracer of *tracer_provider* (default: the global one). A lookup outside any recording
span (no request span, or one not sampled) makes no span. Without ``instrument`` the
cache makes no span at all.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from . import Instrumentation, Tally, attach, require

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import TracerProvider

    from ..cache import YokedCache

__all__ = ["BUFFERED", "instrument"]

SCOPE: Final = "yokedcache_sa"
BUFFERED: Final = 65_536
"""Latencies kept between two collections (older ones are dropped past that)."""


def instrument(
    cache: YokedCache,
    meter_provider: MeterProvider | None = None,
    tracer_provider: TracerProvider | None = None,
    *,
    tracing: bool = True,
    hit_spans: bool = True,
    max_tables: int = 100,
) -> Instrumentation:
    """Export *cache*'s events as OpenTelemetry metrics (and spans, with *tracing*); at
    most *max_tables* distinct ``table`` attribute values (then ``_other``).

    ``hit_spans=False`` makes lookup spans for misses only (a span costs the SDK about a
    fifth of an ORM hit; the metrics still count every hit).

    Added in 0.x.
    """
    require("opentelemetry", "otel")
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import Observation

    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    meter = provider.get_meter(SCOPE)
    lookup_time = meter.create_histogram(
        "yokedcache.lookup.duration", "s", "Lookup latency by outcome."
    )
    op_time = meter.create_histogram(
        "yokedcache.operation.duration", "s", "Backend operation latency by operation."
    )
    buffered: deque[tuple[str, str, float]] = deque(maxlen=BUFFERED)

    def latency(kind: str, name: str, seconds: float) -> None:
        buffered.append((kind, name, seconds))

    tally, detach = attach(cache, max_tables, latency)
    target = cache.resolved()
    view = _View(tally)
    attrs: dict[tuple[str, ...], dict[str, str]] = {}

    def a(*pairs: str) -> dict[str, str]:  # one attribute dict per label set, reused
        d = attrs.get(pairs)
        if d is None:
            d = attrs[pairs] = dict(zip(pairs[::2], pairs[1::2], strict=True))
        return d

    def flush() -> None:
        while buffered:
            kind, name, seconds = buffered.popleft()
            if kind == "lookup":
                lookup_time.record(seconds, a("outcome", name))
            else:
                op_time.record(seconds, a("operation", name))

    Callback = Callable[["CallbackOptions"], Iterable["Observation"]]

    def counts(values: Callable[[], dict[Any, int]], *names: str) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            flush()  # the histograms are read after the callbacks
            out = []
            for key, value in list(values().items()):
                parts = key if isinstance(key, tuple) else (key,)
                pairs = [x for pair in zip(names, parts, strict=True) for x in pair]
                out.append(Observation(value, a(*pairs)))
            return out

        return callback

    def one(value: Callable[[], int]) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            flush()
            return [Observation(value())]

        return callback

    t = view
    counter = meter.create_observable_counter
    counter("yokedcache.lookups", [counts(lambda: t.lookups, "outcome")], "{lookup}", "Lookups.")
    counter(
        "yokedcache.table_lookups",
        [counts(lambda: t.table_lookups, "table", "outcome")],
        "{lookup}",
        "Lookups by table read and outcome.",
    )
    counter("yokedcache.stores", [one(lambda: t.stores)], "{entry}", "Results stored.")
    counter(
        "yokedcache.store_refusals",
        [counts(lambda: t.refusals, "reason")],
        "{store}",
        "Stores the fence refused, by reason.",
    )
    counter(
        "yokedcache.bypasses",
        [counts(lambda: t.bypasses, "reason")],
        "{read}",
        "Reads around the cache, by reason.",
    )
    counter(
        "yokedcache.invalidations",
        [one(lambda: t.invalidations)],
        "{invalidation}",
        "Invalidations delivered.",
    )
    counter(
        "yokedcache.table_invalidations",
        [counts(lambda: t.table_invalidations, "table")],
        "{invalidation}",
        "Invalidations delivered, by table.",
    )
    counter(
        "yokedcache.backend_errors",
        [counts(lambda: t.errors, "operation", "kind")],
        "{error}",
        "Failed or refused backend operations.",
    )
    counter(
        "yokedcache.shadow_reads",
        [counts(lambda: t.shadow, "outcome")],
        "{read}",
        "Sampled shadow reads by outcome.",
    )
    counter(
        "yokedcache.shadow_mismatches",
        [counts(lambda: t.shadow_tables, "table")],
        "{read}",
        "Shadow-read mismatches by table.",
    )
    gauge = meter.create_observable_gauge
    gauge("yokedcache.breaker.open", [one(lambda: t.breaker_open)], "1", "1 while open.")
    gauge(
        "yokedcache.pending_invalidations",
        [one(lambda: t.pending)],
        "{tag}",
        "Tags with an undelivered invalidation (this process).",
    )
    backend = target.backend
    if hasattr(backend, "entry_count"):
        ref = weakref.ref(backend)

        def memory(attr: str) -> Callback:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                b = ref()
                return [] if b is None else [Observation(getattr(b, attr))]

            return callback

        gauge("yokedcache.memory.entries", [memory("entry_count")], "{entry}", "Memory entries.")
        gauge("yokedcache.memory.bytes", [memory("payload_bytes")], "By", "Memory payload bytes.")

    hooks = cache.hooks

    def remove() -> None:
        detach()
        view.tally = tally.frozen()  # the last values remain

    removers: list[Callable[[], None]] = [remove]
    if tracing:
        tp = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        hooks.set_tracer(_Tracer(tp.get_tracer(SCOPE), trace.get_current_span, hit_spans))
        removers.append(lambda: hooks.set_tracer(None))
    return Instrumentation(removers)


class _View:
    """The tally the callbacks read: the live one, then its frozen copy once removed."""

    __slots__ = ("tally",)

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tally, name)


class _Tracer:
    """What the cache calls to open spans: only under a recording current span."""

    __slots__ = ("_current", "_tracer", "hit_spans")

    def __init__(self, tracer: Any, current: Callable[[], Any], hit_spans: bool) -> None:
        self._tracer = tracer
        self._current = current
        self.hit_spans = hit_spans
        """False: the lookup span is made after the fact, for misses only."""

    def start_span(
        self, name: str, attributes: dict[str, Any] | None, start_time: int | None = None
    ) -> Any:
        """A started child span of the current one, or None (end it with ``end()``)."""
        if not self._current().is_recording():
            return None
        return self._tracer.start_span(name, attributes=attributes, start_time=start_time)

    def start_as_current_span(self, name: str, attributes: dict[str, Any]) -> Any:
        """A context manager making a child span current (a no-op outside a recording
        span)."""
        if not self._current().is_recording():
            from contextlib import nullcontext

            return nullcontext(_NoSpan)
        return self._tracer.start_as_current_span(name, attributes=attributes)


class _NoSpanType:
    def set_attribute(self, key: str, value: object) -> None:
        pass

    def set_attributes(self, attributes: dict[str, object]) -> None:
        pass


_NoSpan: Final = _NoSpanType()
