"""Turning a lookup into a result: a hit rebuilt from its entry, or a miss run in the
caller's session (or awaited from whoever computes the key) and stored."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any

from sqlalchemy.engine.result import Result
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.orm.attributes import instance_state

from .. import stampede
from ..cache import DEFAULT_TTL, Lookup, YokedCache
from ..errors import SerializationError
from ..logs import key_digest
from ..observe import Bypass, BypassReason, tables_in
from ..stampede import sync_io
from ..txview import serves_nothing
from . import _compat
from ._greenlet import await_ as _await
from ._greenlet import call_twin, in_greenlet
from .bindstate import connection_variant
from .collect import Collector, _mark_strict, reading_collector
from .options import Hint
from .results import (
    NotCacheable,
    NotStorable,
    ResultShape,
    loader_context,
    reachable_mappers,
    rows_from_entry,
    rows_to_entry,
)
from .shapes import _Shape
from .state import SessionState

Planned = tuple[dict[str, Any] | None, Any, Any]
"""A statement's bind, resolved once: ``(get_bind() arguments, bind, connection begun or
None)``; no arguments when ``get_bind()`` was not asked (see :func:`._compat.bind_reused`)."""

log = logging.getLogger("yokedcache_sa")


READ_LISTENERS: set[Any] = set()
"""The functions that are the cache's ``do_orm_execute`` listener (reads, session)."""


def has_other_orm_listeners(session: Session) -> bool:
    """Whether *session* has ``do_orm_execute`` listeners besides the cache's own."""
    return any(
        getattr(fn, "__func__", fn) not in READ_LISTENERS for fn in session.dispatch.do_orm_execute
    )


def _bypass(st: SessionState, reason: BypassReason, tables: Iterable[str] = ()) -> None:
    """Report a read that goes around the cache (when the cache has listeners)."""
    try:
        hooks = st.cache.hooks
    except LookupError:
        return
    if hooks.active:
        hooks.emit(Bypass(reason, tables_in(tables)))


def _uncached(ox: ORMExecuteState, planned: Planned) -> Result[Any]:
    """Run the statement as SQLAlchemy would, uncached, on the bind resolved for it."""
    bind_args, bind, begun = planned
    with _compat.bind_reused(ox.session, bind_args, bind, begun):
        return _compat.execute_as_planned(ox)


def _served(
    ox: ORMExecuteState,
    st: SessionState,
    shape: _Shape,
    look: Lookup,
    outer: Collector | None,
    has_options: bool = True,
) -> Result[Any] | None:
    """The result rebuilt from a fresh entry, or None when it cannot serve this session
    (*has_options*: False when the statement is known to carry no options)."""
    assert shape.result is not None
    if st.written and look.depends_on(st.written):
        _bypass(st, "own_writes", look.tags)
        return None  # e.g. an eager load of a table this transaction wrote
    session = ox.session
    if shape.post_loads and has_other_orm_listeners(session):
        return None  # its post loads must run, for those listeners (see _run_and_store)
    try:
        added: list[Any] = []
        loader = loader_context(ox.statement) if has_options else None
        rows = rows_from_entry(look.value, shape.result, session, loader, added)
    except (NotCacheable, ValueError, TypeError, KeyError, IndexError) as exc:
        log.warning("yokedcache: ignoring an unusable cached result: %s", exc)
        return None
    if outer is not None:
        outer.add(shape.tables)
        outer.add(t for t in look.tags if t.startswith("table:"))
        if st.vary_on is not None:
            # served for this session's vary_on state, which an @cached key lacks
            _mark_strict(outer, "a read keyed by the session's vary_on state")
    is_new = functools.partial(_was_built_new, added)  # a C-level callable: no frame per hit
    return shape.result.build(rows, ox.statement, _unbuffered(ox), is_new)


def _miss(
    ox: ORMExecuteState,
    st: SessionState,
    shape: _Shape,
    hint: Hint,
    cache: YokedCache,
    key: str,
    look: Lookup,
    horizon: int | None,
    outer: Collector | None,
    variant: str | None,
    planned: Planned,
) -> Result[Any] | None:
    """Run the statement (or wait for whoever computes *key*) and store its result."""

    def lookup(lock: bool = False) -> Lookup:
        return call_twin(cache.lookup_sync, cache.lookup, key, horizon=horizon, lock=lock)

    def compute(look: Lookup) -> Result[Any] | None:
        if st.written and look.depends_on(st.written):
            look = look._replace(snapshot=None)  # reads own uncommitted writes: never store
        return _run_and_store(ox, st, shape, hint, key, look, outer, variant, planned)

    def on_hit(look: Lookup) -> Result[Any] | None:
        result = _served(ox, st, shape, look, outer) if shape.result is not None else None
        return result if result is not None else compute(look)

    if look.snapshot is None or (st.written and look.depends_on(st.written)):
        # nothing to coordinate: the cache is unavailable, or this transaction reads its own
        # writes (never stored)
        if look.lock is not None:
            call_twin(cache.unlock_sync, cache.unlock, key, look.lock.token)
        return compute(look)
    if serves_nothing(horizon) and look.lock is None:
        # before its snapshot exists nobody's result can serve this transaction: waiting
        # for (or locking out) another computation of the key would gain nothing
        return compute(look)
    io = _greenlet_io if in_greenlet() else sync_io
    return stampede.run_sync(cache, key, lookup, compute, on_hit, look, io)


def _run_and_store(
    ox: ORMExecuteState,
    st: SessionState,
    shape: _Shape,
    hint: Hint,
    key: str,
    look: Lookup,
    outer: Collector | None,
    variant: str | None,
    planned: Planned,
) -> Result[Any] | None:
    session = ox.session
    snapshot = look.snapshot
    st.view.before_read(snapshot)  # the horizon, if this begins the database transaction
    # The statement runs in the caller's session, so its objects, events (load, refresh,
    # @reconstructor) and result are SQLAlchemy's own. An object that was in the identity
    # map before keeps attributes loaded earlier (and may have changes): a result holding
    # one is returned but not stored, so an entry holds only what the database returned.
    before = frozenset(session.identity_map.keys()) if len(session.identity_map) else None
    tracer = st.cache.hooks.tracer
    span = (
        tracer.start_as_current_span(
            "yokedcache.compute",
            attributes={
                "yokedcache.key_digest": key_digest(key),
                "yokedcache.tables": list(tables_in(shape.tables)),
            },
        )
        if tracer is not None
        else nullcontext()
    )
    bind_args, bind, begun = planned
    started = st.executions
    queued = _compat.queued_post_loads(ox)
    with (
        span,
        reading_collector() as col,
        _compat.bind_reused(session, bind_args, bind, begun) as on,
    ):
        result = _compat.execute_as_planned(ox)
        # Joined eager loads of collections make SQLAlchemy demand unique() of the caller
        # (a filter that raises on the first row): the entry holds every row, the result
        # built from it makes the same demand.
        require_unique = _compat.take_unique_demand(result)
        frozen = result.freeze()
    st.view.read_done()  # nothing began (an answer from elsewhere): not this one's horizon
    # Beginning may have shown that the connection is not the one the key describes (a
    # tainted pooled connection, connection-level options): return it, but do not store it.
    keyed = st.tainted is None and bool(on) and connection_variant(on[0]) == variant
    if queued is not None and _compat.queued_post_loads(ox) != queued:
        # this post load's rows queued nested post loads (selectinload(A.b).selectinload(B.c)):
        # served from the cache they would not be queued, and would not run
        log.debug("yokedcache: a post load that queues further post loads is not cached")
        _bypass(st, "not_cacheable", shape.tables)
        shape.digest = None
        return _rebuilt(frozen, require_unique)
    try:
        if st.executions != started:
            # post loads (selectin, subquery, immediate) ran inside: a hit would serve what
            # they loaded without running them, so without the session's other
            # do_orm_execute listeners seeing them (or shaping them)
            shape.post_loads = True
            if has_other_orm_listeners(session):
                raise NotStorable("post loads ran under other do_orm_execute listeners")
        payload, mappers = rows_to_entry(frozen.data, _compat.supports_scalars(frozen), before)
    except NotCacheable as exc:
        log.debug("yokedcache: result not cacheable (%s); running it uncached", exc)
        _bypass(st, "not_cacheable", shape.tables)
        shape.digest = None
        return _rebuilt(frozen, require_unique)
    except NotStorable as exc:
        log.debug("yokedcache: result not stored (%s)", exc)
        _bypass(st, "not_cacheable", shape.tables)
        if outer is not None:
            outer.add(shape.tables)
            outer.add(col.tables)
        return _rebuilt(frozen, require_unique)
    if shape.result is None:
        shape.roots = _compat.result_mappers(ox)
        shape.result = ResultShape(
            _compat.detached_metadata(frozen.metadata, result),
            _compat.result_attributes(frozen),
            _compat.supports_scalars(frozen),
            require_unique,
            reachable_mappers(shape.roots),
            _compat.selected_columns(ox.statement),
            None if ox.is_orm_statement else _compat.CORE_RESULT_CONTEXT,
        )
    known = shape.result.mappers
    for name, m in mappers.items():
        known.setdefault(name, m)
    if not col.tables <= shape.tables:  # eager loads read more tables than the statement
        shape.tables = shape.tables | col.tables
    if outer is not None:
        outer.add(shape.tables)
        outer.add(col.tables)
        if col.unknown:
            outer.mark_unknown(col.unknown)
    tags = set(shape.tables) | col.tables | set(hint.tags) | set(st.tags)
    unknown = col.unknown if not hint.tables else None
    if snapshot is not None and not unknown and keyed and not (tags & st.written):
        store_under = st.view.store_snapshot(snapshot)
        if store_under is not None:
            ttl = hint.ttl if not isinstance(hint.ttl, type(DEFAULT_TTL)) else st.default_ttl
            cache = st.txn_cache()
            try:
                call_twin(
                    cache.store_sync,
                    cache.store,
                    key,
                    payload,
                    tags=tags,
                    snapshot=store_under,
                    ttl=ttl,
                    lock=look.lock,
                )
            except SerializationError as exc:
                log.debug("yokedcache: result not cacheable: %s", exc)
    return shape.result.build(
        frozen.data,
        ox.statement,
        _unbuffered(ox),
        (lambda obj: instance_state(obj).key not in before) if before is not None else _all_new,
    )


def _unbuffered(ox: ORMExecuteState) -> Session | None:
    """The session a result of *ox* stays tied to while it is fetched: SQLAlchemy's ORM
    results build their objects as rows are fetched, unless ``prebuffer_rows`` is set."""
    eo = ox.local_execution_options
    if eo.get("prebuffer_rows") or ox.execution_options.get("prebuffer_rows"):
        return None
    return ox.session


def _was_built_new(added: list[Any], obj: object) -> bool:
    """Whether *obj* is one :func:`rows_from_entry` put into the identity map, by the
    ``added`` it filled (asked only when the session's identity map changed while the result
    was fetched)."""
    return any(o is obj and f for built, fresh in added for o, f in zip(built, fresh))


def _all_new(obj: object) -> bool:
    return True


def _rebuilt(frozen: Any, require_unique: bool) -> Result[Any]:
    """The caller's result again, from *frozen* (with SQLAlchemy's unique() demand)."""
    result: Result[Any] = frozen()
    if require_unique:
        ResultShape.demand_unique(result)
    return result


class _GreenletIO:
    """Flight waits inside an AsyncSession's greenlet: awaited, never blocking the loop."""

    def claim(self, key: str) -> Any:
        return stampede.FLIGHTS.aclaim(key)

    def release(self, key: str) -> None:
        stampede.FLIGHTS.arelease(key)

    def wait(self, handle: Any, timeout: float) -> None:
        try:
            _await(asyncio.wait_for(handle.wait(), timeout))
        except TimeoutError:
            pass

    def sleep(self, seconds: float) -> None:
        _await(asyncio.sleep(seconds))

    def try_lock(self, cache: YokedCache, key: str) -> tuple[bool, str | None]:
        return _await(cache.try_lock(key, stampede.LOCK_SECONDS))

    def unlock(self, cache: YokedCache, key: str, token: str | None) -> None:
        _await(cache.unlock(key, token))

    def is_locked(self, cache: YokedCache, key: str) -> bool:
        return _await(cache.is_locked(key))


_greenlet_io = _GreenletIO()
