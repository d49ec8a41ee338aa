"""What the cache knows about SQL functions: which are safe to cache, which may write.

A statement that calls a function is cached only when every function is known to return the
same answer for the same arguments and data: common builtins, functions declared with
:func:`declare_function`, and on PostgreSQL functions whose ``pg_proc.provolatile`` is
``'i'`` (immutable). A function that may write tables (any function that is neither a known
builtin nor declared read-only, and on PostgreSQL is volatile) makes its statement a write
of unknown tables.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..tags import table_tag

__all__ = [
    "FunctionKind",
    "declare_function",
    "declared_reads",
    "forget_catalog",
    "kind_of",
    "pg_known",
    "pg_side_effects",
    "pg_volatility",
]

log = logging.getLogger("yokedcache_sa")


class FunctionKind(Enum):
    """How a function call affects caching."""

    READONLY = "readonly"
    """Same result for the same arguments and table data: cacheable, never writes."""
    UNCACHEABLE = "uncacheable"
    """May answer differently each call (time, randomness, session state), never writes."""
    UNKNOWN = "unknown"
    """Not known: never cached, and may write any table."""


def _names(words: str) -> frozenset[str]:
    return frozenset(words.split())


_READONLY_BUILTINS = _names(
    """
    count sum min max avg total group_concat string_agg array_agg json_agg jsonb_agg
    json_group_array json_group_object json_arrayagg json_objectagg bool_and bool_or every
    bit_and bit_or bit_xor stddev stddev_pop stddev_samp variance var_pop var_samp
    percentile_cont percentile_disc mode listagg
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value
    nth_value
    lower upper lcase ucase length char_length character_length octet_length bit_length
    coalesce ifnull nullif nvl iif if greatest least abs round floor ceil ceiling trunc
    truncate mod power pow sqrt exp ln log log2 log10 sign pi degrees radians sin cos tan
    asin acos atan atan2 cot div
    trim ltrim rtrim btrim substr substring mid left right lpad rpad concat concat_ws
    replace reverse repeat space strpos instr locate position split_part translate initcap
    ascii chr char hex unhex quote md5 sha1 sha2 sha256 sha512 crc32 to_hex format
    regexp_replace regexp_matches regexp_like regexp_substr regexp_instr like glob
    starts_with overlay field find_in_set elt
    cast convert extract date_part to_char to_number to_date
    json json_extract json_unquote json_object json_array json_build_object
    jsonb_build_object json_build_array jsonb_build_array json_value json_query
    json_contains json_length json_type json_valid jsonb_set jsonb_extract_path
    json_extract_path json_extract_path_text jsonb_extract_path_text to_json to_jsonb
    array_length array_position array_to_string cardinality unnest generate_series
    string_to_array array_append array_cat distinct aggregate_strings cube rollup
    grouping_sets grouping any all some json_each jsonb_each json_array_elements
    printf typeof unicode zeroblob likely unlikely likelihood soundex instr octet_length
    date_format str_to_date from_unixtime datediff timestampdiff date_add date_sub adddate
    subdate makedate year month day dayofmonth dayofweek dayofyear hour minute second week
    weekday quarter last_day to_days from_days time_format sec_to_time time_to_sec
    """
)
# answer depends on the clock, randomness, sequence or session state; never write tables
_UNCACHEABLE_BUILTINS = _names(
    """
    now current_timestamp current_date current_time localtime localtimestamp sysdate
    utc_timestamp utc_date utc_time clock_timestamp statement_timestamp
    transaction_timestamp timeofday curdate curtime unix_timestamp date datetime time
    julianday strftime unixepoch date_trunc age
    random rand setseed uuid uuid_short gen_random_uuid uuid_generate_v1 uuid_generate_v4
    randomblob nextval currval lastval setval last_insert_id last_insert_rowid
    changes total_changes row_count found_rows txid_current pg_backend_pid connection_id
    current_user session_user system_user user current_role current_schema database
    schema version pg_sleep sleep benchmark get_lock release_lock pg_advisory_lock
    pg_advisory_unlock pg_try_advisory_lock pg_advisory_xact_lock next_value
    """
)


@dataclass(frozen=True)
class _Declared:
    readonly: bool
    reads: frozenset[str]


_declared: dict[str, _Declared] = {}


def declare_function(name: str, *, readonly: bool = True, reads: Iterable[str] = ()) -> None:
    """Tell the cache what a SQL function does.

    ``readonly=True``: the function writes nothing and returns the same result for the same
    arguments and table data, so statements calling it may be cached; *reads* names the
    tables it reads (results calling it are then also invalidated by writes to them).
    ``readonly=False``: never cache statements calling it, and treat them as writes of
    unknown tables (the whole cache is invalidated when their transaction commits).

    *name* is the function name, optionally schema-qualified (``"billing.total_due"``);
    matching ignores case.

    Example::

        declare_function("order_total", readonly=True, reads=["order_lines"])
    """
    _declared[name.lower()] = _Declared(readonly, frozenset(table_tag(*_split(t)) for t in reads))
    _changed()


def _changed() -> None:
    for callback in _on_declare:
        callback()


_on_declare: list[Callable[[], None]] = []


def on_declare(callback: Callable[[], None]) -> None:
    """Call *callback* whenever what is known of a function changes: a
    :func:`declare_function`, or a function learnt read-only from the database (so
    memoised "not cacheable" decisions are taken again)."""
    _on_declare.append(callback)


def _split(name: str) -> tuple[str, str | None]:
    schema, _, table = name.rpartition(".")
    return table, schema or None


def declared_reads(name: str) -> frozenset[str]:
    """Table tags a declared read-only function reads (empty if none declared)."""
    d = _declared.get(name.lower()) or _declared.get(name.lower().rpartition(".")[2])
    return d.reads if d is not None else frozenset()


def kind_of(name: str) -> FunctionKind | None:
    """The kind of *name* from declarations and builtins; None when only the database knows."""
    low = name.lower()
    d = _declared.get(low)
    if d is None and "." in low:
        schema, _, base = low.rpartition(".")
        if schema not in ("pg_catalog", "main"):
            return None
        low = base
        d = _declared.get(low)
    if d is not None:
        return FunctionKind.READONLY if d.readonly else FunctionKind.UNKNOWN
    if low in _READONLY_BUILTINS:
        return FunctionKind.READONLY
    if low in _UNCACHEABLE_BUILTINS:
        return FunctionKind.UNCACHEABLE
    return None


# -- PostgreSQL: pg_proc.provolatile, cached per engine ------------------------------------

_pg_cache: weakref.WeakKeyDictionary[Any, dict[str, FunctionKind]] = weakref.WeakKeyDictionary()
_pg_lock = threading.Lock()


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def pg_volatility(engine: Any, dbapi_conn: Any, names: Iterable[str]) -> dict[str, FunctionKind]:
    """Kinds of *names* (lower-case, maybe ``schema.name``) from ``pg_proc``, through a raw
    DBAPI cursor of *dbapi_conn* (no engine events). Cached per engine.

    Immutable functions are READONLY; stable or volatile ones in ``pg_catalog`` are
    UNCACHEABLE (stable ones may read tables the cache cannot see, or the clock); volatile
    ones elsewhere are UNKNOWN (they may write). A name ``pg_proc`` does not know stays
    UNKNOWN and is asked again next time (it may be created later).
    """
    with _pg_lock:
        known = _pg_cache.setdefault(engine, {})
        out = {n: known[n] for n in names if n in known}
    todo = sorted({n for n in names if n not in out})
    if not todo:
        return out
    bases = sorted({n.rpartition(".")[2] for n in todo})
    sql = (
        "SELECT n.nspname, p.proname, p.provolatile FROM pg_catalog.pg_proc p "
        "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
        f"WHERE lower(p.proname) IN ({', '.join(_quote(b) for b in bases)})"
    )
    cur = dbapi_conn.cursor()
    try:
        cur.execute(sql)
        rows = cur.fetchall()
    finally:
        cur.close()
    rank = {FunctionKind.READONLY: 0, FunctionKind.UNCACHEABLE: 1, FunctionKind.UNKNOWN: 2}
    found: dict[str, FunctionKind] = {}
    for nsp, proname, vol in rows:
        vol = vol.decode() if isinstance(vol, bytes) else str(vol)
        if vol == "i":
            kind = FunctionKind.READONLY
        elif vol == "s" or nsp == "pg_catalog":
            kind = FunctionKind.UNCACHEABLE
        else:
            kind = FunctionKind.UNKNOWN
        for key in (proname.lower(), f"{nsp.lower()}.{proname.lower()}"):
            if key not in found or rank[kind] > rank[found[key]]:
                found[key] = kind
    learnt = False
    with _pg_lock:
        for n in todo:
            got = found.get(n)
            if got is not None:
                known[n] = got
                learnt = learnt or got is FunctionKind.READONLY
            out[n] = got or FunctionKind.UNKNOWN
    if learnt:
        _changed()
    return out


def pg_known(engine: Any, name: str) -> FunctionKind:
    """The kind ``pg_proc`` gave *name* on *engine*, UNKNOWN if not looked up yet."""
    with _pg_lock:
        return _pg_cache.get(engine, {}).get(name, FunctionKind.UNKNOWN)


# -- PostgreSQL: tables whose writes change other tables -----------------------------------

_side_cache: weakref.WeakKeyDictionary[Any, dict[str, bool]] = weakref.WeakKeyDictionary()

_SIDE_EFFECTS = (
    "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relname IN ({names}) AND ("
    "EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid "
    "AND NOT t.tgisinternal AND t.tgname NOT LIKE 'yokedcache\\_notify\\_%') "
    "OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r WHERE r.ev_class = c.oid "
    "AND r.ev_type <> '1') "
    "OR EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k WHERE k.confrelid = c.oid "
    "AND k.contype = 'f' AND (k.confdeltype IN ('c', 'n', 'd') "
    "OR k.confupdtype IN ('c', 'n', 'd'))))"
)
# PostgreSQL >= 10: a partition's rows are its partitioned table's, and the reverse (the
# recount reports both: pgwrites)
_SIDE_EFFECTS_PARTS = _SIDE_EFFECTS.replace(
    "c.relname IN ({names}) AND (",
    "c.relname IN ({names}) AND (c.relispartition OR c.relkind = 'p' OR ",
    1,
)


def pg_side_effects(engine: Any, dbapi_conn: Any, tags: Iterable[str]) -> bool:
    """Whether writing any of the tables tagged *tags* may change other rows: a user
    trigger, a rule, or a cascading foreign key points at it. Cached per engine."""
    names = {t[len("table:") :].rpartition(".")[2] for t in tags if t.startswith("table:")}
    with _pg_lock:
        known = _side_cache.setdefault(engine, {})
        if any(known.get(n) for n in names):
            return True
        todo = sorted(n for n in names if n not in known)
    if not todo:
        return False
    cur = dbapi_conn.cursor()
    try:
        parts = (getattr(engine.dialect, "server_version_info", None) or (0,)) >= (10,)
        sql = _SIDE_EFFECTS_PARTS if parts else _SIDE_EFFECTS
        cur.execute(sql.format(names=", ".join(_quote(n) for n in todo)))
        hit = {row[0] for row in cur.fetchall()}
    finally:
        cur.close()
    with _pg_lock:
        for n in todo:
            known[n] = n in hit
    return bool(hit)


def side_generation(engine: Any) -> object | None:
    """What :func:`pg_side_effects` knows of *engine*: another object once it was forgotten
    (DDL), None before the first lookup."""
    return _side_cache.get(engine)


def forget_catalog(engine: Any) -> None:
    """Drop what is cached about *engine*'s functions and triggers (after DDL)."""
    if engine is None:
        return
    with _pg_lock:
        _pg_cache.pop(engine, None)
        _side_cache.pop(engine, None)
