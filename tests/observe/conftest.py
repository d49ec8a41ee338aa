"""Fixtures of the observability tests: a Prometheus registry, the OpenTelemetry SDK's
in-memory metric reader and span exporter, and a private redis-server to stop."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry


@dataclass
class Otel:
    reader: InMemoryMetricReader
    meters: MeterProvider
    exporter: InMemorySpanExporter
    tracers: TracerProvider

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value or count) of each data point of the metric *name*."""
        out: list[tuple[dict[str, Any], Any]] = []
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data is not None else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        for p in m.data.data_points:
                            value = getattr(p, "value", None)
                            out.append((dict(p.attributes or {}), getattr(p, "count", value)))
        return out

    def total(self, name: str, **attrs: str) -> Any:
        return sum(v for a, v in self.points(name) if all(a.get(k) == x for k, x in attrs.items()))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def otel() -> Iterator[Otel]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    yield Otel(reader, meters, exporter, tracers)
    meters.shutdown()
    tracers.shutdown()


def prom(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The value of a sample (0.0 when absent)."""
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value
