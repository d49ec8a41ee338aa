"""Engine listeners: writes however spelled, connection state, reads inside collectors.

What each engine event does; :mod:`.watch` installs them per engine on first sight."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import CompoundSelect, Select

from ..tags import ALL_TAG
from . import _compat, catalog, routines, sqltext, tracking
from .bindstate import TAINT_KEY, connection_taint, state_change
from .collect import Collector, _begin_counter, _collector
from .held import end_held
from .pgwrites import _PG_CLEAN, RECHECK_KEY, _pg_note_write, settle
from .shapes import _MAX_SHAPES, _function_kinds, _shapes_lock
from .state import _STATEMENT_LEVEL, SessionState, _known_metadata
from .txnsql import TXN_CONTROL, ends_transaction, may_abort

log = logging.getLogger("yokedcache_sa")


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
    if "_yc_ran" in cd and ends_transaction(conn, statement, context):
        st0: SessionState | None = cd.get("_yc_state")
        if st0 is not None:
            # the next statement begins another database transaction, with a snapshot of
            # its own: the session's horizon and snapshot facts are not of it
            st0.taint(conn, f"{statement.strip()[:60]!r} sent inside the transaction", force=True)
    if (RECHECK_KEY in cd or "_yc_ran" not in cd) and not TXN_CONTROL.match(statement):
        # not before SAVEPOINT / ROLLBACK TO (its rollback_savepoint event has cleared
        # _yc_failed, but the transaction is still aborted until it runs)
        if RECHECK_KEY in cd:
            settle(conn)  # what the last write's triggers changed, before this one runs
        # the database transaction may have its snapshot once this runs (set before it runs:
        # a statement that fails only makes a session joining later store nothing)
        cd["_yc_ran"] = True
    st: SessionState | None = cd.get("_yc_state")
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
    if st is not None and st.view.awaits_snapshot(conn.engine) and _takes_snapshot(context):
        # reported before it runs; _on_error takes it back if this statement fails
        st.view.snapshot_taken(conn.engine)
        cd[_SNAPSHOT_BY] = (context, st.view, conn.engine)
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
                written, conn.dialect.default_schema_name, _known_metadata.members()
            )
            # a write to an updatable view writes the tables it reads (catalog: memoised)
            viewed = catalog.read_tags(conn, written)
            if viewed is None:
                _warn_unknown("it writes a view whose tables cannot be known", statement)
                written = frozenset({ALL_TAG})
            else:
                written = viewed
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
            taint = cd.get("_yc_tainted") or connection_taint(conn)
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


def _takes_snapshot(context: Any) -> bool:
    """Whether a statement that ran began the transaction's snapshot: a non-locking SELECT of
    a table does on every database (on InnoDB, nothing else does)."""
    compiled = getattr(context, "compiled", None)
    if compiled is None or context.isinsert or context.isupdate or context.isdelete:
        return False
    stmt = compiled.statement
    if not isinstance(stmt, Select | CompoundSelect) or _compat.for_update_clause(stmt) is not None:
        return False
    return bool(_compiled_tables(compiled))


_SNAPSHOT_BY: Final = "_yc_snapshot_by"
"""In a connection's ``__dict__``: the execution context of the statement reported as taking
its transaction's snapshot, with the view and engine it was reported to."""

_TXN_KEYS: Final = ("_yc_dirty", "_yc_ran", "_yc_failed", RECHECK_KEY, _SNAPSHOT_BY)
"""What a connection's ``__dict__`` holds about its open database transaction."""


def _on_begin(conn: Connection) -> None:
    end_held(conn)  # the transaction a session's commit left open has ended
    cd = conn.__dict__
    cd["_yc_begun_at"] = next(_begin_counter)
    for key in _TXN_KEYS:
        cd.pop(key, None)


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
    cd = conn.__dict__
    st: SessionState | None = cd.get("_yc_state")
    if RECHECK_KEY in cd:  # a commit that bypasses the session: its trigger writes count too
        try:
            settle(conn)
        except Exception as exc:  # what the triggers wrote is unknown: invalidate everything
            log.error("yokedcache: could not count what triggers wrote before COMMIT: %s", exc)
            if st is not None:
                st.note_written(frozenset({ALL_TAG}))
    cd.pop("_yc_tainted", None)
    for key in _TXN_KEYS:
        cd.pop(key, None)
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
    end_held(conn)
    catalog.settle(conn)
    cd = conn.__dict__
    cd.pop("_yc_tainted", None)
    for key in _TXN_KEYS:
        cd.pop(key, None)


def _on_error(context: Any) -> None:
    """A statement failed: the database may have aborted the transaction (PostgreSQL refuses
    every later statement until ROLLBACK), so nothing is served from the cache on this
    connection until the transaction or the savepoint is rolled back (unless it cannot have
    aborted it: :func:`may_abort`)."""
    conn = getattr(context, "connection", None)
    if conn is not None:
        cd = conn.__dict__
        if may_abort(conn, context):
            cd["_yc_failed"] = True
        by = cd.get(_SNAPSHOT_BY)
        if by is not None and by[0] is getattr(context, "execution_context", None):
            # the statement reported as taking the snapshot did not run: maybe none exists
            del cd[_SNAPSHOT_BY]
            by[1].snapshot_untaken(by[2])


def _after_cursor_execute(
    conn: Connection,
    cursor: Any,
    statement: str,
    parameters: Any,
    context: Any,
    executemany: bool,
) -> None:
    """A statement reported as taking the snapshot returned no rows: on InnoDB it may have
    read none, then no read view exists; take the report back (the next read goes to the
    database and takes it, as a plain session's would)."""
    cd = conn.__dict__
    by = cd.get(_SNAPSHOT_BY)
    if by is None or by[0] is not context:
        return
    if getattr(cursor, "rowcount", -1) == 0:
        del cd[_SNAPSHOT_BY]
        by[1].snapshot_untaken(by[2])


def _on_rollback_savepoint(conn: Connection, name: str, context: Any) -> None:
    conn.__dict__.pop("_yc_failed", None)


# -- the listeners, as installed on each watched engine (see watch.py) ---------------------

_ENGINE_EVENTS: Final = (
    ("before_cursor_execute", _before_cursor_execute),
    ("begin", _on_begin),
    ("commit", _on_commit),
    ("rollback", _on_rollback),
    ("rollback_savepoint", _on_rollback_savepoint),
    ("handle_error", _on_error),
)

_INNODB_EVENTS: Final = (("after_cursor_execute", _after_cursor_execute),)
"""Listeners only engines of :data:`NO_ROWS_NO_VIEW` dialects get (one listener fewer on
every statement elsewhere)."""


_MOVED: Final = frozenset({"watch_engine", "is_watched", "_watched"})


def __getattr__(name: str) -> Any:
    """Installation moved to :mod:`.watch`; its names stay importable from here."""
    if name in _MOVED:
        from . import watch

        return getattr(watch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
