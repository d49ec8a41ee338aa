"""Snapshot isolation of a session's transactions: whether one reads one snapshot, and
the horizon a lookup inside it must respect."""

from __future__ import annotations

import weakref
from typing import Any, Final

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import _compat
from .state import _STATEMENT_LEVEL, SessionState

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
    st: SessionState, bind: Any, engine: Engine, session: Session
) -> tuple[int | None, Any]:
    """The horizon a lookup must respect: None when the transaction is not
    snapshot-isolated, and one no entry satisfies while its snapshot does not exist yet.

    When the isolation of a transaction on *bind* cannot be predicted, begins it (the
    after_begin listener learns it) and returns the connection as well (else None), which
    the statement's execution then reuses."""
    if engine in st.snapshots:
        return (st.horizon if st.horizon is not None else _NOTHING_VALID), None
    isolated = st.isolated.get(engine)
    conn = None
    if isolated is None:
        isolated = _predicted(bind)
        if isolated is None:
            conn = _compat.begin_connection(session, bind)  # after_begin learns it
            if engine in st.snapshots:
                return (st.horizon if st.horizon is not None else _NOTHING_VALID), conn
            isolated = st.isolated.get(engine, True)
    # No hit before the database snapshot exists: it may be taken after a commit the
    # cached data predates. The first read goes to the database and starts it.
    return (_NOTHING_VALID if isolated else None), conn
