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

from ..errors import MissingDependency

__all__ = ["OTHER_TABLES", "Instrumentation", "TableLabels", "require"]

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
