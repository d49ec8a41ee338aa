"""ORM events and spans (issue 13): hits, misses and stores of ORM reads labelled by table,
bypasses by reason, the compute-on-miss span — over SQLite and PostgreSQL, memory and Redis."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sqlalchemy import select

from tests.orm.ormkit import Env, User
from yokedcache_sa.metrics import otel as otel_metrics
from yokedcache_sa.metrics import prometheus
from yokedcache_sa.orm import NoCache, state_of

pytestmark = pytest.mark.parametrize("db", ["sqlite", "postgresql"], indirect=True)

USERS = User.__tablename__


def attrs(span: ReadableSpan) -> Mapping[str, Any]:
    """A finished span's attributes (the SDK types them as optional)."""
    assert span.attributes is not None
    return span.attributes


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


@pytest.fixture
def registry(env: Env) -> CollectorRegistry:
    reg = CollectorRegistry()
    prometheus.instrument(env.cache, reg)
    return reg


@pytest.fixture
def spans(env: Env) -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    handle = otel_metrics.instrument(env.cache, tracer_provider=provider)
    yield exporter, provider
    handle.remove()
    provider.shutdown()


def read_carol(s: Any) -> Any:
    return s.scalars(select(User).where(User.name == "carol")).all()


def test_hit_miss_store_by_table(env: Env, registry: CollectorRegistry) -> None:
    env.warm(read_carol)
    assert sample(registry, "yokedcache_lookups_total", outcome="miss") == 1
    assert sample(registry, "yokedcache_lookups_total", outcome="hit") == 1
    assert sample(registry, "yokedcache_table_lookups_total", table=USERS, outcome="hit") == 1
    assert sample(registry, "yokedcache_stores_total") == 1
    with env.Session() as s:
        s.get(User, 1).name = "renamed"
        s.commit()
    assert sample(registry, "yokedcache_table_invalidations_total", table=USERS) == 1
    assert sample(registry, "yokedcache_operation_seconds_count", operation="begin_write") == 1
    assert sample(registry, "yokedcache_operation_seconds_count", operation="end_write") == 1


def test_bypass_reasons(env: Env, registry: CollectorRegistry) -> None:
    with env.Session() as s:
        s.scalars(select(User).where(User.id == 1).options(NoCache())).all()
        s.scalars(select(User).where(User.id == 1).with_for_update()).all()
        s.get(User, 2).age = 99
        s.flush()
        s.scalars(select(User).where(User.id == 3)).all()
        s.rollback()
    with env.Session() as s:
        st = state_of(s)
        assert st is not None
        st.enabled = False  # the whole session opts out
        s.scalars(select(User).where(User.id == 1)).all()
    assert sample(registry, "yokedcache_bypasses_total", reason="opt_out") == 2
    assert sample(registry, "yokedcache_bypasses_total", reason="not_cacheable") >= 1
    assert sample(registry, "yokedcache_bypasses_total", reason="own_writes") == 1
    assert sample(registry, "yokedcache_lookups_total", outcome="hit") == 0


def test_compute_span_and_no_parameter_values(
    env: Env, spans: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    exporter, provider = spans
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("request") as request, env.Session() as s:
        read_carol(s)
    with tracer.start_as_current_span("request2"), env.Session() as s:
        read_carol(s)
    parent = request.get_span_context().span_id
    done = exporter.get_finished_spans()
    names = [sp.name for sp in done if sp.parent is not None and sp.parent.span_id == parent]
    assert names[:3] == ["yokedcache.lookup", "yokedcache.compute", "yokedcache.store"]
    compute = next(sp for sp in done if sp.name == "yokedcache.compute")
    assert attrs(compute)["yokedcache.tables"] == (USERS,)
    lookups = [sp for sp in done if sp.name == "yokedcache.lookup"]
    assert [attrs(sp)["yokedcache.hit"] for sp in lookups] == [False, True]
    digest = str(attrs(lookups[0])["yokedcache.key_digest"])
    assert digest.startswith("q:") and len(digest) <= 26
    assert attrs(compute)["yokedcache.key_digest"] == digest
    for sp in done:
        for value in (sp.attributes or {}).values():
            assert "carol" not in str(value), "no parameter value in a span attribute"
