"""``explain``: what a caching session would do with a statement, without running it.

The answer comes from the same steps the read listener takes (hints, the cacheability
checks, the statement's shape and key), followed by a look at the entry
(:func:`~yokedcache_sa.peek.peek_sync`). Nothing is sent to the database and nothing is
stored; the store is only read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.orm import ORMExecuteState, Query, Session
from sqlalchemy.sql import coercions, roles
from sqlalchemy.util import immutabledict

from ..cache import DEFAULT_TTL, YokedCache
from ..errors import ArgumentTypeError
from ..peek import EntryState, peek, peek_sync
from ..tags import ALL_TAG, tag_ids
from . import _compat
from .bindstate import UNWATCHED, connection_taint, connection_variant
from .options import Hint, hint_from
from .pgwrites import RECHECK_KEY
from .reads import _cacheable, _on_execute
from .shapes import _key, _shape_for
from .state import SessionState, state_of

__all__ = ["Explanation", "aexplain", "explain"]


@dataclass(frozen=True)
class Explanation:
    """What a caching session would do with one statement.

    Attributes:
        cacheable: a read through *session* would be looked up and stored.
        reason: why not, precisely (empty when cacheable).
        key: the cache key (None when no key is computed); ``digest`` is the statement
            structure's part of it (shared by every parameter value).
        tables: the tables the statement reads (``table:`` tags); ``tags``: every tag the
            entry carries (tables, hint and session tags, and ``*``).
        ttl: seconds the entry lives (None: no expiry).
        entry: the store's entry under *key* (None when no key was computed).
        notes: other facts that change what happens (pending changes to flush, …).

    Added in 0.x.
    """

    cacheable: bool
    reason: str
    key: str | None = None
    digest: str | None = None
    tables: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    ttl: float | None = None
    entry: EntryState | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def exists(self) -> bool:
        """An entry is stored under the key (fresh or not)."""
        return bool(self.entry is not None and self.entry.exists)

    @property
    def fresh(self) -> bool:
        """A lookup now would serve the stored entry."""
        return bool(self.entry is not None and self.entry.fresh)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for JSON)."""
        e = self.entry
        return {
            "cacheable": self.cacheable,
            "reason": self.reason,
            "key": self.key,
            "digest": self.digest,
            "tables": list(self.tables),
            "tags": list(self.tags),
            "ttl": self.ttl,
            "exists": self.exists,
            "fresh": self.fresh,
            "entry": None
            if e is None
            else {
                "exists": e.exists,
                "fresh": e.fresh,
                "reason": e.reason,
                "tags": list(e.tags),
                "age_seconds": e.age_seconds,
                "size_bytes": e.size_bytes,
            },
            "notes": list(self.notes),
        }


def _uncacheable_reason(ox: ORMExecuteState, st: SessionState, hint: Hint) -> str:
    """Why :func:`.session._cacheable` says no, in words (same conditions, same order)."""
    if not hint.enabled:
        return "opted out: NoCache() / execution_options(yokedcache=False or enabled=False)"
    if not ox.is_select:
        return "not a SELECT: writes and other statements are never cached"
    if ox.is_column_load:
        return "a deferred-column or expired-attribute load (refreshes an object in place)"
    eo = ox.execution_options
    populate_existing, yield_per = _compat.existing_and_yield_per(ox.load_options)
    if eo.get("populate_existing") or populate_existing:
        return "populate_existing: the caller asks for the database's current rows"
    if eo.get("yield_per") or yield_per:
        return "yield_per: a streamed result is never cached"
    if eo.get("stream_results"):
        return "stream_results: a streamed result is never cached"
    if eo.get("isolation_level") == "READ UNCOMMITTED":
        return "READ UNCOMMITTED: may read other transactions' uncommitted rows"
    if _compat.for_update_clause(ox.statement) is not None:
        return "SELECT … FOR UPDATE/SHARE: a locking read goes to the database"
    if st.dirty_reads:
        return "the transaction runs at READ UNCOMMITTED"
    return "not cacheable"


def _exec_state(
    session: Session, statement: Any, params: Any, execution_options: dict[str, Any]
) -> ORMExecuteState:
    """The ORMExecuteState ``session.execute`` would give its listeners (nothing runs)."""
    statement = coercions.expect(roles.StatementRole, statement)
    bind_arguments: dict[str, Any] = {}
    compile_state_cls: Any = _compat.orm_compile_state_class(statement)
    if compile_state_cls is None:
        bind_arguments["clause"] = statement
    # Session-level execution options exist from SQLAlchemy 2.1 on
    session_options = getattr(session, "execution_options", None)
    if session_options is None:
        eo: Any = immutabledict(execution_options)
    else:
        eo = session_options.union(execution_options)
    if compile_state_cls is not None:
        out = compile_state_cls.orm_pre_session_exec(
            session, statement, params, eo, bind_arguments, True
        )
        statement, eo = out[0], out[1]
        if len(out) > 2:  # SQLAlchemy 2.1 also returns the parameters
            params = out[2]
    events: list[Any] = list(session.dispatch.do_orm_execute)
    ox = ORMExecuteState(session, statement, params, eo, bind_arguments, compile_state_cls, events)
    ours = [i for i, fn in enumerate(events) if fn is _on_execute]
    if ours:  # user listeners after ours shape the statement before it is keyed
        _compat.start_listeners_at(ox, ours[0])
        _ran, result = _compat.run_later_orm_listeners(ox)
        if result is not None:
            raise _Answered()
    return ox


class _Answered(Exception):
    """A do_orm_execute listener returned a result itself."""


def _normalize(statement_or_query: Any, params: Any) -> tuple[Any, Any, dict[str, Any], Any]:
    if isinstance(statement_or_query, Query):
        q = statement_or_query
        stmt, merged = _compat.query_statement_and_params(q)
        if params:
            merged.update(params)
        return stmt, merged or None, {_compat.LOAD_OPTIONS_KEY: q.load_options}, q.session
    return statement_or_query, params, {}, None


def _plan(
    statement_or_query: Any,
    session: Session | None,
    cache: YokedCache | None,
    params: Any,
) -> tuple[Explanation, YokedCache | None, int | None]:
    stmt, params, eo, q_session = _normalize(statement_or_query, params)
    session = session if session is not None else q_session
    if session is None:
        raise ArgumentTypeError(
            "explain() needs session= (the session that would run the statement)"
        )
    session = getattr(session, "sync_session", session)  # an AsyncSession's Session
    st = state_of(session)
    if st is None:
        return Explanation(False, "the session does not cache (not a CachingSession)"), None, None
    if not st.enabled:
        return Explanation(False, "caching is disabled for this session"), None, None
    if st.tainted is not None:
        return (
            Explanation(False, f"the transaction's connection ran {st.tainted!r} (vary_on)"),
            None,
            None,
        )
    tx = _compat.current_transaction(session)
    if tx is not None and not tx.is_active:
        return Explanation(False, "the transaction is inactive: roll it back"), None, None
    for ref in st.conns:
        conn = ref()
        if conn is not None and "_yc_failed" in conn.__dict__:
            return Explanation(False, "a statement failed in this transaction"), None, None
    try:
        ox = _exec_state(session, stmt, params, eo)
    except _Answered:
        return Explanation(False, "a do_orm_execute listener answers this statement"), None, None
    hint = hint_from(ox.user_defined_options, ox.execution_options)
    if not _cacheable(ox, st, hint):
        return Explanation(False, _uncacheable_reason(ox, st, hint)), None, None
    notes: list[str] = []
    if any((c := ref()) is not None and RECHECK_KEY in c.__dict__ for ref in st.conns):
        notes.append(
            "a write to a table with triggers or cascades ran: the read first asks PostgreSQL "
            "what it changed, and a table it changed bypasses the cache"
        )
    if session.autoflush and (session.new or session.dirty or session.deleted):
        notes.append(
            "pending changes are flushed before the read: their tables then bypass the "
            "cache until the transaction ends"
        )
    if ALL_TAG in st.written:
        return (
            Explanation(False, "this transaction ran SQL whose tables are unknown", notes=()),
            None,
            None,
        )
    statement: Any = ox.statement
    ck = _compat.cache_key(statement)
    if ck is None:
        return Explanation(False, "the statement has no SQLAlchemy cache key"), None, None
    bind = session.get_bind(**_compat.execution_bind_arguments(ox))
    shape = _shape_for(statement, ck.key, bind, hint)
    tables = tuple(sorted(shape.tables))
    if shape.digest is None:
        return Explanation(False, shape.why_not, tables=tables), None, None
    own = shape.tables & st.written
    if own:
        why = f"reads tables this transaction wrote ({', '.join(sorted(own))}) until it ends"
        return Explanation(False, why, tables=tables), None, None
    if isinstance(bind, Connection):
        taint = connection_taint(bind)
        if taint == UNWATCHED:
            why = (
                "the bound connection was checked out before yokedcache watched its engine: "
                "call watch_engine(engine) before opening it"
            )
            return Explanation(False, why), None, None
        if taint is not None and st.vary_on is None:
            return Explanation(False, "the bound connection ran state-changing SQL"), None, None
        variant = connection_variant(bind)
    else:
        variant = st.variants.get(bind) if st.variants else None
    vary = st.vary_on(session) if st.vary_on is not None else None
    key = _key(
        shape,
        ck,
        ox,
        ox.load_options,
        [sorted({*hint.tags, *st.tags}), sorted(hint.tables)],
        (variant, vary) if variant is not None or vary is not None else None,
    )
    if key is None:
        why = "a parameter value cannot be part of a key (not serializable)"
        return Explanation(False, why, digest=shape.digest, tables=tables), None, None
    try:
        resolved = cache.resolved() if cache is not None else st.cache
    except LookupError:
        return Explanation(False, "no cache configured for this session"), None, None
    ttl_choice = hint.ttl if not isinstance(hint.ttl, type(DEFAULT_TTL)) else st.default_ttl
    ttl = resolved.ttl(ttl_choice)
    tags = tag_ids({*shape.tables, *hint.tags, *st.tags})
    engine = bind.engine if isinstance(bind, Connection) else bind
    horizon = st.view.horizon_of(engine)
    if st.view.snapshot_isolated and not st.view.has_snapshot(engine):
        notes.append("the transaction's first read of this database goes to the database")
    plan = Explanation(True, "", key, shape.digest, tables, tags, ttl, notes=tuple(notes))
    return plan, resolved, horizon


def explain(
    statement_or_query: Any,
    *,
    session: Session | Any | None = None,
    cache: YokedCache | None = None,
    params: Any = None,
) -> Explanation:
    """Say what *session* would do with *statement_or_query*: key, tables, tags, TTL,
    cacheable or why not, whether an entry exists and whether it is fresh now.

    Args:
        statement_or_query: a ``select()`` (or any executable) or a legacy ``Query``.
        session: the session that would run it (a ``CachingSession``, an instrumented
            Session, or an ``AsyncSession`` over one); a Query's own session by default.
        cache: look the entry up in this cache instead of the session's.
        params: the parameters ``session.execute(statement, params)`` would get.

    Runs no SQL and stores nothing; user ``do_orm_execute`` listeners run (they shape the
    statement, as they would before the cache keys it). Blocking I/O (one read of the
    store): use :func:`aexplain` in async code.

    Example::

        e = explain(select(User).where(User.id == 5), session=session)
        e.cacheable, e.reason, e.tables, e.exists, e.fresh

    Added in 0.x.
    """
    plan, resolved, horizon = _plan(statement_or_query, session, cache, params)
    if resolved is None or plan.key is None:
        return plan
    return _with_entry(plan, peek_sync(resolved, plan.key, horizon))


async def aexplain(
    statement_or_query: Any,
    *,
    session: Session | Any | None = None,
    cache: YokedCache | None = None,
    params: Any = None,
) -> Explanation:
    """Async twin of :func:`explain` (reads the store with the asyncio client)."""
    plan, resolved, horizon = _plan(statement_or_query, session, cache, params)
    if resolved is None or plan.key is None:
        return plan
    return _with_entry(plan, await peek(resolved, plan.key, horizon))


def _with_entry(plan: Explanation, entry: EntryState) -> Explanation:
    return Explanation(
        plan.cacheable,
        plan.reason,
        plan.key,
        plan.digest,
        plan.tables,
        plan.tags,
        plan.ttl,
        entry,
        plan.notes,
    )
