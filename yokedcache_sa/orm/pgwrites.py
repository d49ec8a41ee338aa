"""PostgreSQL: what a transaction changed, from the server's own modification counters."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy.engine import Connection

from ..tags import ALL_TAG, table_tag
from . import routines, tracking
from .state import SessionState, _known_metadata

log = logging.getLogger("yokedcache_sa")


_PG_COUNTS = (
    "SELECT n.nspname, c.relname, n.nspname = current_schema(), "
    "CASE WHEN pg_catalog.age(c.xmin) <= 0 THEN -1 ELSE s.n END "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN LATERAL (SELECT pg_catalog.pg_stat_get_xact_tuples_inserted(c.oid) "
    "+ pg_catalog.pg_stat_get_xact_tuples_updated(c.oid) "
    "+ pg_catalog.pg_stat_get_xact_tuples_deleted(c.oid) AS n) s "
    "WHERE c.relkind IN ('r', 'm') AND n.nspname <> 'pg_catalog' "
    "AND n.nspname <> 'information_schema' AND (s.n > 0 OR pg_catalog.age(c.xmin) <= 0)"
)
# TRUNCATE (a trigger's, a function's: no SQL text names it) zeroes a table's counters of the
# transaction; it rewrites the table's pg_class row, though, whose xmin is then this
# transaction's (or one of its subtransactions'): newer than the transaction's stable xid,
# so age() <= 0. Such a table counts -1, always changed (also a table another transaction
# altered and committed meanwhile: invalidated needlessly, never missed)
# PostgreSQL >= 15 reports a backend's not-yet-flushed counts of earlier transactions in
# pg_stat_xact_*; forcing the flush when this transaction ends lets the next one on the
# same connection skip its baseline query
_PG_COUNTS_FLUSH = _PG_COUNTS.replace(
    " WHERE", " CROSS JOIN (SELECT pg_catalog.pg_stat_force_next_flush()) f WHERE"
)
_PG_CLEAN = "_yc_pg_clean"

_PARTS = (
    "WITH t AS ({counts}) SELECT nspname, relname, d, n FROM t UNION ALL "
    "SELECT an.nspname, a.relname, an.nspname = current_schema(), "
    "CASE WHEN bool_or(t.n < 0) THEN -1 ELSE sum(t.n)::bigint END "
    "FROM t CROSS JOIN LATERAL pg_catalog.pg_partition_ancestors(t.oid) pa "
    "JOIN pg_catalog.pg_class a ON a.oid = pa.relid AND a.oid <> t.oid "
    "JOIN pg_catalog.pg_namespace an ON an.oid = a.relnamespace "
    "WHERE t.part GROUP BY an.nspname, a.relname"
)
# PostgreSQL >= 12: a partition's counts also count for every partitioned table above it
# (reads name those; a trigger's INSERT into one lands in a partition)


def _with_partitions(counts: str) -> str:
    inner = counts.replace(
        "SELECT n.nspname, c.relname, n.nspname = current_schema(), ",
        "SELECT c.oid, c.relispartition AS part, n.nspname, c.relname, "
        "n.nspname = current_schema() AS d, ",
        1,
    ).replace(" ELSE s.n END ", " ELSE s.n END AS n ", 1)
    return _PARTS.format(counts=inner)


_PG_COUNTS_PARTS = _with_partitions(_PG_COUNTS)
_PG_COUNTS_PARTS_FLUSH = _with_partitions(_PG_COUNTS_FLUSH)


def _pg_counts(conn: Connection, flush: bool = False) -> dict[tuple[str, str, bool], int]:
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    if (conn.dialect.server_version_info or (0,)) >= (12,):
        sql = _PG_COUNTS_PARTS_FLUSH if flush else _PG_COUNTS_PARTS
    else:
        sql = _PG_COUNTS_FLUSH if flush else _PG_COUNTS
    try:
        cur.execute(sql)
        rows = cur.fetchall()
    finally:
        cur.close()
    return {(schema, table, bool(default)): int(n) for schema, table, default, n in rows}


def _pg_note_write(st: SessionState, conn: Connection, written: Iterable[str]) -> None:
    """Before a write on a PostgreSQL connection to a table with triggers, rules or
    cascading foreign keys: at the transaction's first such write, record the counters it
    starts from (nothing to ask when the last check left them flushed), and have them
    counted again once the statement ran (:func:`settle`, before the transaction's writes
    are next read), so that its own reads see what they changed too. Writes to other
    tables change only the tables their SQL names, which are tracked already."""
    if not routines.pg_side_effects(conn.engine, conn.connection.dbapi_connection, written):
        # the SQL names every table this statement changes: nothing to count (and no cost
        # on the commit path), but the connection's counters are no longer flushed
        conn.connection.info.pop(_PG_CLEAN, None)
        if id(conn) not in st.pg_looked:
            st.pg_looked[id(conn)] = routines.side_generation(conn.engine)
        return
    if id(conn) not in st.pg_base:
        clean = conn.connection.info.pop(_PG_CLEAN, False)
        st.pg_base[id(conn)] = {} if clean else _pg_counts(conn)
    conn.__dict__[RECHECK_KEY] = st  # counted before the transaction's writes are next read


def _pg_changed(st: SessionState, conn: Connection, flush: bool = False) -> set[str]:
    """Tags of the tables whose counters moved since the transaction's first write."""
    base = st.pg_base.get(id(conn), {})
    tags: set[str] = set()
    for (schema, table, default), n in _pg_counts(conn, flush=flush).items():
        if n < 0 or n != base.get((schema, table, default), 0):
            tags.add(table_tag(table, schema))
            if default:
                tags.add(table_tag(table))
    return tags


def _add_pg_modified(st: SessionState) -> None:
    """Add the tables PostgreSQL counted as modified by the open transaction: trigger and
    function writes and FK actions the metadata does not show (a TRUNCATE by the SQL text
    is tracked from it; one by a trigger or function rewrites the table's catalog row)."""
    if ALL_TAG in st.written:
        st.pg_base = {}
        return
    for ref in st.conns:
        conn = ref()
        if conn is None or id(conn) not in st.pg_base or conn.closed:
            continue
        conn.__dict__.pop(RECHECK_KEY, None)  # counted here, whatever it waited for
        if "_yc_failed" in conn.__dict__ and not _count_failed(st, conn):
            continue  # aborted: PostgreSQL turns the COMMIT into a ROLLBACK, nothing to count
        if not conn.in_transaction():
            continue
        flush = (conn.dialect.server_version_info or (0,)) >= (15,)
        _note_counted(st, conn, flush=flush)
        if flush:
            conn.connection.info[_PG_CLEAN] = True
    st.pg_base = {}


def _note_counted(st: SessionState, conn: Connection, flush: bool = False) -> None:
    """Add the tables whose counters moved to the transaction's writes."""
    tags = _pg_changed(st, conn, flush=flush)
    if tags:
        st.note_written(tracking.with_aliases(tags, None, _known_metadata.members()))


RECHECK_KEY = "_yc_pg_recheck"
"""In a connection's ``__dict__``: the session state whose write to a table with triggers or
cascades has run on it, and whose counters are not counted yet (:func:`settle`)."""


_PQ_INERROR = 3
"""libpq's PQTRANS_INERROR: the transaction is aborted (psycopg and psycopg2 report it)."""


def pq_aborted(conn: Connection) -> bool | None:
    """Whether *conn*'s PostgreSQL transaction is aborted, as the driver knows without a
    round trip (psycopg, psycopg2); None when it cannot tell (asyncpg)."""
    try:
        status = conn.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
    except Exception:
        return None
    return int(status) == _PQ_INERROR


def _count_failed(st: SessionState, conn: Connection) -> bool:
    """After a failed statement on a driver that cannot tell whether it aborted the
    transaction (asyncpg refuses some parameters client-side): count, and say whether the
    transaction answered (then it is not aborted)."""
    if pq_aborted(conn) is not None:
        return False  # the driver knows: aborted (else the failure would not be marked)
    try:
        _note_counted(st, conn)
    except Exception:
        return False  # aborted: a COMMIT rolls back, a ROLLBACK TO SAVEPOINT comes first
    conn.__dict__.pop("_yc_failed", None)
    return True


def settle(conn: Connection) -> None:
    """Count what a write to a table with triggers or cascades changed, if one ran on *conn*
    since: called before anything reads the transaction's writes (the next statement on
    *conn*, a cache hit, a connection-level COMMIT). Not while a failed statement holds the
    transaction aborted (the write's count waits for ROLLBACK TO SAVEPOINT)."""
    d = conn.__dict__
    if "_yc_failed" in d:
        st = d.get(RECHECK_KEY)
        if st is not None and _count_failed(st, conn):
            del d[RECHECK_KEY]
        return
    st = d.pop(RECHECK_KEY, None)
    if st is not None:
        _note_counted(st, conn)


def recheck_looked(st: SessionState) -> None:
    """Before COMMIT: if the engine ran DDL since a write of this transaction was looked up
    as changing only the tables it names (a trigger created in a transaction that committed
    while the write waited for its lock), ask again; a table with triggers now may have
    fired them uncounted, so everything is invalidated."""
    looked, st.pg_looked = st.pg_looked, {}
    if ALL_TAG in st.written:
        return
    for ref in st.conns:
        conn = ref()
        if conn is None or id(conn) not in looked or conn.closed or "_yc_failed" in conn.__dict__:
            continue
        if routines.side_generation(conn.engine) is looked[id(conn)]:
            continue
        if routines.pg_side_effects(conn.engine, conn.connection.dbapi_connection, st.written):
            log.warning(
                "yokedcache: a table this transaction wrote got triggers or cascades while "
                "it ran; invalidating the whole cache at commit"
            )
            st.note_written(frozenset({ALL_TAG}))
            return
