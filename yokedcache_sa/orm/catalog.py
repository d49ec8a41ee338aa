"""Views and the tables they read, from the database's own catalog.

A read of a view is tagged with the view and, transitively, every table (and view) its
definition reads, so a write to a base table through any path invalidates it with no
:func:`~yokedcache_sa.orm.dependents.declare_dependency`. A materialized view is a table here:
its content changes only when it is refreshed, which is a write of it.

What the catalog says is read once per engine, on the connection of the first read that
needs it, and kept (weakly, per engine) until DDL runs through a caching session or
:func:`refresh_catalog` is called. Where it comes from:

- PostgreSQL: ``pg_depend`` entries of each view's ``pg_rewrite`` rule (every relation the
  definition names, whoever owns it), schema-qualified;
- MariaDB/MySQL: ``information_schema.VIEWS.VIEW_DEFINITION``, parsed by the SQL scanner;
- SQLite: the ``CREATE VIEW`` text in ``sqlite_master``/``sqlite_temp_master``, parsed alike.

A view whose reads cannot be known (its definition is hidden from this user, cannot be
parsed, or calls a function not known to be read-only), and every relation while the
catalog itself cannot be read, makes the read that touches it not cached.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..tags import table_tag
from . import routines, sqltext

__all__ = ["forget", "read_tags", "refresh_catalog", "settle"]

log = logging.getLogger("yokedcache_sa")

RETRY_SECONDS = 10.0
"""After a failed catalog read, how long reads on that engine stay uncached before the next
attempt (:func:`refresh_catalog` retries at once)."""

_MAX_MEMO = 4096
_DDL_KEY = "_yc_catalog_ddl"  # in a Connection's __dict__: it ran DDL in this transaction


@dataclass
class _Catalog:
    # lower-cased view tag -> tags of what its definition reads (None: not known)
    views: dict[str, frozenset[str] | None]
    failed: str | None = None
    loaded_at: float = field(default_factory=time.monotonic)
    memo: dict[frozenset[str], frozenset[str] | None] = field(default_factory=dict)


_catalogs: weakref.WeakKeyDictionary[Any, _Catalog] = weakref.WeakKeyDictionary()
_epochs: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_warned: set[str] = set()


def refresh_catalog(engine: Any) -> None:
    """Forget what is known of *engine*'s views; the next read looks them up again.

    Call it after views are created, replaced or dropped other than through a caching
    session (a migration tool, another process). Results cached before then keep the tags
    they were stored with: invalidate the view's tag too if its definition changed.

    Added in 0.x.
    """
    if engine is None:
        return
    key = _key(engine)
    with _lock:
        _catalogs.pop(key, None)
        _epochs[key] = _epochs.get(key, 0) + 1


def forget(conn: Any) -> None:
    """DDL is about to run on *conn*: forget the catalog now and again when its transaction
    ends (a catalog read by another connection meanwhile may predate the DDL)."""
    conn.__dict__[_DDL_KEY] = True
    refresh_catalog(conn.engine)


def settle(conn: Any) -> None:
    """*conn*'s transaction ended: forget the catalog if it ran DDL (and what is known of
    the engine's functions and triggers: a write looked up meanwhile saw none it created)."""
    if conn.__dict__.pop(_DDL_KEY, None):
        refresh_catalog(conn.engine)
        routines.forget_catalog(conn.engine)


def read_tags(conn: Any, tags: frozenset[str]) -> frozenset[str] | None:
    """*tags* (of relations a read names) plus everything the views among them read,
    transitively; None when a view's reads, or the catalog itself, cannot be known.

    Memoised per engine and set of tags; the catalog is read through *conn* the first time.
    """
    if not tags:
        return tags
    cat = _catalogs.get(conn.engine.pool)
    if cat is None or (cat.failed and time.monotonic() - cat.loaded_at > RETRY_SECONDS):
        cat = _load(conn)
        if cat is None:
            return None
    try:
        return cat.memo[tags]
    except KeyError:
        pass
    out = None if cat.failed else _expand(cat.views, tags)
    with _lock:
        if len(cat.memo) >= _MAX_MEMO:
            cat.memo.clear()
        cat.memo[tags] = out
    return out


def _expand(views: dict[str, frozenset[str] | None], tags: Iterable[str]) -> frozenset[str] | None:
    out = set(tags)
    todo = list(out)
    while todo:
        tag = todo.pop()
        if tag.lower() not in views:
            continue
        reads = views[tag.lower()]
        if reads is None:
            return None
        for t in reads - out:
            out.add(t)
            todo.append(t)
    return frozenset(out)


# -- reading the catalog ------------------------------------------------------------------


def _key(engine: Any) -> Any:
    # the pool: shared by an engine's execution_options() copies, new after dispose()
    return getattr(engine, "sync_engine", engine).pool


def _load(conn: Any) -> _Catalog | None:
    engine = conn.engine.pool
    with _lock:
        epoch = _epochs.get(engine, 0)
    default = conn.dialect.default_schema_name
    name = conn.dialect.name
    dbapi_conn = conn.connection.dbapi_connection
    try:
        if name == "postgresql":
            rows = _pg_rows(dbapi_conn)
        elif name in ("mysql", "mariadb"):
            rows = _parsed(_fetch(dbapi_conn, _MYSQL_VIEWS))
        elif name == "sqlite":
            rows = _parsed(_fetch(dbapi_conn, _SQLITE_VIEWS))
        else:
            raise LookupError(f"reading views is not supported on {name}")
        cat = _Catalog(_views(rows, default, search_path=name == "postgresql"))
    except Exception as exc:  # permissions, an unsupported database: reads are not cached
        why = f"{type(exc).__name__}: {exc}"
        level = logging.WARNING if why not in _warned else logging.DEBUG
        _warned.add(why)
        log.log(
            level,
            "yokedcache: cannot read the views of %s (%s); reads on it are not cached until "
            "the catalog can be read (retried after %.0f s or on refresh_catalog())",
            name,
            why,
            RETRY_SECONDS,
        )
        cat = _Catalog({}, failed=why)
    with _lock:
        if _epochs.get(engine, 0) != epoch:
            return None  # DDL meanwhile: what was read may already be out of date
        _catalogs[engine] = cat
    return cat


# (view schema, view name, what it reads as (schema, name) pairs or None if unknown)
_Row = tuple[str | None, str, frozenset[tuple[str | None, str]] | None]


def _views(
    rows: Iterable[_Row], default: str | None, search_path: bool
) -> dict[str, frozenset[str] | None]:
    """Lower-cased view tags -> tags of what each reads. A bare name is a view of the
    default schema (SQLite: also a temporary one), or on PostgreSQL (*search_path*) of any
    schema: views sharing a bare name are merged, which only over-tags."""
    views: dict[str, frozenset[str] | None] = {}
    bare_schemas = {(default or "").lower(), "temp" if not search_path else ""}
    for schema, view, reads in rows:
        tags = (
            None if reads is None else frozenset().union(*(_tags(s, t, default) for s, t in reads))
        )
        keys = set()
        if schema is None or search_path or schema.lower() in bare_schemas:
            keys.add(table_tag(view).lower())
        if schema:
            keys.add(table_tag(view, schema).lower())
        for key in keys:
            if key in views:
                old = views[key]
                views[key] = None if old is None or tags is None else old | tags
            else:
                views[key] = tags
    return views


def _tags(schema: str | None, table: str, default: str | None) -> frozenset[str]:
    """Tags a read of ``schema.table`` may carry: as written and lower-cased, bare and
    qualified with the default schema when it is the default schema's."""
    out: set[str] = set()
    for name in {table, table.lower()}:
        if schema is None or (default and schema.lower() == default.lower()):
            out.add(table_tag(name))
            if default:
                out.add(table_tag(name, default))
        if schema is not None:
            out.add(table_tag(name, schema))
    return frozenset(out)


def _fetch(dbapi_conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(sql)
        return [tuple(r) for r in cur.fetchall()]
    finally:
        cur.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cacheable_functions(
    names: Iterable[str], kinds: dict[str, routines.FunctionKind] | None = None
) -> str | None:
    """Why a view calling *names* is not cacheable, or None when every one is read-only
    (declared or builtin, else as *kinds* — what ``pg_proc`` says — tell)."""
    for fn in names:
        kind = routines.kind_of(fn)
        if kind is None and kinds is not None:
            kind = kinds.get(fn)
        if kind is not routines.FunctionKind.READONLY:
            return f"it calls {fn}()"
    return None


def _parsed(rows: Iterable[tuple[Any, ...]]) -> list[_Row]:
    """(schema, view, definition) rows to what each view reads."""
    out: list[_Row] = []
    for schema, view, definition in rows:
        reads: frozenset[tuple[str | None, str]] | None = None
        if definition:
            scan = sqltext.scan_reads(_text(definition))
            if scan.tables is not None and _cacheable_functions(scan.functions) is None:
                reads = frozenset((n.schema, n.table) for n in scan.tables)
        if reads is None:
            log.debug("yokedcache: reads of view %s.%s cannot be known", schema, view)
        out.append((_text(schema) if schema is not None else None, _text(view), reads))
    return out


_MYSQL_VIEWS = (
    "SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS "
    "WHERE TABLE_SCHEMA NOT IN ('sys', 'mysql', 'information_schema', 'performance_schema')"
)
_SQLITE_VIEWS = (
    "SELECT 'main', name, sql FROM sqlite_master WHERE type = 'view' "
    "UNION ALL SELECT 'temp', name, sql FROM sqlite_temp_master WHERE type = 'view'"
)

# every relation a view's rewrite rule depends on (its own columns excluded)
_PG_RELATIONS = (
    "SELECT vn.nspname, v.relname, tn.nspname, t.relname "
    "FROM pg_catalog.pg_class v "
    "JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace "
    "JOIN pg_catalog.pg_rewrite r ON r.ev_class = v.oid "
    "JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass "
    "AND d.objid = r.oid AND d.refclassid = 'pg_catalog.pg_class'::regclass "
    "AND d.refobjid <> v.oid "
    "JOIN pg_catalog.pg_class t ON t.oid = d.refobjid "
    "JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace "
    "WHERE v.relkind = 'v' AND vn.nspname NOT IN ('pg_catalog', 'information_schema') "
    "GROUP BY 1, 2, 3, 4"
)
# each view's definition (for the functions it calls)
_PG_VIEWS = (
    "SELECT n.nspname, v.relname, pg_catalog.pg_get_viewdef(v.oid) "
    "FROM pg_catalog.pg_class v JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace "
    "WHERE v.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
)


def _pg_rows(dbapi_conn: Any) -> list[_Row]:
    # A failed query aborts a PostgreSQL transaction: inside one, read under a savepoint so
    # the caller's statement still runs.
    guard = not getattr(dbapi_conn, "autocommit", False)
    if guard:
        _fetchless(dbapi_conn, "SAVEPOINT yokedcache_catalog")
    try:
        relations = _fetch(dbapi_conn, _PG_RELATIONS)
        scans = [
            (nsp, view, sqltext.scan_reads(_text(definition)))
            for nsp, view, definition in _fetch(dbapi_conn, _PG_VIEWS)
        ]
        ask = {f for _, _, scan in scans for f in scan.functions if routines.kind_of(f) is None}
        kinds = _pg_immutable(dbapi_conn, ask) if ask else {}
    except Exception:
        if guard:
            _fetchless(dbapi_conn, "ROLLBACK TO SAVEPOINT yokedcache_catalog")
            _fetchless(dbapi_conn, "RELEASE SAVEPOINT yokedcache_catalog")
        raise
    if guard:
        _fetchless(dbapi_conn, "RELEASE SAVEPOINT yokedcache_catalog")
    reads: dict[tuple[str, str], set[tuple[str | None, str]]] = {}
    for vn, v, tn, t in relations:
        reads.setdefault((vn, v), set()).add((tn, t))
    out: list[_Row] = []
    for nsp, view, scan in scans:
        why = (
            scan.why or "its definition cannot be read"
            if scan.tables is None
            else _cacheable_functions(scan.functions, kinds)
        )
        if why:
            log.debug("yokedcache: reads of view %s.%s cannot be known: %s", nsp, view, why)
        out.append((nsp, view, None if why else frozenset(reads.get((nsp, view), ()))))
    return out


def _pg_immutable(dbapi_conn: Any, names: Iterable[str]) -> dict[str, routines.FunctionKind]:
    """READONLY for each of *names* (maybe ``schema.name``) every ``pg_proc`` entry of which
    is immutable. (Not routines.pg_volatility: what it learns makes every memoised statement
    shape be rebuilt, so the read that loads the catalog would not be served next time.)"""
    names = sorted(set(names))
    bases = sorted({n.rpartition(".")[2].lower() for n in names})
    quoted = ", ".join("'" + b.replace("'", "''") + "'" for b in bases)
    rows = _fetch(
        dbapi_conn,
        "SELECT n.nspname, p.proname, p.provolatile FROM pg_catalog.pg_proc p "
        "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE lower(p.proname) IN ({quoted})",
    )
    mutable: set[str] = set()
    found: set[str] = set()
    for nsp, proname, vol in rows:
        for key in (_text(proname).lower(), f"{_text(nsp).lower()}.{_text(proname).lower()}"):
            found.add(key)
            if _text(vol) != "i":
                mutable.add(key)
    return {
        n: routines.FunctionKind.READONLY
        for n in names
        if n.lower() in found and n.lower() not in mutable
    }


def _fetchless(dbapi_conn: Any, sql: str) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute(sql)
    finally:
        cur.close()
