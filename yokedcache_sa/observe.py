"""Hooks: typed events a cache emits, and the callbacks that subscribe to them.

Subscribe with :meth:`YokedCache.add_listener <yokedcache_sa.cache.YokedCache.add_listener>`;
a listener is called with one event object (the classes below) in the thread (or task) that
caused it, right after the fact. The exporters in :mod:`yokedcache_sa.metrics` are listeners.

Nothing is built while nobody listens: every emitting site first reads
:attr:`Hooks.active` (one attribute). Events are plain slotted dataclasses, built fresh
for each occurrence; treat them as read-only. Events carry a key *digest* (``q:…``, or ``k#…`` for
user keys) and table names, never a key or parameter values.

A listener that raises is logged (once per listener) and otherwise ignored: observing the
cache never breaks it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

__all__ = [
    "BackendFailed",
    "BreakerChanged",
    "Bypass",
    "BypassReason",
    "Event",
    "Hit",
    "Hooks",
    "Invalidated",
    "Listener",
    "Miss",
    "OperationTimed",
    "PendingChanged",
    "RefusalReason",
    "ShadowRead",
    "StoreRefused",
    "Stored",
    "tables_in",
]

log = logging.getLogger("yokedcache_sa")

BypassReason: TypeAlias = Literal[
    "opt_out",  # caching turned off for the session or the query
    "own_writes",  # the transaction wrote a table the query reads
    "not_cacheable",  # the statement or its result cannot be cached
    "connection_state",  # the connection's state is not part of the key (tainted)
    "failed_transaction",  # a statement failed in this transaction
    "breaker_open",  # the circuit breaker refused the lookup
    "unavailable",  # the store did not answer the lookup
]
RefusalReason: TypeAlias = Literal[
    "version_moved",  # a tag was written after the read, or a new version space (epoch)
    "marked",  # a tag carries a live write lease
    "pending",  # an invalidation of a tag is pending in this process
]


def tables_in(tags: Iterable[str]) -> tuple[str, ...]:
    """The table names among tag ids (``table:users`` → ``users``), sorted."""
    if type(tags) is tuple:
        known = _tables_memo.get(tags)
        if known is not None:
            return known
    names = tuple(sorted(t[6:] for t in tags if t[:6] == "table:"))
    if type(tags) is tuple:
        if len(_tables_memo) >= 4096:
            _tables_memo.clear()
        _tables_memo[tags] = names
    return names


_tables_memo: dict[tuple[str, ...], tuple[str, ...]] = {}


@dataclass(slots=True)
class Hit:
    """A lookup served a fresh entry."""

    key: str  # digest
    tables: tuple[str, ...]
    seconds: float


@dataclass(slots=True)
class Miss:
    """A lookup found no entry, or none that may be served (stale, or the store failed:
    then a :class:`Bypass` follows)."""

    key: str
    tables: tuple[str, ...]
    seconds: float


@dataclass(slots=True)
class Stored:
    """A result was stored."""

    key: str
    tables: tuple[str, ...]


@dataclass(slots=True)
class StoreRefused:
    """The fence refused a store (the value would have been stale when written)."""

    key: str
    tables: tuple[str, ...]
    reason: RefusalReason


@dataclass(slots=True)
class Bypass:
    """A read went to the database without consulting (or without using) the cache."""

    reason: BypassReason
    tables: tuple[str, ...] = ()


@dataclass(slots=True)
class Invalidated:
    """New versions were delivered for these tables (and tags), e.g. at commit."""

    tables: tuple[str, ...]
    tags: int  # how many tag ids, tables included


@dataclass(slots=True)
class BackendFailed:
    """A backend operation failed (``refused``: the circuit breaker did not let it run)."""

    operation: str
    error: str  # exception class name
    refused: bool


@dataclass(slots=True)
class OperationTimed:
    """A backend operation's duration (``fetch`` is the lookup, ``store`` the store,
    ``begin_write``/``end_write`` the commit-time marking and invalidation)."""

    operation: str
    seconds: float
    ok: bool


@dataclass(slots=True)
class BreakerChanged:
    """The circuit breaker opened or closed."""

    open: bool


@dataclass(slots=True)
class PendingChanged:
    """The number of tags with an undelivered invalidation changed."""

    count: int


@dataclass(slots=True)
class ShadowRead:
    """A sampled hit was re-run against the database (:mod:`yokedcache_sa.orm.shadow`).

    ``outcome``: ``match``; ``mismatch`` (the database answered differently while the
    tables' versions stayed put: a bug to report); ``skipped`` (a write moved the versions
    meanwhile, or the re-check failed: no verdict); ``error`` (the statement failed).
    """

    key: str
    tables: tuple[str, ...]
    outcome: Literal["match", "mismatch", "skipped", "error"]


Event: TypeAlias = (
    Hit
    | Miss
    | Stored
    | StoreRefused
    | Bypass
    | Invalidated
    | BackendFailed
    | OperationTimed
    | BreakerChanged
    | PendingChanged
    | ShadowRead
)
Listener: TypeAlias = Callable[[Any], None]
"""Called with one event; may filter with ``isinstance`` (or subscribe with ``kinds``)."""


class Hooks:
    """The listeners of one cache (and the tracer its spans use, when one is set).

    Holds no reference to the cache (the breaker's callbacks go through it).
    """

    __slots__ = ("_failed", "_listeners", "_lock", "_routes", "active", "tracer")

    def __init__(self) -> None:
        self.active = False
        """True while someone listens or traces: the one check on every hot path."""
        self.tracer: Any = None
        """Opens spans: ``start_span(name, attributes)`` (a started span or None) and
        ``start_as_current_span(name, attributes)`` (a context manager); set by
        :func:`yokedcache_sa.metrics.otel.instrument`."""
        self._listeners: tuple[tuple[Listener, tuple[type, ...] | None], ...] = ()
        self._routes: dict[type, tuple[Listener, ...]] = {}
        """Per event class, what :meth:`emit` calls (built at its first event)."""
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    def add(self, listener: Listener, kinds: Iterable[type] | None = None) -> Callable[[], None]:
        """Subscribe *listener* (to the event classes *kinds*, default all); return a
        function that unsubscribes it."""
        entry = (listener, tuple(kinds) if kinds is not None else None)
        with self._lock:
            self._listeners = (*self._listeners, entry)
            self._refresh()

        def remove() -> None:
            with self._lock:
                self._listeners = tuple(e for e in self._listeners if e is not entry)
                self._refresh()

        return remove

    def remove(self, listener: Listener) -> None:
        """Unsubscribe every subscription of *listener*."""
        with self._lock:
            self._listeners = tuple(e for e in self._listeners if e[0] != listener)
            self._refresh()

    def set_tracer(self, tracer: Any) -> None:
        with self._lock:
            self.tracer = tracer
            self._refresh()

    def _refresh(self) -> None:
        self._routes = {}
        self.active = bool(self._listeners) or self.tracer is not None

    def _route(self, cls: type) -> tuple[Listener, ...]:
        """What an event of class *cls* goes to: each listener subscribed to it, or, for a
        listener with a ``handler_for(cls)`` method (the exporters' tallies), the handler
        it names for that class (None: not interested)."""
        route: list[Listener] = []
        for fn, kinds in self._listeners:
            if kinds is not None and not issubclass(cls, kinds):
                continue
            pick = getattr(fn, "handler_for", None)
            handler = pick(cls) if pick is not None else fn
            if handler is not None:
                route.append(handler)
        routes = self._routes
        routes[cls] = out = tuple(route)
        return out

    def emit(self, event: object) -> None:
        """Call each listener subscribed to *event*'s class."""
        fns = self._routes.get(type(event))
        if fns is None:
            fns = self._route(type(event))
        for fn in fns:
            try:
                fn(event)
            except Exception:
                if id(fn) not in self._failed:
                    self._failed.add(id(fn))
                    log.exception(
                        "yokedcache: a cache listener raised (ignored; logged once per "
                        "listener): %r",
                        fn,
                    )

    # breaker callbacks (the breaker calls these from its own thread of control)

    def breaker_opened(self, failures: int) -> None:
        if self.active:
            self.emit(BreakerChanged(True))

    def breaker_recovered(self, was_open: bool) -> None:
        if self.active and was_open:
            self.emit(BreakerChanged(False))
