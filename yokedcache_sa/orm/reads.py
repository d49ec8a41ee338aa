"""The read listener: serve a cacheable SELECT from the cache, or run it and store it."""

from __future__ import annotations

import asyncio
import copy
import logging
import weakref
from collections.abc import Iterable
from contextlib import nullcontext
from typing import Any, Final

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.result import Result
from sqlalchemy.orm import ORMExecuteState, Session

from .. import stampede
from ..cache import DEFAULT_TTL, MISSING, Lookup, YokedCache
from ..errors import SerializationError
from ..logs import key_digest
from ..observe import Bypass, BypassReason, tables_in
from ..stampede import sync_io
from ..tags import ALL_TAG, Snapshot
from . import _compat, shadow
from ._greenlet import await_ as _await
from ._greenlet import call_twin, in_greenlet
from .bindstate import UNWATCHED, connection_taint, connection_variant
from .collect import Collector, _collector, _mark_strict, reading_collector
from .engine_events import watch_engine
from .options import Hint, hint_from
from .results import (
    NotCacheable,
    NotStorable,
    ResultShape,
    loader_context,
    reachable_mappers,
    rows_from_entry,
    rows_to_entry,
)
from .shapes import _key, _Shape, _shape_for
from .state import _STATEMENT_LEVEL, SessionState, state_of

log = logging.getLogger("yokedcache_sa")


# -- the read listener ---------------------------------------------------------------------


def _cacheable(ox: ORMExecuteState, st: SessionState, hint: Hint) -> bool:
    if not hint.enabled or not ox.is_select or ox.is_column_load:
        return False
    eo = ox.execution_options
    lo = ox.load_options
    if (
        eo.get("populate_existing")
        or eo.get("yield_per")
        or eo.get("stream_results")
        or eo.get("isolation_level") == "READ UNCOMMITTED"
        or getattr(lo, "_populate_existing", False)
        or getattr(lo, "_yield_per", None)
    ):
        return False
    return getattr(ox.statement, "_for_update_arg", None) is None and not st.dirty_reads


def _bypass(st: SessionState, reason: BypassReason, tables: Iterable[str] = ()) -> None:
    """Report a read that goes around the cache (when the cache has listeners)."""
    try:
        hooks = st.cache.hooks
    except LookupError:
        return
    if hooks.active:
        hooks.emit(Bypass(reason, tables_in(tables)))


def _on_execute(ox: ORMExecuteState) -> Result[Any] | None:
    st = state_of(ox.session)
    if st is None:
        return None
    if not st.enabled or st.tainted is not None:
        if ox.is_select:
            _bypass(st, "opt_out" if not st.enabled else "connection_state")
        return None
    ran, result = _compat.run_later_orm_listeners(ox)
    if not ran:
        return _serve(ox, st)
    if result is None:
        result = _serve(ox, st)
    # The later listeners have run: SQLAlchemy must not run them again, so this listener
    # returns a result even when it does not cache (invoke_statement runs no listener).
    return result if result is not None else ox.invoke_statement()


def _serve(ox: ORMExecuteState, st: SessionState) -> Result[Any] | None:
    session = ox.session
    tx = _compat.current_transaction(session)
    if tx is not None and not tx.is_active:
        return None  # e.g. after a failed flush: SQLAlchemy raises PendingRollbackError
    for ref in st.conns:
        conn = ref()
        if conn is not None and "_yc_failed" in conn.__dict__:
            _bypass(st, "failed_transaction")
            return None  # a statement failed in this transaction: let the database answer
    hint = hint_from(ox.user_defined_options, ox.execution_options)
    if not _cacheable(ox, st, hint):
        if ox.is_select and not ox.is_column_load:
            _bypass(st, "opt_out" if not hint.enabled else "not_cacheable")
        return None
    if tx is None:
        if not session.autobegin or not st.lazy_begin:
            # raises SQLAlchemy's own error with autobegin=False, as the read would
            _compat.autobegin(session)
        else:
            # The database read would begin the session's transaction; beginning one costs
            # more than a hit, so CachingSession.rollback() begins it late instead.
            st.unbegun = True
    # The uncached query would autoflush first: pending changes become writes that make
    # their tables bypass the cache for the rest of the transaction.
    # Only a session with changes: a miss runs the statement, which autoflushes again.
    if (
        session.autoflush
        and getattr(ox.load_options, "_autoflush", True)
        and not session._is_clean()
    ):
        session._autoflush()
    if ALL_TAG in st.written:
        _bypass(st, "own_writes")
        return None
    statement: Any = ox.statement
    ck = statement._generate_cache_key()
    if ck is None:
        _bypass(st, "not_cacheable")
        return None
    bind = session.get_bind(**ox.bind_arguments)
    shape = _shape_for(statement, ck.key, bind, hint)
    if shape.digest is None:
        _bypass(st, "not_cacheable", shape.tables)
        return None
    if shape.tables & st.written:
        _bypass(st, "own_writes", shape.tables)
        return None
    if isinstance(bind, Connection):  # a session bound to a connection: not begun yet
        taint = connection_taint(bind)
        if taint is not None and (st.vary_on is None or taint == UNWATCHED):
            _bypass(st, "connection_state", shape.tables)
            return None
        variant = connection_variant(bind)
    else:
        variant = st.variants.get(bind) if st.variants else None
    vary = st.vary_on(session) if st.vary_on is not None else None
    key = _key(
        shape,
        ck,
        ox,
        _tag_hints(hint, st) if hint.tags or st.tags or hint.tables else _NO_TAG_HINTS,
        (variant, vary) if variant is not None or vary is not None else None,
    )
    if key is None:
        _bypass(st, "not_cacheable", shape.tables)
        return None
    try:
        cache = st._txn_cache or st.txn_cache()
    except LookupError:
        log.warning("yokedcache: no cache configured for this session; reading uncached")
        return None
    outer = _collector.get()
    engine = bind.engine if isinstance(bind, Connection) else bind
    horizon = _horizon(st, bind, engine, session, ox)
    if in_greenlet():
        look = _await(cache.lookup(key, horizon=horizon, lock=True))
    else:
        look = cache.lookup_sync(key, horizon=horizon, lock=True)
    if look.value is not MISSING and shape.result is not None:
        result = _served(ox, st, shape, look, outer)
        if result is not None:
            rate = cache.config.shadow_read_rate
            if rate and shadow.sample(rate):
                _shadow(ox, st, cache, engine, bind, key, look, horizon)
            return result
    watch_engine(engine)  # before the miss checks a connection out (a no-op once watched)
    return _miss(ox, st, shape, hint, cache, key, look, horizon, outer, variant)


def _shadow(
    ox: ORMExecuteState,
    st: SessionState,
    cache: YokedCache,
    engine: Engine,
    bind: Any,
    key: str,
    look: Lookup,
    horizon: int | None,
) -> None:
    """Queue a shadow read of this hit, unless its transaction may see other data than a
    fresh plain session would (snapshot-isolated, written, bound to a connection)."""
    if (
        horizon is not None
        or st.snapshot_isolated
        or st.written
        or isinstance(bind, Connection)
        or look.snapshot is None
    ):
        return
    shadow.submit_hit(
        cache,
        engine,
        key,
        ox.statement,
        ox.parameters,
        dict(ox.execution_options),
        look.value,
        look.tags,
        look.snapshot,
    )


def _tag_hints(hint: Hint, st: SessionState) -> list[Any]:
    """The hint and session tags that are part of a key (SQLAlchemy's key ignores them)."""
    if not (hint.tags or st.tags or hint.tables):
        return _NO_TAG_HINTS
    return [sorted({*hint.tags, *st.tags}), sorted(hint.tables)]


_NO_TAG_HINTS: Final[list[Any]] = [[], []]


def _served(
    ox: ORMExecuteState,
    st: SessionState,
    shape: _Shape,
    look: Lookup,
    outer: Collector | None,
) -> Result[Any] | None:
    """The result rebuilt from a fresh entry, or None when it cannot serve this session."""
    assert shape.result is not None
    if st.written and st.written_ids().intersection(look.tags):
        _bypass(st, "own_writes", look.tags)
        return None  # e.g. an eager load of a table this transaction wrote
    session = ox.session
    try:
        rows = rows_from_entry(look.value, shape.result, session, loader_context(ox.statement))
    except (NotCacheable, ValueError, TypeError, KeyError, IndexError) as exc:
        log.warning("yokedcache: ignoring an unusable cached result: %s", exc)
        return None
    if outer is not None:
        outer.add(shape.tables)
        outer.add(t for t in look.tags if t.startswith("table:"))
        if st.vary_on is not None:
            # served for this session's vary_on state, which an @cached key lacks
            _mark_strict(outer, "a read keyed by the session's vary_on state")
    return shape.result.build(rows)


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
) -> Result[Any] | None:
    """Run the statement (or wait for whoever computes *key*) and store its result."""

    def lookup(lock: bool = False) -> Lookup:
        return call_twin(cache.lookup_sync, cache.lookup, key, horizon=horizon, lock=lock)

    def compute(look: Lookup) -> Result[Any] | None:
        if st.written and st.written_ids().intersection(look.tags):
            look = look._replace(snapshot=None)  # reads own uncommitted writes: never store
        return _run_and_store(ox, st, shape, hint, key, look, outer, variant)

    def on_hit(look: Lookup) -> Result[Any] | None:
        result = _served(ox, st, shape, look, outer) if shape.result is not None else None
        return result if result is not None else compute(look)

    if look.snapshot is None or (st.written and st.written_ids().intersection(look.tags)):
        # nothing to coordinate: the cache is unavailable, or this transaction reads its own
        # writes (never stored)
        if look.lock is not None:
            call_twin(cache.unlock_sync, cache.unlock, key, look.lock.token)
        return compute(look)
    if horizon == _NOTHING_VALID and look.lock is None:
        # before its snapshot exists nobody's result can serve this transaction: waiting
        # for (or locking out) another computation of the key would gain nothing
        return compute(look)
    io = _greenlet_io if in_greenlet() else sync_io
    return stampede.run_sync(cache, key, lookup, compute, on_hit, look, io)


_NOTHING_VALID: Final = -1  # a horizon no entry satisfies (tag versions are >= 0)
_learned: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()


def _isolation_of(bind: Any) -> str:
    iso = bind.get_execution_options().get("isolation_level")
    if not iso:
        dialect = bind.dialect
        iso = getattr(dialect, "_on_connect_isolation_level", None)
        iso = iso or getattr(dialect, "default_isolation_level", None)
    return str(iso or "").upper()


def _snapshot_isolated(conn: Connection) -> bool:
    """Whether *conn*'s transaction reads one snapshot (REPEATABLE READ, SERIALIZABLE)."""
    if _isolation_of(conn) in _STATEMENT_LEVEL:
        return False
    if conn.dialect.name == "sqlite":
        # sqlite3's legacy transaction control runs SELECTs outside a transaction until the
        # first write, after which the write lock keeps every other writer out: no snapshot
        # to be consistent with. (With BEGIN issued by the application it is one.)
        dbapi = conn.connection.dbapi_connection
        legacy = getattr(dbapi, "autocommit", -1) == -1  # sqlite3.LEGACY_TRANSACTION_CONTROL
        if legacy and getattr(dbapi, "isolation_level", None) is not None:
            return False
    return True


def _predicted(bind: Any) -> bool | None:
    """Whether a transaction on *bind* (not begun yet) will be snapshot-isolated; None when
    only a connection can tell (engine never connected, SQLite's transaction control)."""
    if isinstance(bind, Connection):
        return _snapshot_isolated(bind)
    known = _learned.get(bind)
    if known is not None:
        return known
    iso = _isolation_of(bind)
    if not iso or bind.dialect.name == "sqlite":
        return None
    return iso not in _STATEMENT_LEVEL


def _horizon(
    st: SessionState, bind: Any, engine: Engine, session: Session, ox: ORMExecuteState
) -> int | None:
    """The horizon a lookup must respect: None when the transaction is not
    snapshot-isolated, and one no entry satisfies while its snapshot does not exist yet.

    When the isolation of a transaction on *bind* cannot be predicted, begins it (the
    after_begin listener learns it)."""
    if engine in st.snapshots:
        return st.horizon if st.horizon is not None else _NOTHING_VALID
    isolated = st.isolated.get(engine)
    if isolated is None:
        isolated = _predicted(bind)
        if isolated is None:
            session.connection(bind_arguments=ox.bind_arguments)  # after_begin learns it
            if engine in st.snapshots:
                return st.horizon if st.horizon is not None else _NOTHING_VALID
            isolated = st.isolated.get(engine, True)
    # No hit before the database snapshot exists: it may be taken after a commit the
    # cached data predates. The first read goes to the database and starts it.
    return _NOTHING_VALID if isolated else None


def _detached_metadata(metadata: Any, result: Any) -> Any:
    """*metadata* without what ties it to the run that made it.

    The shape outlives the run in the module-level memo. SQLAlchemy's ORM metadata makes its
    ``unique()`` filters with a closure over the loading context, which holds the caller's
    Session and so the connection: the filters are made once, here, and kept instead.
    """
    make = getattr(metadata, "_create_unique_filters", None)
    if make is None:
        return metadata
    filters = make(result)
    detached = copy.copy(metadata)
    detached._create_unique_filters = lambda _result, _f=tuple(filters): list(_f)
    return detached


def _run_and_store(
    ox: ORMExecuteState,
    st: SessionState,
    shape: _Shape,
    hint: Hint,
    key: str,
    look: Lookup,
    outer: Collector | None,
    variant: str | None,
) -> Result[Any] | None:
    session = ox.session
    snapshot = look.snapshot
    if snapshot is not None and not st.conn_begun:
        st.seq_before_begin = snapshot.seq
    conn = session.connection(bind_arguments=ox.bind_arguments)
    # Beginning may have shown that the connection is not the one the key describes (a
    # tainted pooled connection, connection-level options): run it, but do not store it.
    keyed = st.tainted is None and connection_variant(conn) == variant
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
    with span, reading_collector() as col:
        result = _compat.execute_as_planned(ox)
        # Joined eager loads of collections make SQLAlchemy demand unique() of the caller
        # (a filter that raises on the first row): the entry holds every row, the result
        # built from it makes the same demand.
        require_unique = _compat.take_unique_demand(result)
        frozen = result.freeze()
    try:
        payload, mappers = rows_to_entry(frozen.data, frozen._source_supports_scalars, before)
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
        shape.roots = tuple(ox.all_mappers)
        shape.result = ResultShape(
            _detached_metadata(frozen.metadata, result),
            frozen._attributes,
            frozen._source_supports_scalars,
            require_unique,
            reachable_mappers(shape.roots),
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
    if (
        snapshot is not None
        and not unknown
        and not st.no_store
        and keyed
        and not (tags & st.written)
    ):
        seq = snapshot.seq
        if st.snapshot_isolated and st.horizon is not None:
            seq = min(seq, st.horizon)
        elif st.snapshot_isolated:
            seq = -1  # horizon unknown: nothing is provably fresh
        if seq >= 0:
            ttl = hint.ttl if not isinstance(hint.ttl, type(DEFAULT_TTL)) else st.default_ttl
            cache = st.txn_cache()
            try:
                call_twin(
                    cache.store_sync,
                    cache.store,
                    key,
                    payload,
                    tags=tags,
                    snapshot=Snapshot(snapshot.epoch, seq),
                    ttl=ttl,
                    lock=look.lock,
                )
            except SerializationError as exc:
                log.debug("yokedcache: result not cacheable: %s", exc)
    return shape.result.build(frozen.data)


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
