"""CachingSession, CachingQuery and the listeners that serve, store and invalidate.

Reads (``do_orm_execute``): a cacheable SELECT is looked up; on a miss it runs in a private
Session sharing the caller's connection and transaction (so the cached data are the rows the
database returned, untouched by objects already in the caller's identity map), is frozen to
plain data, stored under the snapshot observed *before* it ran, and thawed into the caller's
session — the same path a hit takes.

Writes (engine ``before_cursor_execute``): every INSERT/UPDATE/DELETE/DDL or raw SQL a session's
connection executes records its tables (plus FK-cascade and declared dependents); just before
the database COMMIT they are marked "being written" in one round trip; the root
``after_commit`` bumps them; a rollback releases them. Reads of tables
the open transaction wrote bypass the cache until the transaction ends.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
import logging
import re
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Generator, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import MetaData, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.result import Result
from sqlalchemy.orm import ORMExecuteState, Query, Session, SessionTransaction
from sqlalchemy.orm.interfaces import MapperProperty
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select

from .. import codec, flight
from ..cache import DEFAULT_TTL, MISSING, TTL, Lookup, YokedCache
from ..defaults import get_session_default_cache
from ..errors import InvalidationError, SerializationError
from ..flight import sync_io
from ..tags import ALL_TAG, Snapshot, table_tag, tag_id
from . import _compat, catalog, routines, sqltext, tracking
from ._bridge import await_ as _await
from ._bridge import bridge, in_greenlet
from .bindstate import TAINT_KEY, connection_variant, engine_identity, state_change
from .options import FromCache, Hint, NoCache, hint_from
from .results import (
    NotCacheable,
    ResultShape,
    freeze_rows,
    loader_context,
    per_object_strategy,
    reachable_mappers,
    thaw_rows,
)

__all__ = [
    "CachingQuery",
    "CachingSession",
    "SessionCache",
    "instrument_session",
    "reading_collector",
    "state_of",
]

log = logging.getLogger("yokedcache_sa")

STATE_KEY: Final = "_yokedcache_state"  # in the session's __dict__, not its .info
_STATEMENT_LEVEL = frozenset({"READ COMMITTED", "AUTOCOMMIT"})
_known_metadata: weakref.WeakSet[MetaData] = weakref.WeakSet()
_begin_counter = itertools.count(1)


# -- read collectors (tables read while something computes) --------------------------------


@dataclass
class Collector:
    """Tables read by SQL executed while it is active (nested collectors feed their parents)."""

    parent: Collector | None = None
    tables: set[str] = field(default_factory=set)
    unknown: str | None = None
    started_at: int = field(default_factory=lambda: next(_begin_counter))
    strict_snapshot: bool = False

    def add(self, tags: Iterable[str]) -> None:
        c: Collector | None = self
        tags = tuple(tags)
        while c is not None:
            c.tables.update(tags)
            c = c.parent

    def mark_unknown(self, why: str) -> None:
        c: Collector | None = self
        while c is not None:
            if c.unknown is None:
                c.unknown = why
            c = c.parent


_collector: contextvars.ContextVar[Collector | None] = contextvars.ContextVar(
    "yokedcache_collector", default=None
)


def current_collector() -> Collector | None:
    """The collector active in this context, if any."""
    return _collector.get()


class reading_collector:
    """Collect the tables read by SQL executed inside the ``with`` block."""

    def __init__(self, strict_snapshot: bool = False) -> None:
        self.collector = Collector(_collector.get(), strict_snapshot=strict_snapshot)
        self._token: contextvars.Token[Collector | None] | None = None

    def __enter__(self) -> Collector:
        self._token = _collector.set(self.collector)
        return self.collector

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _collector.reset(self._token)


# -- per-session state ---------------------------------------------------------------------


class SessionCache:
    """Cache settings and transaction bookkeeping of one session."""

    def __init__(
        self,
        cache: YokedCache | None,
        *,
        default_ttl: TTL = DEFAULT_TTL,
        tags: Iterable[str] = (),
        enabled: bool = True,
        vary_on: Callable[[Session], Hashable] | None = None,
    ) -> None:
        self._cache = cache
        self.default_ttl = default_ttl
        self.tags = tuple(tags)
        self.enabled = enabled
        self.vary_on = vary_on
        self._reset()

    @property
    def cache(self) -> YokedCache:
        """The cache this session uses (the default cache when none was given)."""
        c = self._cache if self._cache is not None else get_session_default_cache()
        return c._target()

    def _reset(self) -> None:
        self.writer: str | None = None
        self.marked: set[str] = set()
        self.written: set[str] = set()
        self.horizon: int | None = None
        self.candidate: int | None = None
        self.snapshot_isolated = False
        # per bind (engine) begun in this transaction: is it snapshot-isolated; and the binds
        # whose database snapshot exists (a consistent read of a table has run)
        self.isolated: dict[Any, bool] = {}
        self.snapshots: set[Any] = set()
        self.locking: set[Any] = set()  # binds whose every SELECT is a locking read
        self.dirty_reads = False
        self.conn_begun = False
        self.no_store = False
        self.db_commit_started = False
        self.committed = False
        self.autocommitted = False
        # PostgreSQL: per connection, the modification counters before this transaction's
        # first write; before COMMIT, tables whose counters moved are added to the writes
        self.pg_base: dict[int, dict[tuple[str, str, bool], int]] = {}
        self.conns: list[weakref.ref[Connection]] = []
        # SQL that changed connection state (SET, set_config) ran in this transaction or on
        # its pooled connection: nothing is served or stored (unless vary_on keys that state)
        self.tainted: str | None = None
        self.variants: dict[Engine, str] = {}  # connection-level schema_translate_map
        # served a hit while the session had no transaction (see _rollback)
        self.unbegun = False

    def taint(self, conn: Connection, why: str) -> None:
        """Stop serving and storing: *conn* runs with state the key does not capture."""
        if self.vary_on is not None or self.tainted is not None:
            return  # the application keys that state itself
        self.tainted = why
        info = conn.info
        if not info.get("yokedcache_logged"):
            info["yokedcache_logged"] = True
            log.info(
                "yokedcache: caching is off for this connection: it ran %r, which changes "
                "what queries return; pass vary_on=<callable returning that state> to "
                "CachingSession to cache per state",
                why,
            )

    # writes --------------------------------------------------------------------------------

    def written_ids(self) -> set[str]:
        """The backend tag ids of the tables written in the open transaction."""
        return {tag_id(t) for t in self.written}

    def note_written(self, tags: Iterable[str], autocommit: bool = False) -> None:
        """Record tables written by a statement about to run.

        The "being written" marks only have to be in place before the database COMMIT (they
        keep other processes from serving or storing old data between COMMIT and the version
        bump), so they are taken in one round trip just before it — or right away when the
        connection autocommits each statement.
        """
        tags = tracking.cascade_closure(tags, list(_known_metadata))
        self.written.update(tags)
        if autocommit:
            self.autocommitted = True  # the database commits it as it runs
            self.mark_pending()

    def mark_pending(self) -> None:
        """Take the marks on written tables not marked yet (before COMMIT)."""
        new = [t for t in self.written if t not in self.marked]
        if not new:
            return
        if self.writer is None:
            self.writer = YokedCache.new_writer()
        self.marked.update(new)
        cache = self.cache
        bridge(cache.begin_write_sync, cache.begin_write, sorted(new), self.writer)

    def finish(self, committed: bool) -> None:
        """End the transaction: bump marked tags after a commit, else release them."""
        committed = committed or self.autocommitted
        if committed:
            try:
                self.mark_pending()  # written but never marked (no COMMIT event was seen)
            except InvalidationError as exc:  # strict mode; the end_write below still runs
                log.error("yokedcache: %s", exc)
        marked, writer = sorted(self.marked), self.writer
        conns = self.conns
        self._reset()
        for ref in conns:
            conn = ref()
            if conn is not None:
                conn.__dict__.pop("_yc_state", None)
        if not marked or writer is None:
            return
        cache = self.cache
        if committed:
            try:
                bridge(cache.end_write_sync, cache.end_write, marked, writer)
            except InvalidationError as exc:
                # The commit happened; the cache keeps the tags pending (bypassed here,
                # retried) — see docs/consistency.md for what other processes may see.
                # The cache logs a WARNING when tags become pending and when delivered.
                log.debug("yokedcache: %s", exc)
        else:
            bridge(cache.release_sync, cache.release, marked, writer)


def state_of(session: Session) -> SessionCache | None:
    """The cache state of *session*, or None for a session that does not cache."""
    st: SessionCache | None = session.__dict__.get(STATE_KEY)
    return st


# -- statement shapes (in-process knowledge per statement structure) -----------------------


@dataclass
class _Shape:
    digest: str | None
    tables: frozenset[str]
    why_not: str = ""
    result: ResultShape | None = None
    roots: tuple[Any, ...] = ()


_shapes: OrderedDict[Any, _Shape] = OrderedDict()
_shapes_lock = threading.Lock()
_MAX_SHAPES = 2000
_bind_ids: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _bind_id(bind: Any) -> str:
    engine = bind.engine if isinstance(bind, Connection) else bind
    ident = _bind_ids.get(engine)
    if ident is None:
        ident = engine_identity(engine)
        _bind_ids[engine] = ident
    return ident


def _stable(obj: Any, out: list[str]) -> bool:
    """Append a process-independent rendering of a cache-key structure; False if impossible."""
    if isinstance(obj, tuple | list):
        out.append("(")
        for x in obj:
            if not _stable(x, out):
                return False
        out.append(")")
        return True
    mapper = getattr(obj, "class_manager", None)
    if mapper is not None and hasattr(obj, "local_table"):
        cls = obj.class_
        out.append(f"M<{cls.__module__}.{cls.__qualname__}:{obj.local_table}>")
        return True
    if isinstance(obj, MapperProperty):
        cls = obj.parent.class_
        out.append(f"P<{cls.__module__}.{cls.__qualname__}.{obj.key}>,")
        return True
    if isinstance(obj, types.CodeType):
        # lambda statements (SQLAlchemy's lazy loaders use them) key on their code object:
        # the same source yields the same bytecode, names and constants in every process
        out.append(f"C<{obj.co_filename}:{obj.co_firstlineno}:{obj.co_qualname}:")
        out.append(hashlib.blake2b(obj.co_code, digest_size=8).hexdigest())
        out.append(repr(obj.co_names))
        ok = _stable(tuple(obj.co_consts), out)
        out.append(">,")
        return ok
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        qual = getattr(obj, "__qualname__", "")
        if "<" in qual:  # lambdas and locals have no process-independent name
            return False
        out.append(f"F<{obj.__module__}.{qual}>,")
        return True
    r = repr(obj)
    if " at 0x" in r or " object at " in r:
        return False
    out.append(r)
    out.append(",")
    return True


def _make_shape(statement: Any, ck_key: Any, bind: Any, hint: Hint) -> _Shape:
    if not isinstance(statement, Select):
        return _Shape(None, frozenset(), "not a select()")
    try:
        r = tracking.render(statement, bind.dialect)
    except Exception as exc:  # cannot compile for this bind: let SQLAlchemy raise normally
        return _Shape(None, frozenset(), f"does not compile: {exc}")
    if state_change(r.sql) is not None:
        return _Shape(None, frozenset(), "changes connection state (set_config)")
    if r.text and not hint.tables:
        return _Shape(None, frozenset(), "contains text(); pass FromCache(tables=[...])")
    facts = tracking.facts_of_statement(r.core)
    if facts.written is None or facts.written:
        return _Shape(None, frozenset(), "writes (DML inside a CTE or SQL text)")
    tables = tracking.tags_of(r.tables)
    kinds = _function_kinds(facts.functions, bind, None)
    for name, kind in kinds.items():
        if kind is not routines.FunctionKind.READONLY:
            return _Shape(None, frozenset(), f"calls {name}(), not known to be read-only")
        tables = tables | routines.declared_reads(name)
    for t in r.tables:
        md = getattr(t, "metadata", None)
        if isinstance(md, MetaData):
            _known_metadata.add(md)
    tables = tables | {table_tag(*_split(t)) for t in hint.tables}
    if not tables:
        return _Shape(None, frozenset(), "reads no table")
    parts: list[str] = [_bind_id(bind), "|"]
    if not _stable(ck_key, parts):
        return _Shape(None, tables, "structure has no stable key")
    digest = hashlib.blake2b("".join(parts).encode(), digest_size=16).hexdigest()
    return _Shape(digest, frozenset(tables))


def _function_kinds(
    names: Iterable[str], bind: Any, conn: Connection | None
) -> dict[str, routines.FunctionKind]:
    """Kind of each called function: declarations and builtins first, then (PostgreSQL)
    ``pg_proc`` through *conn* (or *bind* if it is a connection); else UNKNOWN.

    Without a connection only what an earlier lookup learnt is used: a statement's first
    run looks its functions up on its own connection (never a second pool connection, which
    could wait on a pool the session exhausts), and a function learnt read-only makes the
    memoised shapes be rebuilt, so the statement is cached from its next run on."""
    out: dict[str, routines.FunctionKind] = {}
    ask: list[str] = []
    for name in names:
        kind = routines.kind_of(name)
        if kind is None:
            ask.append(name)
        else:
            out[name] = kind
    if not ask:
        return out
    engine = bind.engine if isinstance(bind, Connection) else bind
    if getattr(getattr(engine, "dialect", None), "name", "") != "postgresql":
        return out | dict.fromkeys(ask, routines.FunctionKind.UNKNOWN)
    if conn is None and isinstance(bind, Connection):
        conn = bind
    if conn is None:
        return out | {name: routines.pg_known(engine, name) for name in ask}
    try:
        return out | routines.pg_volatility(engine, conn.connection.dbapi_connection, ask)
    except Exception as exc:  # the lookup failed: assume the worst
        log.warning("yokedcache: could not read pg_proc (%s); treating %s as volatile", exc, ask)
        return out | dict.fromkeys(ask, routines.FunctionKind.UNKNOWN)


def _forget_shapes() -> None:
    with _shapes_lock:
        _shapes.clear()


routines.on_declare(_forget_shapes)


def _split(name: str) -> tuple[str, str | None]:
    schema, _, table = name.rpartition(".")
    return table, schema or None


def _shape_for(statement: Any, ck_key: Any, bind: Any, hint: Hint) -> _Shape:
    k = (ck_key, _bind_id(bind), hint.tables)
    shape = _shapes.get(k)
    if shape is None:
        why = per_object_strategy(statement)
        new = _Shape(None, frozenset(), why) if why else _make_shape(statement, ck_key, bind, hint)
        with _shapes_lock:
            # concurrent first uses must share one shape: a waiter can only serve the
            # leader's result once the leader has recorded the result shape on it
            shape = _shapes.setdefault(k, new)
            while len(_shapes) > _MAX_SHAPES:
                _shapes.popitem(last=False)
    return shape


def _params(params: Any, ck: Any = None) -> Any:
    """Parameters as key material, process-independent.

    Lazy loaders pass values under anonymous bind names that embed an object id
    (``%(140444463755472 param)s``); those are replaced by the bind's position in the
    statement's cache key, so every process computes the same key for the same load.
    """
    if not params:
        return None
    if ck is not None and any(
        type(k) is not str for k in (params if isinstance(params, dict) else params[0])
    ):
        positions = {bp.key: i for i, bp in enumerate(ck.bindparams)}
        if isinstance(params, dict):
            return {_param_name(k, positions): v for k, v in params.items()}
        return [{_param_name(k, positions): v for k, v in p.items()} for p in params]
    if isinstance(params, dict):
        return dict(params)
    return [dict(p) for p in params]


def _param_name(name: Any, positions: dict[Any, int]) -> Any:
    if type(name) is str:
        return name
    pos = positions.get(name)
    return pos if pos is not None else name


_LOAD_OPTION_KEYS = ("_only_return_tuples", "_legacy_uniquing", "_invoke_all_eagers")


def _key(shape: _Shape, ck: Any, ox: ORMExecuteState, tags: list[Any], context: Any) -> str | None:
    try:
        values = [bp.effective_value for bp in ck.bindparams]
        # SQLAlchemy 2.1 keeps .params() values on the statement, over the bindparams' own
        stmt_params = getattr(ck, "params", None)
        lo = ox.load_options
        extra = [getattr(lo, k, None) for k in _LOAD_OPTION_KEYS]
        eo = ox.execution_options
        raw = codec.pack_key(
            [
                values,
                _params(stmt_params),
                _params(ox.parameters, ck),
                extra,
                eo.get("identity_token"),
                repr(sorted(eo.get("schema_translate_map", {}).items()))
                if eo.get("schema_translate_map")
                else None,
                tags,  # hint/session tags: SQLAlchemy's cache key ignores user options
                context,  # the connection's schema map, the session's vary_on value
            ]
        )
    except (SerializationError, TypeError, AttributeError):
        return None
    assert shape.digest is not None
    return "q:" + hashlib.blake2b(shape.digest.encode() + raw, digest_size=20).hexdigest()


# -- the read listener ---------------------------------------------------------------------


def _cacheable(ox: ORMExecuteState, st: SessionCache, hint: Hint) -> bool:
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


def _on_execute(ox: ORMExecuteState) -> Result[Any] | None:
    st = state_of(ox.session)
    if st is None or not st.enabled or st.tainted is not None:
        return None
    ran, result = _compat.run_later_orm_listeners(ox)
    if not ran:
        return _serve(ox, st)
    if result is None:
        result = _serve(ox, st)
    # The later listeners have run: SQLAlchemy must not run them again, so this listener
    # returns a result even when it does not cache (invoke_statement runs no listener).
    return result if result is not None else ox.invoke_statement()


def _serve(ox: ORMExecuteState, st: SessionCache) -> Result[Any] | None:
    session = ox.session
    tx = _compat.current_transaction(session)
    if tx is not None and not tx.is_active:
        return None  # e.g. after a failed flush: SQLAlchemy raises PendingRollbackError
    for ref in st.conns:
        conn = ref()
        if conn is not None and "_yc_failed" in conn.__dict__:
            return None  # a statement failed in this transaction: let the database answer
    hint = hint_from(ox.user_defined_options, ox.execution_options)
    if not _cacheable(ox, st, hint):
        return None
    if tx is None:
        if not session.autobegin:
            _compat.autobegin(session)  # raises SQLAlchemy's own error, as the read would
        # The database read would begin the session's transaction; beginning one costs
        # more than a hit, so rollback() begins it late instead (see _rollback).
        st.unbegun = True
    # The uncached query would autoflush first: pending changes become writes that make
    # their tables bypass the cache for the rest of the transaction.
    if session.autoflush and getattr(ox.load_options, "_autoflush", True):
        session._autoflush()
    if ALL_TAG in st.written:
        return None
    statement: Any = ox.statement
    ck = statement._generate_cache_key()
    if ck is None:
        return None
    bind = session.get_bind(**ox.bind_arguments)
    shape = _shape_for(statement, ck.key, bind, hint)
    if shape.digest is None or shape.tables & st.written:
        return None
    if isinstance(bind, Connection):  # a session bound to a connection: not begun yet
        if bind.info.get(TAINT_KEY) and st.vary_on is None:
            return None
        variant = connection_variant(bind)
    else:
        variant = st.variants.get(bind) if st.variants else None
    vary = st.vary_on(session) if st.vary_on is not None else None
    key = _key(
        shape,
        ck,
        ox,
        _tag_hints(hint, st),
        (variant, vary) if variant is not None or vary is not None else None,
    )
    if key is None:
        return None
    try:
        cache = st.cache
    except LookupError:
        log.warning("yokedcache: no cache configured for this session; reading uncached")
        return None
    outer = _collector.get()
    engine = bind.engine if isinstance(bind, Connection) else bind
    horizon = _horizon(st, bind, engine, session, ox)
    look = bridge(cache.lookup_sync, cache.lookup, key, horizon=horizon, lock=True)
    if look.value is not MISSING and shape.result is not None:
        result = _served(ox, st, shape, look, outer)
        if result is not None:
            return result
    return _miss(ox, st, shape, hint, cache, key, look, horizon, outer, variant)


def _tag_hints(hint: Hint, st: SessionCache) -> list[Any]:
    """The hint and session tags that are part of a key (SQLAlchemy's key ignores them)."""
    if not (hint.tags or st.tags or hint.tables):
        return _NO_TAG_HINTS
    return [sorted({*hint.tags, *st.tags}), sorted(hint.tables)]


_NO_TAG_HINTS: Final[list[Any]] = [[], []]


def _served(
    ox: ORMExecuteState,
    st: SessionCache,
    shape: _Shape,
    look: Lookup,
    outer: Collector | None,
) -> Result[Any] | None:
    """The result rebuilt from a fresh entry, or None when it cannot serve this session."""
    assert shape.result is not None
    if st.written and st.written_ids().intersection(look.tags):
        return None  # e.g. an eager load of a table this transaction wrote
    session = ox.session
    try:
        rows = thaw_rows(look.value, shape.result, session, loader_context(ox.statement))
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
    st: SessionCache,
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
        return bridge(cache.lookup_sync, cache.lookup, key, horizon=horizon, lock=lock)

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
            bridge(cache.unlock_sync, cache.unlock, key, look.lock.token)
        return compute(look)
    if horizon == _NOTHING_VALID and look.lock is None:
        # before its snapshot exists nobody's result can serve this transaction: waiting
        # for (or locking out) another computation of the key would gain nothing
        return compute(look)
    io = _greenlet_io if in_greenlet() else sync_io
    return flight.run_sync(cache, key, lookup, compute, on_hit, look, io)


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
    st: SessionCache, bind: Any, engine: Engine, session: Session, ox: ORMExecuteState
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


def _run_and_store(
    ox: ORMExecuteState,
    st: SessionCache,
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
        st.candidate = snapshot.seq
    conn = session.connection(bind_arguments=ox.bind_arguments)
    # Beginning may have shown that the connection is not the one the key describes (a
    # tainted pooled connection, connection-level options): run it, but do not store it.
    keyed = st.tainted is None and connection_variant(conn) == variant
    eo = dict(ox.execution_options)
    lo = eo.get("_sa_orm_load_options")
    if lo is not None and getattr(lo, "_lazy_loaded_from", None) is not None:
        eo["_sa_orm_load_options"] = lo + {"_lazy_loaded_from": None}
    eo["yokedcache"] = False
    private = Session(
        bind=conn, autoflush=False, expire_on_commit=False, join_transaction_mode="rollback_only"
    )
    try:
        with reading_collector() as col:
            result = private.execute(ox.statement, ox.parameters or None, execution_options=eo)
            frozen = result.freeze()
        require_unique = getattr(result, "_unique_filter_state", None) is not None
        try:
            payload, mappers = freeze_rows(frozen.data, frozen._source_supports_scalars)
        except NotCacheable as exc:
            log.debug("yokedcache: result not cacheable (%s); running it uncached", exc)
            shape.digest = None
            return None
    finally:
        private.close()
    if shape.result is None:
        shape.roots = tuple(ox.all_mappers)
        shape.result = ResultShape(
            frozen.metadata,  # type: ignore[arg-type]  # frozen metadata is always simple
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
            cache = st.cache
            try:
                bridge(
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
    try:
        rows = thaw_rows(payload, shape.result, session, loader_context(ox.statement))
    except NotCacheable as exc:
        log.debug("yokedcache: cannot rebuild result (%s); running it uncached", exc)
        shape.digest = None
        return None
    return shape.result.build(rows)


class _GreenletIO:
    """Flight waits inside an AsyncSession's greenlet: awaited, never blocking the loop."""

    def claim(self, key: str) -> Any:
        return flight.FLIGHTS.aclaim(key)

    def release(self, key: str) -> None:
        flight.FLIGHTS.arelease(key)

    def wait(self, handle: Any, timeout: float) -> None:
        try:
            _await(asyncio.wait_for(handle.wait(), timeout))
        except TimeoutError:
            pass

    def sleep(self, seconds: float) -> None:
        _await(asyncio.sleep(seconds))

    def try_lock(self, cache: YokedCache, key: str) -> tuple[bool, str | None]:
        return _await(cache.try_lock(key, flight.LOCK_SECONDS))

    def unlock(self, cache: YokedCache, key: str, token: str | None) -> None:
        _await(cache.unlock(key, token))

    def is_locked(self, cache: YokedCache, key: str) -> bool:
        return _await(cache.is_locked(key))


_greenlet_io = _GreenletIO()


# -- transaction listeners -----------------------------------------------------------------


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    st = state_of(session)
    if st is None:
        return
    connection.__dict__["_yc_state"] = st
    st.conns.append(weakref.ref(connection))
    why = connection.__dict__.get("_yc_tainted") or connection.info.get(TAINT_KEY)
    if why:
        st.taint(connection, why)
    if connection.get_execution_options().get("schema_translate_map"):
        variant = connection_variant(connection)
        if variant is not None:
            st.variants[connection.engine] = variant
    iso = _isolation_of(connection)
    if iso == "READ UNCOMMITTED":
        st.dirty_reads = True
    isolated = _snapshot_isolated(connection)
    engine = connection.engine
    st.isolated[engine] = isolated
    if iso == "SERIALIZABLE" and connection.dialect.name in ("mysql", "mariadb"):
        # InnoDB turns every SELECT into a locking read of the latest rows: a cached read
        # would take no lock, so none is ever served (results are still stored)
        st.locking.add(engine)
    if connection.get_execution_options().get("isolation_level") == (
        engine.get_execution_options().get("isolation_level")
    ):
        _learned[engine] = isolated
    if isolated:
        st.snapshot_isolated = True
    if st.snapshot_isolated and st.horizon is None and not st.conn_begun:
        if connection.__dict__.get("_yc_ran"):
            # joined a database transaction that already ran SQL: its snapshot may predate
            # any sequence observed now, so nothing is provably of it
            st.no_store = True
        elif st.candidate is not None:
            st.horizon = st.candidate
        else:
            cache = st.cache
            snap = bridge(cache.observe_sync, cache.observe)
            if snap is None:
                st.no_store = True
            else:
                st.horizon = snap.seq
    st.conn_begun = True
    st.candidate = None


def _before_commit(session: Session) -> None:
    st = state_of(session)
    if st is None:
        return
    # Flush now so every table the COMMIT will include is known, then mark them all in one
    # round trip. In strict mode an undeliverable mark raises here, before anything is
    # committed; commit() then rolls the transaction back and re-raises.
    # (A savepoint's commit marks early too; that only lengthens the lease.)
    session.flush()
    if st.pg_base:
        _add_pg_modified(st)
    st.mark_pending()


# pg_stat_xact_user_tables without the view's joins and grouping (about 40% cheaper)
_PG_COUNTS = (
    "SELECT n.nspname, c.relname, n.nspname = current_schema(), s.n "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid) "
    "+ pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) "
    "+ pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid) AS n) s "
    "WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'pg_catalog' "
    "AND n.nspname <> 'information_schema' AND s.n > 0"
)
# PostgreSQL >= 15 reports a backend's not-yet-flushed counts of earlier transactions in
# pg_stat_xact_*; forcing the flush when this transaction ends lets the next one on the
# same connection skip its baseline query
_PG_COUNTS_FLUSH = _PG_COUNTS.replace(
    " WHERE", " CROSS JOIN (SELECT pg_catalog.pg_stat_force_next_flush()) f WHERE"
)
_PG_CLEAN = "_yc_pg_clean"


def _pg_counts(conn: Connection, flush: bool = False) -> dict[tuple[str, str, bool], int]:
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(_PG_COUNTS_FLUSH if flush else _PG_COUNTS)
        rows = cur.fetchall()
    finally:
        cur.close()
    return {(schema, table, bool(default)): int(n) for schema, table, default, n in rows}


def _pg_note_write(st: SessionCache, conn: Connection, written: Iterable[str]) -> None:
    """Before a write on a PostgreSQL connection to a table with triggers, rules or
    cascading foreign keys: at the transaction's first such write, record the counters it
    starts from (nothing to ask when the last check left them flushed), and recheck right
    after the statement, so the transaction's own reads see what they changed too. Writes
    to other tables change only the tables their SQL names, which are tracked already."""
    if not routines.pg_side_effects(conn.engine, conn.connection.dbapi_connection, written):
        # the SQL names every table this statement changes: nothing to count (and no cost
        # on the commit path), but the connection's counters are no longer flushed
        conn.connection.info.pop(_PG_CLEAN, None)
        return
    if id(conn) not in st.pg_base:
        clean = conn.connection.info.pop(_PG_CLEAN, False)
        st.pg_base[id(conn)] = {} if clean else _pg_counts(conn)
    conn.__dict__["_yc_pg_recheck"] = st


def _pg_changed(st: SessionCache, conn: Connection, flush: bool = False) -> set[str]:
    """Tags of the tables whose counters moved since the transaction's first write."""
    base = st.pg_base.get(id(conn), {})
    tags: set[str] = set()
    for (schema, table, default), n in _pg_counts(conn, flush=flush).items():
        if n != base.get((schema, table, default), 0):
            tags.add(table_tag(table, schema))
            if default:
                tags.add(table_tag(table))
    return tags


def _add_pg_modified(st: SessionCache) -> None:
    """Add the tables PostgreSQL counted as modified by the open transaction: trigger and
    function writes and FK actions the metadata does not show (TRUNCATE is not counted:
    it is tracked from the SQL text)."""
    if ALL_TAG in st.written:
        st.pg_base = {}
        return
    for ref in st.conns:
        conn = ref()
        if conn is None or id(conn) not in st.pg_base or conn.closed:
            continue
        if "_yc_failed" in conn.__dict__:
            continue  # aborted: PostgreSQL turns the COMMIT into a ROLLBACK, nothing to count
        if not conn.in_transaction():
            continue
        flush = (conn.dialect.server_version_info or (0,)) >= (15,)
        _note_counted(st, conn, flush=flush)
        if flush:
            conn.connection.info[_PG_CLEAN] = True
    st.pg_base = {}


def _note_counted(st: SessionCache, conn: Connection, flush: bool = False) -> None:
    """Add the tables whose counters moved to the transaction's writes."""
    tags = _pg_changed(st, conn, flush=flush)
    if tags:
        st.note_written(tracking.with_aliases(tags, None, list(_known_metadata)))


def _pg_recheck(conn: Connection) -> None:
    """After a write to a table with triggers or cascades: count what it changed."""
    st: SessionCache | None = conn.__dict__.pop("_yc_pg_recheck", None)
    if st is not None:
        _note_counted(st, conn)


_facts_of_sql: OrderedDict[str, tracking.StatementFacts] = OrderedDict()


def _facts(compiled: Any, statement: str) -> tracking.StatementFacts:
    """What a statement about to run writes and calls (memoised per compiled form)."""
    if compiled is not None and not isinstance(getattr(compiled, "statement", None), TextClause):
        facts: tracking.StatementFacts | None = compiled.__dict__.get("_yc_facts")
        if facts is None:
            facts = tracking.facts_of_statement(compiled.statement)
            compiled.__dict__["_yc_facts"] = facts
        return facts
    facts = _facts_of_sql.get(statement)
    if facts is None:
        scan = sqltext.scan_sql(statement)
        written = None if scan.written is None else tracking.tags_of_names(scan.written)
        facts = tracking.StatementFacts(written, scan.functions, scan.why)
        with _shapes_lock:
            _facts_of_sql[statement] = facts
            while len(_facts_of_sql) > _MAX_SHAPES:
                _facts_of_sql.popitem(last=False)
    return facts


_warned: set[str] = set()


def _warn_unknown(why: str, statement: str) -> None:
    level = logging.WARNING if why not in _warned else logging.DEBUG
    _warned.add(why)
    log.log(
        level,
        "yokedcache: cannot tell which tables this SQL writes (%s), invalidating the whole "
        "cache at commit: %.200s",
        why,
        statement,
    )


def _after_commit(session: Session) -> None:
    st = state_of(session)
    if st is None:
        return
    if session.in_nested_transaction():
        return  # a SAVEPOINT was released: the outer transaction has not committed yet
    st.committed = True
    st.finish(committed=True)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # savepoints: keep the outer transaction's marks and written tables
    st = state_of(session)
    if st is None:
        return
    # COMMIT was sent but did not return: the outcome is unknown, so invalidate.
    st.finish(committed=st.db_commit_started)


# -- engine listeners: writes, and reads inside collectors ---------------------------------


def _compiled_tables(compiled: Any) -> frozenset[str] | None:
    cached = compiled.__dict__.get("_yc_read_tables", False)
    if cached is not False:
        return cached  # type: ignore[no-any-return]
    tables: frozenset[str] | None
    try:
        # what this SQL renders, nested ORM selects included (once per compiled statement)
        tables = tracking.read_tables(compiled.statement, compiled.dialect)
    except Exception:  # not recompilable on its own: its tables are unknown
        tables = None
    compiled.__dict__["_yc_read_tables"] = tables
    return tables


def _before_cursor_execute(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    cd = conn.__dict__
    st: SessionCache | None = cd.get("_yc_state")
    col = _collector.get()
    is_dml = bool(
        context is not None and (context.isinsert or context.isupdate or context.isdelete)
    )
    if is_dml:
        cd["_yc_dirty"] = True  # this transaction now sees its own uncommitted rows
    compiled = getattr(context, "compiled", None)
    change = _state_change_of(conn, statement, compiled)
    if change is not None:
        scope, why_taint = change
        cd["_yc_tainted"] = why_taint
        if scope == "connection":
            conn.info[TAINT_KEY] = why_taint  # outlives the transaction, on the pooled connection
        if st is not None:
            st.taint(conn, why_taint)
    pg = conn.dialect.name == "postgresql"
    if st is None and col is None:
        if pg and _may_write(conn, context, statement):
            conn.connection.info.pop(_PG_CLEAN, None)  # its counters are not flushed now
        return
    is_ddl = bool(context is not None and getattr(context, "isddl", False))
    written: frozenset[str] | None = frozenset()
    uncacheable = False
    why = ""
    if is_ddl:
        written = None
    elif change is not None and ";" not in statement.strip().rstrip(";"):
        written = frozenset()  # SET / USE / set_config(): state, not rows
    else:
        facts = _facts(compiled, statement)
        written, why = facts.written, facts.why
        if facts.functions:
            for name, kind in _function_kinds(facts.functions, conn.engine, conn).items():
                if kind is routines.FunctionKind.UNKNOWN and written is not None:
                    written, why = None, f"it calls {name}(), which may write"
                elif kind is not routines.FunctionKind.READONLY:
                    uncacheable = True
    if written != frozenset():
        cd["_yc_dirty"] = True
    if written is None:
        catalog.forget(conn)  # views may have changed
    if pg and written is None:
        routines.forget_catalog(conn.engine)  # functions or triggers may have changed
    if st is not None and written != frozenset():
        if written is None:
            _warn_unknown(why if not is_ddl else "DDL", statement)
            written = frozenset({ALL_TAG})
        else:
            written = tracking.with_aliases(
                written, conn.dialect.default_schema_name, list(_known_metadata)
            )
        autocommit = _autocommits(conn)
        if pg and not autocommit and ALL_TAG not in written:
            _pg_note_write(st, conn, written)
        elif pg:
            conn.connection.info.pop(_PG_CLEAN, None)
            if ALL_TAG not in written and routines.pg_side_effects(
                conn.engine, conn.connection.dbapi_connection, written
            ):
                # autocommit: the statement commits as it runs, before anything could be
                # counted, so what its triggers or cascades change is unknown
                _warn_unknown("an autocommit write to a table with triggers", statement)
                written = frozenset({ALL_TAG})
        st.note_written(written, autocommit=autocommit)
    if col is not None and (written != frozenset() or uncacheable):
        col.mark_unknown("a statement that writes or calls a function not known read-only")
    if col is not None and not is_dml and not is_ddl and written == frozenset():
        if compiled is None or isinstance(getattr(compiled, "statement", None), TextClause):
            col.mark_unknown("raw SQL read")
            return
        tables = _compiled_tables(compiled)
        if tables is None:
            col.mark_unknown("text() inside a query")
            return
        tables = catalog.read_tags(conn, tables)  # views: the tables they read, too
        if tables is None:
            col.mark_unknown("a view whose tables cannot be known")
            return
        col.add(tables)
        # The checks concern every @cached computation in progress, also when the innermost
        # collector is a caching session's private read (not strict).
        strict: Collector | None = col
        while strict is not None and not strict.strict_snapshot:
            strict = strict.parent
        if strict is not None:
            taint = cd.get("_yc_tainted") or conn.info.get(TAINT_KEY)
            if taint:  # SET/set_config state: the computation's key does not capture it
                strict.mark_unknown(f"a read on a connection that ran {taint!r}")
            if st is not None:
                own = bool(tables & st.written) or ALL_TAG in st.written
            else:
                own = bool(cd.get("_yc_dirty"))
            if own:
                strict.mark_unknown("a read of its own transaction's uncommitted writes")
            begun = conn.__dict__.get("_yc_begun_at", 0)
            iso = (
                conn.get_execution_options().get("isolation_level")
                or getattr(conn, "default_isolation_level", "")
                or ""
            ).upper()
            # Only computations that started after the snapshot began are affected.
            while iso not in _STATEMENT_LEVEL and strict is not None and begun < strict.started_at:
                if strict.strict_snapshot and strict.unknown is None:
                    strict.unknown = "a snapshot transaction that began before the computation"
                strict = strict.parent


def _mark_strict(col: Collector, why: str) -> None:
    """Mark the innermost @cached computation (a strict collector) and its parents."""
    c: Collector | None = col
    while c is not None and not c.strict_snapshot:
        c = c.parent
    if c is not None:
        c.mark_unknown(why)


def _state_change_of(conn: Connection, statement: str, compiled: Any) -> Any:
    """``state_change`` of the SQL about to run (memoised on compiled statements)."""
    if compiled is not None and not isinstance(getattr(compiled, "statement", None), TextClause):
        cd = compiled.__dict__
        if "_yc_state_change" not in cd:
            found = state_change(statement, conn.dialect.name == "postgresql")
            cd["_yc_state_change"] = found
            return found
        return cd["_yc_state_change"]
    return state_change(statement, conn.dialect.name == "postgresql")


_TXN_CONTROL: Final = re.compile(r"\s*(BEGIN|SET|SAVEPOINT|RELEASE)\b", re.IGNORECASE)


def _after_cursor_execute(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    cd = conn.__dict__
    if "_yc_pg_recheck" in cd:
        _pg_recheck(conn)
    if "_yc_ran" not in cd and not _TXN_CONTROL.match(statement):
        cd["_yc_ran"] = True  # the database transaction may have its snapshot now
    st: SessionCache | None = cd.get("_yc_state")
    if st is None or conn.engine in st.snapshots or not st.isolated.get(conn.engine):
        return
    if conn.engine in st.locking:
        return
    if _takes_snapshot(context):
        st.snapshots.add(conn.engine)


def _takes_snapshot(context: Any) -> bool:
    """Whether a statement that ran began the transaction's snapshot: a non-locking SELECT of
    a table does on every database (on InnoDB, nothing else does)."""
    compiled = getattr(context, "compiled", None)
    if compiled is None or context.isinsert or context.isupdate or context.isdelete:
        return False
    stmt = compiled.statement
    if not isinstance(stmt, Select | CompoundSelect) or stmt._for_update_arg is not None:
        return False
    return bool(_compiled_tables(compiled))


def _on_begin(conn: Connection) -> None:
    conn.__dict__["_yc_begun_at"] = next(_begin_counter)
    conn.__dict__.pop("_yc_dirty", None)
    conn.__dict__.pop("_yc_ran", None)
    conn.__dict__.pop("_yc_failed", None)


def _may_write(conn: Connection, context: Any, statement: str) -> bool:
    """Whether a statement run outside caching sessions may change table counters (a DDL
    statement also drops what is known of the database's functions and triggers)."""
    facts = _facts(getattr(context, "compiled", None), statement)
    if context is None or getattr(context, "isddl", False) or facts.written is None:
        routines.forget_catalog(conn.engine)
        catalog.forget(conn)
        return True
    return facts.written != frozenset() or any(
        routines.kind_of(f) is not routines.FunctionKind.READONLY for f in facts.functions
    )


def _autocommits(conn: Connection) -> bool:
    iso = conn.get_execution_options().get("isolation_level")
    return iso == "AUTOCOMMIT"


def _on_commit(conn: Connection) -> None:
    catalog.settle(conn)
    conn.__dict__.pop("_yc_dirty", None)
    conn.__dict__.pop("_yc_tainted", None)
    conn.__dict__.pop("_yc_ran", None)
    conn.__dict__.pop("_yc_failed", None)
    st: SessionCache | None = conn.__dict__.get("_yc_state")
    if st is not None:
        # Normally before_commit took the marks; this covers commits that bypass the
        # session (connection-level). It must not raise: an exception here would leave the
        # DBAPI connection in its transaction.
        try:
            st.mark_pending()
        except Exception as exc:
            log.error("yokedcache: could not mark written tables before COMMIT: %s", exc)
        st.db_commit_started = True


def _on_rollback(conn: Connection) -> None:
    catalog.settle(conn)
    conn.__dict__.pop("_yc_dirty", None)
    conn.__dict__.pop("_yc_tainted", None)
    conn.__dict__.pop("_yc_ran", None)
    conn.__dict__.pop("_yc_failed", None)


def _on_error(context: Any) -> None:
    """A statement failed: the database may have aborted the transaction (PostgreSQL refuses
    every later statement until ROLLBACK), so nothing is served from the cache on this
    connection until the transaction or the savepoint is rolled back."""
    conn = getattr(context, "connection", None)
    if conn is not None:
        conn.__dict__["_yc_failed"] = True


def _on_rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    conn.__dict__.pop("_yc_failed", None)


_installed = False
_install_lock = threading.Lock()


def _install_engine_listeners() -> None:
    global _installed
    with _install_lock:
        if _installed:
            return
        event.listen(Engine, "before_cursor_execute", _before_cursor_execute)
        event.listen(Engine, "after_cursor_execute", _after_cursor_execute)
        event.listen(Engine, "begin", _on_begin)
        event.listen(Engine, "commit", _on_commit)
        event.listen(Engine, "rollback", _on_rollback)
        event.listen(Engine, "rollback_savepoint", _on_rollback_savepoint)
        event.listen(Engine, "handle_error", _on_error)
        _installed = True


_SESSION_EVENTS = (
    ("do_orm_execute", _on_execute),
    ("after_begin", _after_begin),
    ("before_commit", _before_commit),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
)


# -- public classes ------------------------------------------------------------------------


class _Done:
    """An already-finished awaitable: ``await session.commit()`` works on a sync session."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator

    def __repr__(self) -> str:
        return "<committed>"


DONE: Final = _Done()


class CachingQuery(Query[Any]):
    """Legacy ``session.query()`` with cache hints.

    Example::

        session.query(User).filter(User.active).cache(ttl=60, tags=["users"]).all()
        session.query(Report).no_cache().all()
    """

    def cache(
        self, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = (), *, tables: Iterable[str] = ()
    ) -> CachingQuery:
        """Cache this query with *ttl* and extra *tags*."""
        return self.options(FromCache(ttl, tags, tables=tables))

    def no_cache(self) -> CachingQuery:
        """Run this query against the database only."""
        return self.options(NoCache())


class CachingSession(Session):
    """A Session whose ORM reads are cached and whose commits invalidate what they wrote.

    Args:
        cache: the :class:`~yokedcache_sa.YokedCache` to use (the default cache if omitted).
        default_ttl: TTL of entries stored by this session (the cache's default if omitted).
        tags: extra tags on every entry this session stores.
        table_name: shorthand for ``tags=["table:<table_name>"]``.
        vary_on: ``(session) -> value`` naming connection state the application sets with
            ``SET`` / ``set_config()`` (tenant, role); the value becomes part of every key,
            and such SQL then no longer turns caching off for the transaction (see
            docs/orm.md, "Tenants").
        **kw: passed to :class:`sqlalchemy.orm.Session`.

    ``commit()`` also returns an already-finished awaitable, so ``await session.commit()``
    works in async routes that use a sync session.

    Example::

        SessionLocal = sessionmaker(engine, class_=CachingSession, cache=cache)
        AsyncSessionLocal = async_sessionmaker(
            async_engine, sync_session_class=CachingSession, cache=cache
        )
    """

    def __init__(
        self,
        bind: Any = None,
        *,
        cache: YokedCache | None = None,
        default_ttl: TTL = DEFAULT_TTL,
        tags: Iterable[str] = (),
        table_name: str | None = None,
        vary_on: Callable[[Session], Hashable] | None = None,
        **kw: Any,
    ) -> None:
        kw.setdefault("query_cls", CachingQuery)
        super().__init__(bind, **kw)
        extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
        self.__dict__[STATE_KEY] = SessionCache(
            cache, default_ttl=default_ttl, tags=extra, vary_on=vary_on
        )

    def commit(self) -> _Done:  # type: ignore[override]
        """Commit, invalidate what the transaction wrote, and return a finished awaitable."""
        _commit_and_finish(self, Session.commit)
        return DONE

    def rollback(self) -> None:
        """Roll back, expiring what the transaction loaded (cache hits included)."""
        _rollback(self, Session.rollback)

    @property
    def yokedcache(self) -> SessionCache:
        """This session's cache settings."""
        st = state_of(self)
        assert st is not None
        return st


def _commit_and_finish(session: Session, commit: Any) -> None:
    try:
        commit(session)
    except InvalidationError:
        st = state_of(session)
        if st is not None and not (st.committed or st.db_commit_started):
            # strict_invalidation refused the COMMIT before it was sent: roll back, or a later
            # commit() would commit these writes with their tables no longer marked.
            session.rollback()
        raise
    finally:
        st = state_of(session)
        if st is not None and (st.marked or st.writer):
            # An exception in another after_commit listener skipped ours: finish here.
            st.finish(committed=st.committed or st.db_commit_started)


def _rollback(session: Session, rollback: Any) -> None:
    """*rollback* as if the hits served since the last transaction had begun one.

    A read from the database autobegins the session's transaction, so a plain Session's
    ``rollback()`` after it expires every loaded object; a hit needs no transaction and
    begins none (it would cost more than the hit). Beginning it now gives the same result.
    """
    st = state_of(session)
    if st is not None and st.unbegun:
        st.unbegun = False
        if session.get_transaction() is None:
            _compat.autobegin(session)
    rollback(session)


def instrument_session(
    session: Session,
    cache: YokedCache | None = None,
    *,
    default_ttl: TTL = DEFAULT_TTL,
    tags: Iterable[str] = (),
    table_name: str | None = None,
    vary_on: Callable[[Session], Hashable] | None = None,
) -> Session:
    """Make an existing plain Session cache its reads and invalidate on commit.

    Returns the same session. Its ``commit()`` then also returns a finished awaitable.
    Instrumenting a :class:`CachingSession` only updates its settings. *vary_on* is as
    for :class:`CachingSession`.
    """
    _install_engine_listeners()
    extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
    st = state_of(session)
    if st is not None:
        if cache is not None:
            st._cache = cache
        st.tags = tuple(dict.fromkeys((*st.tags, *extra)))
        if not isinstance(default_ttl, type(DEFAULT_TTL)):
            st.default_ttl = default_ttl
        if vary_on is not None:
            st.vary_on = vary_on
        return session
    session.__dict__[STATE_KEY] = SessionCache(
        cache, default_ttl=default_ttl, tags=extra, vary_on=vary_on
    )
    if isinstance(session, CachingSession):
        return session
    if "dispatch" not in session.__dict__:
        # Not used yet: give it a subclass whose class-level listeners and awaitable commit
        # cost nothing per request (instance-level listeners cost ~0.1 ms to register).
        session.__class__ = _instrumented_class(type(session))
        return session
    for name, fn in _SESSION_EVENTS:
        event.listen(session, name, fn)
    plain_commit = type(session).commit
    plain_rollback = type(session).rollback

    def commit() -> _Done:
        _commit_and_finish(session, plain_commit)
        return DONE

    def rollback() -> None:
        _rollback(session, plain_rollback)

    session.commit = commit  # type: ignore[method-assign,assignment]  # awaitable commit
    session.rollback = rollback  # type: ignore[method-assign]
    return session


_instrumented: dict[type[Session], type[Session]] = {}


def _instrumented_class(cls: type[Session]) -> type[Session]:
    """A subclass of *cls* carrying the cache listeners and the awaitable commit."""
    sub = _instrumented.get(cls)
    if sub is None:
        plain_commit, plain_rollback = cls.commit, cls.rollback

        def commit(self: Session) -> _Done:
            _commit_and_finish(self, plain_commit)
            return DONE

        def rollback(self: Session) -> None:
            _rollback(self, plain_rollback)

        sub = type(f"Instrumented{cls.__name__}", (cls,), {"commit": commit, "rollback": rollback})
        for name, fn in _SESSION_EVENTS:
            event.listen(sub, name, fn)
        _instrumented[cls] = sub
    return sub


for _name, _fn in _SESSION_EVENTS:
    event.listen(CachingSession, _name, _fn)
_install_engine_listeners()
