"""The hook API (yokedcache_sa.observe) and the exporters, over the memory backend and real
Redis: events as they happen, Prometheus samples from a real CollectorRegistry, OpenTelemetry
data from the SDK's in-memory reader and span exporter."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from prometheus_client import CollectorRegistry

from tests.observe.conftest import Otel, prom
from tests.redis_process import RedisProcess
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa import observe as ev
from yokedcache_sa.errors import ConfigError, InvalidationError
from yokedcache_sa.metrics import otel as otel_metrics
from yokedcache_sa.metrics import prometheus

FAST: dict[str, Any] = {
    "socket_timeout": 0.1,
    "socket_connect_timeout": 0.1,
    "circuit_breaker_threshold": 3,
    "circuit_breaker_timeout": 0.5,
}


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes (the SDK types them as optional)."""
    assert span.attributes is not None
    return span.attributes


def _active(cache: YokedCache) -> bool:
    return cache.hooks.active  # read through a call: each assert sees the current value


def test_inactive_until_someone_listens(cache: YokedCache) -> None:
    assert not _active(cache)
    seen: list[object] = []
    remove = cache.add_listener(seen.append)
    assert _active(cache)
    remove()
    assert not _active(cache)
    cache.set_sync("k", 1)
    assert cache.get_sync("k") == 1
    assert seen == [], "an unsubscribed listener is not called"


def test_events_of_a_round_trip(cache: YokedCache) -> None:
    seen: list[object] = []
    cache.add_listener(seen.append)
    cache.set_sync("k", {"a": 1}, tags=["table:users"])
    assert cache.get_sync("k") == {"a": 1}
    assert cache.get_sync("nothing") is None
    cache.invalidate_tables_sync(["users"])
    assert cache.get_sync("k") is None
    kinds = [type(e) for e in seen if not isinstance(e, ev.OperationTimed)]
    assert kinds == [ev.Stored, ev.Hit, ev.Miss, ev.Invalidated, ev.Miss]
    hit = next(e for e in seen if isinstance(e, ev.Hit))
    assert hit.tables == ("users",) and hit.key.startswith("k#") and hit.seconds > 0
    assert hit.key != "k"  # a digest, never the key
    inv = next(e for e in seen if isinstance(e, ev.Invalidated))
    assert inv.tables == ("users",)
    ops = {e.operation for e in seen if isinstance(e, ev.OperationTimed)}
    assert {"observe", "store", "end_write"} <= ops
    assert "fetch" not in ops  # a fetch is the lookup, timed by its Hit / Miss


def test_kinds_filter_and_remove_listener(cache: YokedCache) -> None:
    hits: list[object] = []
    cache.add_listener(hits.append, kinds=[ev.Hit])
    cache.set_sync("k", 1)
    cache.get_sync("k")
    cache.get_sync("other")
    assert [type(e) for e in hits] == [ev.Hit]
    cache.remove_listener(hits.append)
    assert not cache.hooks.active


def test_a_failing_listener_is_logged_once_and_ignored(
    cache: YokedCache, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: object) -> None:
        raise RuntimeError("listener bug")

    cache.add_listener(broken)
    with caplog.at_level(logging.ERROR, logger="yokedcache_sa"):
        cache.set_sync("k", 1)
        assert cache.get_sync("k") == 1
        assert cache.get_sync("k") == 1
    assert sum("a cache listener raised" in r.getMessage() for r in caplog.records) == 1


def test_store_refusals_by_reason(cache: YokedCache) -> None:
    seen: list[ev.StoreRefused] = []
    cache.add_listener(seen.append, kinds=[ev.StoreRefused])
    snap = cache.observe_sync()
    assert snap is not None
    cache.invalidate_tags_sync(["t"])
    assert not cache.store_sync("a", 1, tags=["t"], snapshot=snap)
    writer = cache.new_writer()
    cache.begin_write_sync(["t"], writer)
    snap2 = cache.observe_sync()
    assert snap2 is not None
    assert not cache.store_sync("b", 1, tags=["t"], snapshot=snap2)
    cache.end_write_sync(["t"], writer)
    assert [e.reason for e in seen] == ["version_moved", "marked"]


def test_prometheus_counters_and_histograms(cache: YokedCache, registry: CollectorRegistry) -> None:
    prometheus.instrument(cache, registry)
    cache.set_sync("k", 1, tags=["table:users", "table:orders"])
    for _ in range(3):
        cache.get_sync("k")
    cache.get_sync("absent")
    cache.invalidate_tables_sync(["users"])
    assert prom(registry, "yokedcache_lookups_total", outcome="hit") == 3
    assert prom(registry, "yokedcache_lookups_total", outcome="miss") == 1
    assert prom(registry, "yokedcache_table_lookups_total", table="users", outcome="hit") == 3
    assert prom(registry, "yokedcache_table_lookups_total", table="orders", outcome="hit") == 3
    assert prom(registry, "yokedcache_lookup_seconds_count", outcome="hit") == 3
    assert prom(registry, "yokedcache_stores_total") == 1
    assert prom(registry, "yokedcache_invalidations_total") == 1
    assert prom(registry, "yokedcache_table_invalidations_total", table="users") == 1
    assert prom(registry, "yokedcache_lookup_seconds_count", outcome="miss") == 1
    assert prom(registry, "yokedcache_operation_seconds_count", operation="store") == 1
    assert prom(registry, "yokedcache_operation_seconds_count", operation="end_write") == 1
    assert prom(registry, "yokedcache_breaker_open") == 0
    assert prom(registry, "yokedcache_pending_invalidations") == 0
    if cache.backend.name == "memory":
        assert prom(registry, "yokedcache_memory_entries") == 1
        assert prom(registry, "yokedcache_memory_bytes") > 0
    else:
        assert registry.get_sample_value("yokedcache_memory_entries") is None
    text = "\n".join(f"{s.name}{s.labels}" for m in registry.collect() for s in m.samples)
    assert "k#" not in text and "'k'" not in text  # no key in any label


def test_prometheus_table_labels_are_capped(cache: YokedCache, registry: CollectorRegistry) -> None:
    prometheus.instrument(cache, registry, namespace="yc", max_tables=2)
    for i in range(5):
        cache.set_sync(f"k{i}", i, tags=[f"table:t{i}"])
        cache.get_sync(f"k{i}")
    labels = {
        s.labels["table"]
        for m in registry.collect()
        for s in m.samples
        if s.name == "yc_table_lookups_total"
    }
    assert labels == {"t0", "t1", "_other"}
    assert prom(registry, "yc_table_lookups_total", table="_other", outcome="hit") == 3


def test_instrumentation_remove_stops_exporting(
    cache: YokedCache, registry: CollectorRegistry
) -> None:
    handle = prometheus.instrument(cache, registry)
    cache.get_sync("a")
    handle.remove()
    cache.get_sync("a")
    assert prom(registry, "yokedcache_lookups_total", outcome="miss") == 1
    assert not cache.hooks.active


def test_exporters_of_one_cache_share_one_tally(
    cache: YokedCache, registry: CollectorRegistry, otel: Otel
) -> None:
    """Both exporters see every event, counted once; removing one freezes its figures while
    the other keeps counting; removing the last stops listening."""

    def listening() -> bool:
        return cache.hooks.active

    def listeners() -> int:
        return len(cache.hooks._listeners)

    first = prometheus.instrument(cache, registry)
    second = otel_metrics.instrument(cache, otel.meters, otel.tracers, tracing=False)
    assert listeners() == 1  # one tally listens for both
    cache.set_sync("k", 1, tags=["table:users"])
    for _ in range(3):
        cache.get_sync("k")
    assert prom(registry, "yokedcache_lookups_total", outcome="hit") == 3
    assert prom(registry, "yokedcache_lookup_seconds_count", outcome="hit") == 3
    assert otel.total("yokedcache.lookups", outcome="hit") == 3
    assert otel.total("yokedcache.lookup.duration", outcome="hit") == 3
    first.remove()
    cache.get_sync("k")
    assert prom(registry, "yokedcache_lookups_total", outcome="hit") == 3  # frozen
    assert prom(registry, "yokedcache_lookup_seconds_count", outcome="hit") == 3
    assert otel.total("yokedcache.lookups", outcome="hit") == 4
    assert otel.total("yokedcache.lookup.duration", outcome="hit") == 4
    assert listening()
    second.remove()
    assert not listening()
    third = prometheus.instrument(cache, CollectorRegistry(), max_tables=5)
    other = prometheus.instrument(cache, CollectorRegistry(), max_tables=7)
    assert listeners() == 2  # a tally per table cap
    third.remove()
    other.remove()
    assert not listening()


def test_otel_metrics_and_spans(cache: YokedCache, otel: Otel) -> None:
    otel_metrics.instrument(cache, otel.meters, otel.tracers)
    tracer = otel.tracers.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        cache.set_sync("k", 1, tags=["table:users"])
        assert cache.get_sync("k") == 1
        cache.get_sync("absent")
        cache.invalidate_tables_sync(["users"])
    assert otel.total("yokedcache.lookups", outcome="hit") == 1
    assert otel.total("yokedcache.lookups", outcome="miss") == 1
    assert otel.total("yokedcache.table_lookups", table="users", outcome="hit") == 1
    assert otel.total("yokedcache.stores") == 1
    assert otel.total("yokedcache.invalidations") == 1
    assert otel.total("yokedcache.table_invalidations", table="users") == 1
    assert otel.total("yokedcache.lookup.duration", outcome="hit") == 1
    assert otel.total("yokedcache.operation.duration", operation="end_write") == 1
    assert otel.total("yokedcache.breaker.open") == 0
    parent = request.get_span_context().span_id
    lookups = otel.spans("yokedcache.lookup")
    assert len(lookups) == 2
    assert all(s.parent is not None and s.parent.span_id == parent for s in lookups)
    hit = next(s for s in lookups if attrs(s)["yokedcache.hit"])
    assert attrs(hit)["yokedcache.tables"] == ("users",)
    assert str(attrs(hit)["yokedcache.key_digest"]).startswith("k#")
    (store,) = otel.spans("yokedcache.store")
    assert attrs(store)["yokedcache.stored"] is True
    assert attrs(store)["yokedcache.key_digest"] == attrs(hit)["yokedcache.key_digest"]
    (inv,) = otel.spans("yokedcache.invalidate")
    assert attrs(inv)["yokedcache.tables"] == ("users",)
    for s in otel.spans():
        assert "k" not in {str(v) for v in (s.attributes or {}).values()}


async def test_otel_spans_async(cache: YokedCache, otel: Otel) -> None:
    otel_metrics.instrument(cache, otel.meters, otel.tracers)
    tracer = otel.tracers.get_tracer("app")
    with tracer.start_as_current_span("request") as request:
        await cache.set("k", 1, tags=["table:users"])
        assert await cache.get("k") == 1
    parent = request.get_span_context().span_id
    spans = otel.spans("yokedcache.lookup") + otel.spans("yokedcache.store")
    assert len(spans) == 2
    assert all(s.parent is not None and s.parent.span_id == parent for s in spans)
    assert otel.total("yokedcache.lookups", outcome="hit") == 1


def test_no_span_outside_a_recording_span(cache: YokedCache, otel: Otel) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    otel_metrics.instrument(cache, otel.meters, otel.tracers)
    cache.set_sync("k", 1)
    cache.get_sync("k")  # no current span: no root span made by the cache
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("app")
    with unsampled.start_as_current_span("request"):
        cache.get_sync("k")  # a request span that is not recorded
    assert otel.spans() == []
    assert otel.total("yokedcache.lookups", outcome="hit") == 2


def test_hit_spans_off_makes_lookup_spans_for_misses_only(cache: YokedCache, otel: Otel) -> None:
    otel_metrics.instrument(cache, otel.meters, otel.tracers, hit_spans=False)
    with otel.tracers.get_tracer("app").start_as_current_span("request") as request:
        cache.set_sync("k", 1)
        cache.get_sync("k")
        cache.get_sync("absent")
    (miss,) = otel.spans("yokedcache.lookup")
    assert attrs(miss)["yokedcache.hit"] is False
    assert miss.parent is not None
    assert miss.parent.span_id == request.get_span_context().span_id
    assert miss.start_time is not None and miss.end_time is not None
    assert miss.start_time <= miss.end_time
    assert otel.total("yokedcache.lookups", outcome="hit") == 1


def test_no_tracing_option_makes_no_span(cache: YokedCache, otel: Otel) -> None:
    otel_metrics.instrument(cache, otel.meters, otel.tracers, tracing=False)
    cache.set_sync("k", 1)
    cache.get_sync("k")
    assert otel.spans() == []
    assert otel.total("yokedcache.lookups", outcome="hit") == 1


def _wait(cond: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_outage_breaker_and_pending_events(
    redis_server: RedisProcess, registry: CollectorRegistry, otel: Otel, unique_prefix: str
) -> None:
    cache = YokedCache(CacheConfig(redis_url=redis_server.url, key_prefix=unique_prefix, **FAST))
    try:
        seen: list[object] = []
        cache.add_listener(seen.append)
        prometheus.instrument(cache, registry)
        otel_metrics.instrument(cache, otel.meters, otel.tracers)
        cache.set_sync("k", 1, tags=["t"])
        assert cache.get_sync("k") == 1
        redis_server.stop()
        for _ in range(6):
            assert cache.get_sync("k") is None
        opened = [e for e in seen if isinstance(e, ev.BreakerChanged)]
        assert opened == [ev.BreakerChanged(True)], "one event per state change"
        assert prom(registry, "yokedcache_breaker_open") == 1
        assert otel.total("yokedcache.breaker.open") == 1
        assert (
            prom(registry, "yokedcache_backend_errors_total", operation="fetch", kind="failure")
            == 3
        )
        assert (
            prom(registry, "yokedcache_backend_errors_total", operation="fetch", kind="refused")
            == 3
        )
        assert prom(registry, "yokedcache_bypasses_total", reason="unavailable") == 3
        assert prom(registry, "yokedcache_bypasses_total", reason="breaker_open") == 3
        assert otel.total("yokedcache.bypasses", reason="breaker_open") == 3
        # a commit-time invalidation that is not delivered becomes pending
        writer = cache.new_writer()
        with pytest.raises(InvalidationError):
            cache.end_write_sync(["t"], writer)
        assert prom(registry, "yokedcache_pending_invalidations") == 1
        assert otel.total("yokedcache.pending_invalidations") == 1
        redis_server.start()
        time.sleep(FAST["circuit_breaker_timeout"])
        _wait(lambda: cache.flush_pending_sync() == 0)
        assert prom(registry, "yokedcache_pending_invalidations") == 0
        cache.get_sync("k")
        _wait(lambda: prom(registry, "yokedcache_breaker_open") == 0)
        changes = [e.open for e in seen if isinstance(e, ev.BreakerChanged)]
        assert changes == [True, False]
        assert ev.PendingChanged(0) in seen
    finally:
        cache.disconnect_sync()


def test_store_refused_while_an_invalidation_is_pending(
    redis_server: RedisProcess, registry: CollectorRegistry, unique_prefix: str
) -> None:
    cache = YokedCache(CacheConfig(redis_url=redis_server.url, key_prefix=unique_prefix, **FAST))
    try:
        prometheus.instrument(cache, registry)
        snap = cache.observe_sync()
        assert snap is not None
        redis_server.stop()
        with pytest.raises(InvalidationError):
            cache.end_write_sync(["t"], cache.new_writer())
        # refused before any I/O (Redis stays down: a retry timer that delivered the
        # invalidation first would make this a "version_moved" refusal instead)
        assert not cache.store_sync("k", 1, tags=["t"], snapshot=snap)
        assert prom(registry, "yokedcache_store_refusals_total", reason="pending") == 1
    finally:
        cache.disconnect_sync()


def test_shadow_read_rate_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_SHADOW_READ_RATE", "0.25")
    assert CacheConfig().shadow_read_rate == 0.25
    monkeypatch.setenv("YOKEDCACHE_SHADOW_READ_RATE", "2")
    with pytest.raises(ConfigError, match="shadow_read_rate"):
        CacheConfig()


def test_prometheus_histogram_buckets_are_cumulative(
    cache: YokedCache, registry: CollectorRegistry
) -> None:
    prometheus.instrument(cache, registry)
    cache.set_sync("k", 1)
    for _ in range(5):
        cache.get_sync("k")
    buckets = [
        (s.labels["le"], s.value)
        for m in registry.collect()
        for s in m.samples
        if s.name == "yokedcache_lookup_seconds_bucket" and s.labels["outcome"] == "hit"
    ]
    assert buckets[-1] == ("+Inf", 5.0)
    values = [v for _, v in buckets]
    assert values == sorted(values), "cumulative"
    assert len(buckets) == len(prometheus.LATENCY_BUCKETS) + 1
    assert 0 < prom(registry, "yokedcache_lookup_seconds_sum", outcome="hit") < 5.0
