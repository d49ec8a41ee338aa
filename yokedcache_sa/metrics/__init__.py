"""Exporters of a cache's events (:mod:`yokedcache_sa.observe`) as metrics.

- :func:`yokedcache_sa.metrics.prometheus.instrument` — ``prometheus_client`` counters,
  histograms and gauges (``pip install 'yokedcache_sa[prometheus]'``);
- :func:`yokedcache_sa.metrics.otel.instrument` — OpenTelemetry metrics and spans
  (``pip install 'yokedcache_sa[otel]'``).

Labels are bounded: outcomes and reasons are fixed sets, operations are the backend's
methods, tables are capped (:class:`TableLabels`); no label ever holds a key. The metric
list is in docs/observability.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependency

__all__ = ["OTHER_TABLES", "Instrumentation", "TableLabels", "Tally", "require"]

OTHER_TABLES = "_other"
"""The table label of every table past the cap."""


class TableLabels:
    """Map table names to label values, at most *limit* distinct ones (then ``_other``)."""

    __slots__ = ("_lock", "_seen", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, table: str) -> str:
        if table in self._seen:
            return table
        with self._lock:
            if len(self._seen) < self.limit:
                self._seen.add(table)
                return table
        return OTHER_TABLES


class Instrumentation:
    """What ``instrument`` returns: :meth:`remove` stops exporting (the metrics stay
    registered; their last values remain)."""

    def __init__(self, removers: list[Callable[[], None]]) -> None:
        self._removers = removers

    def remove(self) -> None:
        for undo in self._removers:
            undo()
        self._removers = []


def require(module: str, extra: str) -> None:
    """Raise :class:`MissingDependency` naming the extra when *module* is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependency(
            f"{module} is not installed; install it with pip install 'yokedcache_sa[{extra}]'"
        )


Latency = Callable[[str, str, float], None]
"""Receives (``lookup``, outcome, seconds) or (``operation``, op name, seconds)."""


class Tally:
    """Plain counts of one cache's events, read by an exporter when it collects.

    Counting is a dict increment on the hot path (the exporters' own instruments are
    touched only at collection time); latencies go to *latency* as they happen. Like
    :class:`~yokedcache_sa.stats.Counters`, a lost increment under a thread race only
    blurs a figure.
    """

    def __init__(self, max_tables: int, latency: Latency) -> None:
        self.label = TableLabels(max_tables)
        self.latency = latency
        self.lookups: dict[str, int] = {"hit": 0, "miss": 0}
        self.table_lookups: dict[tuple[str, str], int] = {}
        self.stores = 0
        self.refusals: dict[str, int] = {}
        self.bypasses: dict[str, int] = {}
        self.invalidations = 0
        self.table_invalidations: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.shadow: dict[str, int] = {}
        self.shadow_tables: dict[str, int] = {}
        self.breaker_open = 0
        self.pending = 0
        from .. import observe as ev

        self._handlers: dict[type, Callable[[Any], None]] = {
            ev.Hit: self._hit,
            ev.Miss: self._miss,
            ev.Stored: self._stored,
            ev.StoreRefused: lambda e: _bump(self.refusals, e.reason),
            ev.Bypass: lambda e: _bump(self.bypasses, e.reason),
            ev.Invalidated: self._invalidated,
            ev.BackendFailed: lambda e: _bump(
                self.errors, (e.operation, "refused" if e.refused else "failure")
            ),
            ev.OperationTimed: lambda e: self.latency("operation", e.operation, e.seconds),
            ev.BreakerChanged: self._breaker,
            ev.PendingChanged: self._pending,
            ev.ShadowRead: self._shadow,
        }

    def __call__(self, event: object) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _lookup(self, tables: tuple[str, ...], outcome: str, seconds: float) -> None:
        self.lookups[outcome] += 1
        counts = self.table_lookups
        label = self.label
        for t in tables:
            k = (label(t), outcome)
            counts[k] = counts.get(k, 0) + 1
        self.latency("lookup", outcome, seconds)

    def _hit(self, e: Any) -> None:
        self._lookup(e.tables, "hit", e.seconds)

    def _miss(self, e: Any) -> None:
        self._lookup(e.tables, "miss", e.seconds)

    def _stored(self, e: Any) -> None:
        self.stores += 1

    def _invalidated(self, e: Any) -> None:
        self.invalidations += 1
        for t in e.tables:
            _bump(self.table_invalidations, self.label(t))

    def _breaker(self, e: Any) -> None:
        self.breaker_open = 1 if e.open else 0

    def _pending(self, e: Any) -> None:
        self.pending = e.count

    def _shadow(self, e: Any) -> None:
        _bump(self.shadow, e.outcome)
        if e.outcome == "mismatch":
            for t in e.tables:
                _bump(self.shadow_tables, self.label(t))


def _bump(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1
