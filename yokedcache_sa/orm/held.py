"""Marks held for a database transaction that outlives the session's commit.

A session joined to an external transaction (``join_transaction_mode`` other than
``control_fully``) commits without the database's COMMIT: the connection's owner commits or
rolls back later. The session's marks are taken again under a writer of their own and held
on the pooled connection until that transaction has ended: the connection's next begin or
rollback, or its return to the pool (by then its owner has committed or rolled back), or,
failing all of these, the marks' lease.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.pool import Pool

from ..cache import YokedCache
from ..errors import InvalidationError
from ._greenlet import call_twin

if TYPE_CHECKING:
    from .state import SessionState

log = logging.getLogger("yokedcache_sa")

HELD_KEY: Final = "_yc_held_marks"
"""In a pooled connection's ``info``: ``(cache, tags, writer)`` marks a session's commit left
held because the database transaction it joined goes on (:func:`hold_open`)."""

_held = [0]  # how many connections hold such marks: no lookup on each begin while none does
_held_lock = threading.Lock()
_pools: weakref.WeakSet[Pool] = weakref.WeakSet()  # pools given the checkin listener


def hold_open(st: SessionState) -> None:
    """The session committed but its database transaction goes on: take the marks again
    under a writer of their own, before :meth:`SessionState.finish` bumps and drops the
    session's, and hold them on the connection until that transaction ends
    (:func:`end_held`), so that nobody stores the rows committed before it meanwhile."""
    if not st.marked:
        return
    conns = [c for c in (r() for r in st.conns) if c is not None and not c.closed]
    conns = [c for c in conns if c.in_transaction()]
    if not conns:
        return
    tags, writer, cache = sorted(st.marked), YokedCache.new_writer(), st.txn_cache()
    call_twin(cache.begin_write_sync, cache.begin_write, tags, writer)
    for conn in conns:
        _listen_checkin(conn.engine.pool)
        with _held_lock:
            conn.connection.info.setdefault(HELD_KEY, []).append((cache, tags, writer))
            _held[0] += 1


def end_held(conn: Connection) -> None:
    """*conn*'s database transaction ended (a new one begins, or it rolls back): bump and
    drop the marks held for it (a bump after a rollback only costs misses)."""
    if not _held[0] or conn.closed or conn.invalidated:
        return  # a closed connection's marks end when the pool takes it back
    _end(conn.connection.info)


def _end(info: dict[Any, Any]) -> None:
    with _held_lock:
        held = info.pop(HELD_KEY, None) or ()
        _held[0] -= len(held)
    for cache, tags, writer in held:
        try:
            call_twin(cache.end_write_sync, cache.end_write, tags, writer)
        except InvalidationError as exc:  # pending in the cache, retried
            log.debug("yokedcache: %s", exc)


def _listen_checkin(pool: Pool) -> None:
    """Give *pool* the listener that ends held marks as a connection comes back (once;
    only pools that ever held marks pay for it)."""
    if pool in _pools:
        return
    with _held_lock:
        if pool not in _pools:
            event.listen(pool, "checkin", _on_checkin)
            _pools.add(pool)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    # Back in the pool: the transaction that held the marks has been committed or rolled back
    if _held[0] and record is not None and HELD_KEY in record.info:
        try:
            _end(record.info)
        except Exception as exc:  # never break the pool's checkin: the lease ends them
            log.warning("yokedcache: could not end marks held for a closed connection: %s", exc)
