"""Marks held for a database transaction that outlives the session's commit.

A session joined to an external transaction (``join_transaction_mode`` other than
``control_fully``) commits without the database's COMMIT: the connection's owner commits or
rolls back later. The session's marks are taken again under a writer of their own and held
on the pooled connection until that transaction has ended: the connection's next begin or
rollback, or its return to the pool (by then its owner has committed or rolled back: the
marks are then ended at the next begin or rollback on a watched engine), or, failing all of
these, the marks' lease.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import deque
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
# marks of connections the pool took back, ended at the next begin or rollback anywhere
_ended: deque[list[tuple[Any, list[str], str]]] = deque()


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
    drop the marks held for it (a bump after a rollback only costs misses), and those of
    connections the pool has taken back since."""
    if not _held[0]:
        return
    while _ended:
        try:
            handed_over = _ended.popleft()
        except IndexError:  # another thread took the last one
            break
        _finish(handed_over)
    if conn.closed or conn.invalidated:
        return  # a closed connection's marks are ended once the pool has taken it back
    with _held_lock:
        held = conn.connection.info.pop(HELD_KEY, None)
    if held:
        _finish(held)


def _finish(held: list[tuple[Any, list[str], str]]) -> None:
    with _held_lock:
        _held[0] -= len(held)
    for cache, tags, writer in held:
        try:
            call_twin(cache.end_write_sync, cache.end_write, tags, writer)
        except InvalidationError as exc:  # pending in the cache, retried
            log.debug("yokedcache: %s", exc)


def _listen_checkin(pool: Pool) -> None:
    """Give *pool* the listener that hands held marks over as a connection comes back
    (once; only pools that ever held marks pay for it)."""
    if pool in _pools:
        return
    with _held_lock:
        if pool not in _pools:
            event.listen(pool, "checkin", _on_checkin)
            _pools.add(pool)


def _on_checkin(dbapi_connection: Any, record: Any) -> None:
    # Back in the pool: the transaction that held the marks has been committed or rolled
    # back. This may run inside the garbage collector (a connection never closed), holding
    # whatever lock the interrupted code held: no lock and no cache call here. The marks go
    # to the queue that the next begin or rollback on a watched engine ends (end_held).
    if _held[0] and record is not None:
        held = record.info.pop(HELD_KEY, None)
        if held:
            _ended.append(held)
