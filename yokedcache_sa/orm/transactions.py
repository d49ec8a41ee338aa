"""Session transaction listeners: learn the isolation at begin, mark before COMMIT, bump
after it."""

from __future__ import annotations

import logging
import weakref
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction

from . import _compat
from ._greenlet import call_twin
from .bindstate import connection_taint, connection_variant
from .held import hold_open
from .isolation import _isolation_of, _snapshot_isolated, learn
from .pgwrites import RECHECK_KEY, _add_pg_modified, recheck_looked, settle
from .state import STATE_KEY, SessionState
from .watch import watch_engine

log = logging.getLogger("yokedcache_sa")


# -- transaction listeners -----------------------------------------------------------------


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is None:
        return
    watch_engine(connection.engine)  # normally watched already: at the session's first sight
    if transaction.nested:
        _savepoint_began(st, transaction)
    connection.__dict__["_yc_state"] = st
    st.conns.append(weakref.ref(connection))
    why = connection.__dict__.get("_yc_tainted") or connection_taint(connection)
    if why:
        st.taint(connection, why)
    if connection.get_execution_options().get("schema_translate_map"):
        variant = connection_variant(connection)
        if variant is not None:
            st.variants[connection.engine] = variant
    iso = _isolation_of(connection)
    if iso == "READ UNCOMMITTED":
        st.dirty_reads = True
    engine = connection.engine
    known = st.view.isolation(engine)
    # a SAVEPOINT runs inside the transaction whose isolation is known already (on SQLite,
    # after a write the database transaction is open, whoever opened it)
    isolated = (
        known if transaction.nested and known is not None else _snapshot_isolated(connection, iso)
    )
    if connection.get_execution_options().get("isolation_level") == (
        engine.get_execution_options().get("isolation_level")
    ):
        learn(engine, isolated)
    if st.view.begin(
        engine,
        isolated=isolated,
        # joined a database transaction that already ran SQL: its snapshot may predate
        # any sequence observed now, so nothing is provably of it
        ran_sql=bool(connection.__dict__.get("_yc_ran")),
        # InnoDB turns every SELECT into a locking read of the latest rows: a cached read
        # would take no lock, so none is ever served (results are still stored)
        locking_reads=iso == "SERIALIZABLE" and connection.dialect.name in ("mysql", "mariadb"),
    ):
        try:
            cache = st.txn_cache()
        except LookupError as exc:  # no cache to observe: this transaction reads uncached
            log.warning("yokedcache: %s; reading uncached", exc)
            snap = None
        else:
            snap = call_twin(cache.observe_sync, cache.observe)
        st.view.observed(snap)


def _before_commit(session: Session) -> None:
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is None:
        return
    # Every table the COMMIT will include is marked "being written" in one round trip before
    # it is sent; in strict mode an undeliverable mark raises then, before anything is
    # committed (commit() then rolls back and re-raises). The session's own flush of pending
    # changes comes after every before_commit listener (SQLAlchemy's order, which listeners
    # rely on), so with changes pending the marks are taken after that flush instead.
    # (A savepoint's commit marks early too; that only lengthens the lease.)
    st.committing = True
    if not _compat.has_pending_changes(session):
        _mark_before_commit(st)


def _after_flush_postexec(session: Session, flush_context: Any) -> None:
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is not None and st.committing:
        _mark_before_commit(st)  # the flush commit() runs before sending COMMIT


def _mark_before_commit(st: SessionState) -> None:
    if st.pg_base:
        _add_pg_modified(st)
    if st.pg_looked:
        recheck_looked(st)
    st.mark_pending()


# pg_stat_xact_user_tables without the view's joins and grouping (about 40% cheaper)


def _after_commit(session: Session) -> None:
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is None:
        return
    if session.in_nested_transaction():
        return  # a SAVEPOINT was released: the outer transaction has not committed yet
    st.committed = True
    hold_open(st)  # a joined external transaction: COMMIT comes later
    st.finish(committed=True)


_UNDONE_BY_SAVEPOINTS: Final = frozenset({"sqlite", "postgresql"})
"""Databases where ROLLBACK TO SAVEPOINT undoes every write made since the savepoint (all
their tables are transactional; MariaDB's MyISAM and Aria tables are not)."""


def _savepoint_began(st: SessionState, transaction: SessionTransaction) -> None:
    """A SAVEPOINT began on a connection (SQLAlchemy emits it before the first statement in
    it, after the flush ``begin_nested()`` runs): remember what the transaction had written
    before it, once (a savepoint spanning several connections begins on each)."""
    # savepoints released or rolled back since: gone (the list holds the open ones)
    st.savepoints = [e for e in st.savepoints if e[0].is_active]
    if any(e[0] is transaction for e in st.savepoints):
        return
    for ref in st.conns:  # what earlier writes' triggers changed was written before it
        conn = ref()
        if conn is not None and RECHECK_KEY in conn.__dict__:
            settle(conn)
    st.savepoints.append((transaction, frozenset(st.written)))


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    """A SAVEPOINT was rolled back (the database undid its writes): its tables are no longer
    written by this transaction unless written before it. PostgreSQL's per-transaction
    counters still count the undone rows, so there the COMMIT check adds them back (safe,
    not precise); on other databases nothing is forgotten."""
    if not previous.nested:
        return
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is None:
        return
    for i in range(len(st.savepoints) - 1, -1, -1):
        if st.savepoints[i][0] is previous:
            before = st.savepoints[i][1]
            del st.savepoints[i:]
            if not st.autocommitted and _all_undo_savepoints(st):
                st.written.intersection_update(before)
            return


def _all_undo_savepoints(st: SessionState) -> bool:
    conns = [c for c in (ref() for ref in st.conns) if c is not None]
    return bool(conns) and all(c.dialect.name in _UNDONE_BY_SAVEPOINTS for c in conns)


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        if transaction.nested:
            st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
            if st is not None:
                st.committing = False  # a savepoint's commit (or its failure) is over
        return  # savepoints: keep the outer transaction's marks and written tables
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined (a Session)
    if st is None:
        return
    # COMMIT was sent but did not return: the outcome is unknown, so invalidate.
    st.finish(committed=st.db_commit_started)
