"""The read listener: plan and key a cacheable SELECT, look it up, and hand the lookup to
:mod:`.serving` (a hit rebuilt, or a miss run and stored)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.result import Result
from sqlalchemy.orm import ORMExecuteState

from ..cache import MISSING, Lookup, YokedCache
from ..tags import ALL_TAG
from . import _compat, shadow
from ._greenlet import await_ as _await
from ._greenlet import in_greenlet
from .bindstate import UNWATCHED, connection_taint, connection_variant
from .collect import _collector
from .isolation import _horizon
from .options import DEFAULT_HINT, EXECUTION_OPTION, Hint, hint_from
from .pgwrites import RECHECK_KEY, settle
from .serving import READ_LISTENERS, Planned, _bypass, _miss, _served, _uncached
from .shapes import _key, _shape_for
from .state import STATE_KEY, SessionState
from .watch import watch_engine

log = logging.getLogger("yokedcache_sa")


# -- the read listener ---------------------------------------------------------------------


_BYPASS_OPTIONS: Final = frozenset(
    {"populate_existing", "yield_per", "stream_results", "isolation_level"}
)


def _cacheable(ox: ORMExecuteState, st: SessionState, hint: Hint, lo: Any = None) -> bool:
    """Whether *ox* may be served or stored (*lo*: its load options, when read already)."""
    if not hint.enabled or not ox.is_select or ox.is_column_load:
        return False
    if lo is None:
        lo = ox.load_options
    # the statement's and the call's options, with what earlier listeners updated
    eo: Mapping[str, Any] = ox.execution_options
    local = ox.local_execution_options
    if not _BYPASS_OPTIONS.isdisjoint(eo) or not _BYPASS_OPTIONS.isdisjoint(local):
        eo = {**eo, **local}
        if (
            eo.get("populate_existing")
            or eo.get("yield_per")
            or eo.get("stream_results")
            or eo.get("isolation_level") == "READ UNCOMMITTED"
        ):
            return False
    populate_existing, yield_per = _compat.existing_and_yield_per(lo)
    if populate_existing or yield_per:
        return False
    return _compat.for_update_clause(ox.statement) is None and not st.dirty_reads


def _on_execute(ox: ORMExecuteState) -> Result[Any] | None:
    st: SessionState | None = ox.session.__dict__.get(STATE_KEY)  # state_of(), inlined
    if st is None:
        return None
    st.executions += 1
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
    # returns a result even when it does not cache (running it as planned runs no listener;
    # unlike invoke_statement() it passes on the options SQLAlchemy would).
    return result if result is not None else _compat.execute_as_planned(ox)


READ_LISTENERS.add(_on_execute)


def _serve(ox: ORMExecuteState, st: SessionState) -> Result[Any] | None:
    session = ox.session
    tx = _compat.current_transaction(session)
    if tx is not None and not tx.is_active:
        return None  # e.g. after a failed flush: SQLAlchemy raises PendingRollbackError
    for ref in st.conns:
        conn = ref()
        if conn is None:
            continue
        d = conn.__dict__
        if "_yc_failed" in d:
            _bypass(st, "failed_transaction")
            return None  # a statement failed in this transaction: let the database answer
    statement: Any = ox.statement
    # ORMExecuteState.user_defined_options, when the statement may have any (it builds lists)
    user_options, lo, with_options = _compat.options_of(ox, statement)
    eo = ox.execution_options
    hint = hint_from(user_options, eo) if user_options or EXECUTION_OPTION in eo else DEFAULT_HINT
    if not _cacheable(ox, st, hint, lo):
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
    _compat.autoflush_before_query(session, lo)
    for ref in st.conns:  # after the autoflush, whose writes may have triggers too
        conn = ref()
        if conn is not None and RECHECK_KEY in conn.__dict__:
            settle(conn)  # what a write's triggers changed: own writes, not served
    if ALL_TAG in st.written:
        _bypass(st, "own_writes")
        return None
    ck = _compat.cache_key(statement)
    if ck is None:
        _bypass(st, "not_cacheable")
        return None
    # resolved once per statement: a get_bind() override (a replica router) is asked once,
    # as without the cache, and a miss runs where the key says (serving.bind_reused)
    bind_args: dict[str, Any] | None = None
    bind = _compat.simple_bind(session, ox.bind_arguments)
    if bind is None:
        bind_args = _compat.execution_bind_arguments(ox)
        bind = session.get_bind(**bind_args)
    planned: Planned = (bind_args, bind, None)  # bypasses run on it too
    shape = _shape_for(statement, ck.key, bind, hint)
    if shape.digest is None:
        _bypass(st, "not_cacheable", shape.tables)
        return _uncached(ox, planned)
    if shape.tables & st.written:
        _bypass(st, "own_writes", shape.tables)
        return _uncached(ox, planned)
    on_connection = isinstance(bind, Connection)
    if on_connection:  # a session bound to a connection: not begun yet
        taint = connection_taint(bind)
        if taint is not None and (st.vary_on is None or taint == UNWATCHED):
            _bypass(st, "connection_state", shape.tables)
            return _uncached(ox, planned)
        variant = connection_variant(bind)
    else:
        variant = st.variants.get(bind) if st.variants else None
    vary = st.vary_on(session) if st.vary_on is not None else None
    key = _key(
        shape,
        ck,
        ox,
        lo,
        _tag_hints(hint, st) if hint.tags or st.tags or hint.tables else _NO_TAG_HINTS,
        (variant, vary) if variant is not None or vary is not None else None,
    )
    if key is None:
        _bypass(st, "not_cacheable", shape.tables)
        return _uncached(ox, planned)
    try:
        cache = st._txn_cache or st.txn_cache()
    except LookupError:
        log.warning("yokedcache: no cache configured for this session; reading uncached")
        return _uncached(ox, planned)
    outer = _collector.get()
    engine = bind.engine if on_connection else bind
    horizon, begun = _horizon(st, bind, engine, session)
    if in_greenlet():
        look = _await(cache.lookup(key, horizon=horizon, lock=True))
    else:
        look = cache.lookup_sync(key, horizon=horizon, lock=True)
    if look.value is not MISSING and shape.result is not None:
        result = _served(ox, st, shape, look, outer, bool(with_options))
        if result is not None:
            rate = cache.config.shadow_read_rate
            if rate and shadow.sample(rate):
                _shadow(ox, st, cache, engine, bind, key, look, horizon)
            return result
    watch_engine(engine)  # before the miss checks a connection out (a no-op once watched)
    return _miss(
        ox, st, shape, hint, cache, key, look, horizon, outer, variant, (bind_args, bind, begun)
    )


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
        or st.view.snapshot_isolated
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
