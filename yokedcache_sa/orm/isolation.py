"""Snapshot isolation of a session's transactions: whether one reads one snapshot (the
core's :class:`~yokedcache_sa.txview.TransactionView` derives the horizon from it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from . import _compat
from .state import _STATEMENT_LEVEL, SessionState

_LEARNED_KEY = "_yokedcache_snapshot_isolated"
"""In an engine's ``__dict__`` (one C-level lookup on every read, and it goes with the
engine): whether its transactions are snapshot-isolated, as its first one showed."""


_MIXED_KEY = "_yokedcache_isolation_varies"
"""In a dialect's ``__dict__``: a DBAPI connection reported another isolation level than
the dialect's default (an application ``connect`` listener set it; SQLAlchemy resets a
connection to the default after an ``isolation_level`` option): the pool's connections may
differ, so nothing is predicted for an engine that leaves the level to the connection."""


def learn(engine: Engine, isolated: bool) -> None:
    """Remember that transactions on *engine* (at its own isolation level) read one
    snapshot, or not: later sessions predict it without checking a connection out."""
    if _MIXED_KEY in engine.dialect.__dict__ and not _configured_isolation(engine):
        engine.__dict__.pop(_LEARNED_KEY, None)
        return
    engine.__dict__[_LEARNED_KEY] = isolated


_ACTUAL_KEY = "yokedcache_isolation"
"""In a pooled connection's ``info``: the isolation level its DBAPI connection reported."""


def _configured_isolation(bind: Any) -> str:
    """The isolation level SQLAlchemy sets on *bind* (execution option, or
    ``create_engine(isolation_level=...)``); empty when it leaves the connection's own."""
    iso = bind.get_execution_options().get("isolation_level")
    return str(iso or _compat.on_connect_isolation_level(bind.dialect) or "").upper()


def _isolation_of(bind: Any) -> str:
    iso = _configured_isolation(bind)
    if iso:
        return iso
    if isinstance(bind, Connection) and bind.dialect.name != "sqlite":
        # SQLAlchemy read the dialect's default from the first connection before the
        # application's own ``connect`` listeners ran (one may SET the session's isolation):
        # what the DBAPI connection reports is the truth, asked once per DBAPI connection
        pooled = bind.connection
        info = pooled.info
        actual = info.get(_ACTUAL_KEY)
        dbapi = pooled.dbapi_connection
        if actual is None and dbapi is not None:
            try:
                actual = bind.dialect.get_isolation_level(dbapi)
            except Exception:  # not known: REPEATABLE READ is the safe guess
                return "REPEATABLE READ"
            info[_ACTUAL_KEY] = actual
            default = getattr(bind.dialect, "default_isolation_level", None)
            if str(actual).upper() != str(default or "").upper():
                bind.dialect.__dict__[_MIXED_KEY] = True
        return str(actual or "REPEATABLE READ").upper()
    return str(getattr(bind.dialect, "default_isolation_level", None) or "").upper()


def _snapshot_isolated(conn: Connection, iso: str | None = None) -> bool:
    """Whether *conn*'s transaction reads one snapshot (REPEATABLE READ, SERIALIZABLE);
    *iso*: its :func:`_isolation_of`, when the caller asked already."""
    if (iso if iso is not None else _isolation_of(conn)) in _STATEMENT_LEVEL:
        return False
    if conn.dialect.name == "sqlite":
        # sqlite3's legacy transaction control runs SELECTs outside a transaction until the
        # first write, after which the write lock keeps every other writer out: no snapshot
        # to be consistent with. With BEGIN issued by the application (SQLAlchemy's
        # SAVEPOINT recipe emits it from the engine's ``begin`` event, so the database
        # transaction is open when this runs) it is one: the pysqlite dialect turns legacy
        # control back on (``isolation_level = ""``) for a connection given an isolation
        # level, so the attribute alone does not tell.
        pooled = conn.connection
        dbapi = pooled.dbapi_connection
        legacy = getattr(dbapi, "autocommit", -1) == -1  # sqlite3.LEGACY_TRANSACTION_CONTROL
        if legacy and getattr(dbapi, "isolation_level", None) is not None:
            # aiosqlite's adapter has no in_transaction; the aiosqlite connection has
            began = getattr(dbapi, "in_transaction", None)
            if began is None:
                began = getattr(pooled.driver_connection, "in_transaction", False)
            if not began:
                return False
    return True


def _predicted(bind: Any) -> bool | None:
    """Whether a transaction on *bind* (not begun yet) will be snapshot-isolated; None when
    only a connection can tell (engine never connected, SQLite's transaction control)."""
    if isinstance(bind, Connection):
        return _snapshot_isolated(bind)
    iso = _configured_isolation(bind)
    known: bool | None = bind.__dict__.get(_LEARNED_KEY)
    if known is not None and (iso or _MIXED_KEY not in bind.dialect.__dict__):
        return known
    if not iso or bind.dialect.name == "sqlite":
        return None  # the connection's own level: only one begun can tell
    return iso not in _STATEMENT_LEVEL


def _horizon(
    st: SessionState, bind: Any, engine: Engine, session: Session
) -> tuple[int | None, Any]:
    """The horizon a lookup must respect (the core's :meth:`TransactionView.lookup_horizon`),
    once it is known whether the transaction on *engine* is snapshot-isolated.

    When that cannot be predicted for a transaction not begun yet, begins it (the
    after_begin listener learns it) and returns the connection as well (else None), which
    the statement's execution then reuses."""
    view = st.view
    isolated, horizon = view.isolation_and_horizon(engine)
    if isolated is not None:
        return horizon, None  # begun: its isolation is known
    if (
        bind is engine
        and engine.__dict__.get(_LEARNED_KEY) is False
        and _MIXED_KEY not in engine.dialect.__dict__
    ):
        # the common case: nothing begun on an engine known statement-level
        return horizon, None
    conn = None
    isolated = _predicted(bind)
    if isolated is None:
        conn = _compat.begin_connection(session, bind)  # after_begin learns it
        isolated = view.isolation(engine)
        if isolated is None:
            isolated = True
    return view.lookup_horizon(engine, isolated), conn
