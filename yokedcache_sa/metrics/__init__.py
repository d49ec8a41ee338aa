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
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import MissingDependency

__all__ = ["OTHER_TABLES", "Instrumentation", "TableLabels", "Tally", "attach", "require"]

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
    """Plain counts of one cache's events, read by its exporters when they collect.

    One tally per cache and table cap, shared by every exporter of that cache
    (:func:`attach`), so an event is counted once however many exporters read it.
    Counting is a dict increment on the hot path (the exporters' own instruments are
    touched only at collection time); latencies go to each exporter's sink as they happen.
    Like :class:`~yokedcache_sa.stats.Counters`, a lost increment under a thread race only
    blurs a figure.
    """

    def __init__(self, max_tables: int) -> None:
        self.max_tables = max_tables
        self.label = TableLabels(max_tables)
        self._sinks: tuple[Latency, ...] = ()
        self.lookups: dict[str, int] = {"hit": 0, "miss": 0}
        self.table_lookups: dict[tuple[str, str], int] = {}
        self._lookup_keys: dict[tuple[tuple[str, ...], str], tuple[tuple[str, str], ...]] = {}
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
        self.remove_listener: Callable[[], None] | None = None
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
            ev.OperationTimed: self._timed,
            ev.BreakerChanged: self._breaker,
            ev.PendingChanged: self._pending,
            ev.ShadowRead: self._shadow,
        }

    def __call__(self, event: object) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def handler_for(self, cls: type) -> Callable[[Any], None] | None:
        """What handles events of class *cls* (the cache's hooks call it directly)."""
        return self._handlers.get(cls)

    # -- sinks -------------------------------------------------------------------------

    def add_sink(self, sink: Latency) -> None:
        self._sinks = (*self._sinks, sink)

    def remove_sink(self, sink: Latency) -> bool:
        """Drop *sink*; return whether sinks remain."""
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        return bool(self._sinks)

    def frozen(self) -> Tally:
        """A copy of the counts as they are now (what a removed exporter keeps showing)."""
        copy = Tally(self.max_tables)
        for name in (
            "lookups",
            "table_lookups",
            "refusals",
            "bypasses",
            "table_invalidations",
            "errors",
            "shadow",
            "shadow_tables",
        ):
            setattr(copy, name, dict(getattr(self, name)))
        for name in ("stores", "invalidations", "breaker_open", "pending"):
            setattr(copy, name, getattr(self, name))
        return copy

    # -- events ------------------------------------------------------------------------

    def _lookup(self, tables: tuple[str, ...], outcome: str, seconds: float) -> None:
        self.lookups[outcome] += 1
        keys = self._lookup_keys.get((tables, outcome))
        if keys is None:
            keys = self._keys_of(tables, outcome)
        counts = self.table_lookups
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        for sink in self._sinks:
            sink("lookup", outcome, seconds)

    def _keys_of(self, tables: tuple[str, ...], outcome: str) -> tuple[tuple[str, str], ...]:
        keys = tuple((self.label(t), outcome) for t in tables)
        if len(self._lookup_keys) >= 4096:
            self._lookup_keys.clear()
        self._lookup_keys[(tables, outcome)] = keys
        return keys

    def _hit(self, e: Any) -> None:  # _lookup, inlined: the hot path of an observed hit
        self.lookups["hit"] += 1
        keys = self._lookup_keys.get((e.tables, "hit"))
        if keys is None:
            keys = self._keys_of(e.tables, "hit")
        counts = self.table_lookups
        for k in keys:
            counts[k] = counts.get(k, 0) + 1
        for sink in self._sinks:
            sink("lookup", "hit", e.seconds)

    def _miss(self, e: Any) -> None:
        self._lookup(e.tables, "miss", e.seconds)

    def _timed(self, e: Any) -> None:
        for sink in self._sinks:
            sink("operation", e.operation, e.seconds)

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


_tallies: weakref.WeakKeyDictionary[Any, dict[int, Tally]] = weakref.WeakKeyDictionary()
_tallies_lock = threading.Lock()


def attach(cache: Any, max_tables: int, latency: Latency) -> tuple[Tally, Callable[[], None]]:
    """The tally of *cache* (its redirect target) for *max_tables*, with *latency* among
    its sinks, listening to the cache while one exporter reads it; and the function that
    detaches this exporter again (the last one stops the listening)."""
    target = cache.resolved()
    with _tallies_lock:
        per_cap = _tallies.setdefault(target, {})
        tally = per_cap.get(max_tables)
        if tally is None:
            tally = per_cap[max_tables] = Tally(max_tables)
            tally.breaker_open = 1 if target.breaker_open else 0
            tally.pending = target.pending_count
            tally.remove_listener = cache.add_listener(tally)
        tally.add_sink(latency)

    def detach() -> None:
        with _tallies_lock:
            if tally.remove_sink(latency) or tally.remove_listener is None:
                return
            tally.remove_listener()
            tally.remove_listener = None
            if per_cap.get(max_tables) is tally:
                del per_cap[max_tables]

    return tally, detach


def _bump(counts: dict[Any, int], key: Any) -> None:
    counts[key] = counts.get(key, 0) + 1
