"""The private SQLAlchemy names behind binds: engines, pools and dialects, and resolving a
statement's bind once (a ``get_bind()`` override asked once per statement, as without the
cache); part of :mod:`._compat` (which re-exports them and lists their attributes in its
``PRIVATE_ATTRIBUTES``)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.pool import Pool
from sqlalchemy.sql.selectable import Select

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "begin_connection",
    "bind_reused",
    "execution_bind_arguments",
    "on_connect_isolation_level",
    "pool_creator",
    "recycle_connections",
    "root_engine",
    "simple_bind",
]

#: (owner, attribute) pairs used here (see :data:`._compat.PRIVATE_ATTRIBUTES`).
PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (Select, "_propagate_attrs"),
    (Session, "_connection_for_bind"),
    (OptionEngine, "_proxied"),
    (Pool, "_creator"),
    (Pool, "_invalidate_time"),
    (DefaultDialect, "_on_connect_isolation_level"),
)


_SESSION_GET_BIND = Session.get_bind
_BINDS = "binds" if "binds" in Session().__dict__ else "_Session__binds"  # 2.1, or 2.0


def simple_bind(session: Session, bind_arguments: Any) -> Any:
    """``session.bind`` when ``Session.get_bind()`` returns it whatever it is asked: not
    overridden (by the class or the instance), no ``binds`` map, no ``bind`` argument in
    *bind_arguments* (what a statement runs with); else None (ask ``get_bind()``)."""
    d = session.__dict__
    if (
        "get_bind" in d
        or type(session).get_bind is not _SESSION_GET_BIND
        or bind_arguments.get("bind") is not None
        or d.get(_BINDS)
    ):
        return None
    return session.bind


def execution_bind_arguments(ox: ORMExecuteState) -> dict[str, Any]:
    """The arguments SQLAlchemy passes to ``Session.get_bind()`` when it runs *ox*'s
    statement after the ``do_orm_execute`` listeners: its second ``orm_pre_session_exec``
    pass takes the clause and mapper from the statement the listeners left."""
    args = dict(ox.bind_arguments)
    if ox.is_orm_statement:
        statement: Any = ox.statement
        args["clause"] = statement
        subject = statement._propagate_attrs.get("plugin_subject")
        if subject:
            args["mapper"] = subject.mapper
    return args


@contextmanager
def bind_reused(
    session: Session, bind_arguments: dict[str, Any] | None, bind: Any, conn: Any = None
) -> Iterator[list[Any]]:
    """Run a statement whose bind the caller resolved already, without resolving it again.

    Within the block, the session's first ``get_bind()`` with *bind_arguments* (the same
    objects) returns *bind* instead of calling the session's ``get_bind`` — an override (a
    router picking a replica) is asked once per statement, as without the cache, and the
    statement runs where its key says (*bind_arguments* None: the bind came from
    :func:`simple_bind`, which ``get_bind()`` returns whatever it is asked, so it is left as
    it is). The first ``_connection_for_bind(bind)`` returns *conn*
    when the caller began it already. Yields a list that receives the connection the
    statement ran on.
    """
    d = session.__dict__
    own_get_bind = d.get("get_bind")
    own_conn_for = d.get("_connection_for_bind")
    real_get_bind = session.get_bind
    real_conn_for = session._connection_for_bind
    ran_on: list[Any] = []
    unused = [True]

    def get_bind(*args: Any, **kw: Any) -> Any:
        if (
            unused
            and not args
            and bind_arguments is not None
            and kw.keys() == bind_arguments.keys()
            and all(kw[k] is bind_arguments[k] for k in kw)
        ):
            unused.clear()
            return bind
        return real_get_bind(*args, **kw)

    def connection_for_bind(engine: Any, *args: Any, **kw: Any) -> Any:
        if engine is bind and not ran_on and conn is not None and not args and not kw:
            ran_on.append(conn)
            return conn
        got = real_conn_for(engine, *args, **kw)
        if engine is bind and not ran_on:
            ran_on.append(got)
        return got

    patched: list[tuple[str, Any]] = [("_connection_for_bind", own_conn_for)]
    if bind_arguments is not None:
        patched.append(("get_bind", own_get_bind))
    if bind_arguments is not None:
        d["get_bind"] = get_bind
    d["_connection_for_bind"] = connection_for_bind
    try:
        yield ran_on
    finally:
        for name, own in patched:
            if own is None:
                d.pop(name, None)
            else:
                d[name] = own


def begin_connection(session: Session, bind: Any) -> Any:
    """The session's connection for *bind* (an engine or connection ``get_bind()`` returned),
    begun as the statement's execution would begin it: without asking ``get_bind()`` again."""
    return session._connection_for_bind(bind)


def root_engine(engine: Engine) -> Engine:
    """The engine *engine* was made from by ``execution_options()`` (itself if none).

    An option engine shares its parent's pool and fires the parent's listeners, also those
    added later; listeners added to the option engine itself fire only for it.
    """
    while True:
        parent = getattr(engine, "_proxied", None)
        if not isinstance(parent, Engine):
            return engine
        engine = parent


# -- pools and dialects -------------------------------------------------------------------


def pool_creator(pool: Pool) -> Any:
    """The function *pool* opens DBAPI connections with (``create_engine``'s own, or the
    ``creator=`` given)."""
    return getattr(pool, "_creator", None)


def recycle_connections(pool: Pool) -> None:
    """Have *pool* replace every connection it opened so far at its next checkout (what
    SQLAlchemy itself does after a disconnect), with no listener on each checkout."""
    pool._invalidate_time = time.time()


def on_connect_isolation_level(dialect: Any) -> Any:
    """The isolation level ``create_engine(isolation_level=...)`` sets on every new
    connection, or None."""
    return getattr(dialect, "_on_connect_isolation_level", None)
