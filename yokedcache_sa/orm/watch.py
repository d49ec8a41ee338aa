"""Watching an engine: the engine listeners installed per root engine, on first sight.

Nothing is installed at import, nor on the ``Engine`` class: a caching session, an ``@cached``
computation or the application (:func:`watch_engine`) watches the engines it sees, tracked
weakly. A pool listener tells connections opened since apart from older ones, which the pool
replaces at their next checkout.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from . import _compat
from .bindstate import WATCHED_KEY
from .engine_events import _ENGINE_EVENTS, _INNODB_EVENTS
from .txnsql import NO_ROWS_NO_VIEW

__all__ = ["forget_watched", "is_watched", "watch_engine"]

_watched: weakref.WeakSet[Engine] = weakref.WeakSet()  # engines (and option engines) watched
_install_lock = threading.Lock()
# in a watched engine's __dict__ (one C-level lookup for every session made on it): the
# _generation it was watched in; forget_watched() starts a new one
_SEEN_KEY = "_yokedcache_watched"
_INSTALLED_KEY = "_yokedcache_listening"  # in a root engine's __dict__: listeners installed
_generation = object()


def forget_watched() -> None:
    """Forget which engines were watched: the next sight of each installs its listeners
    again (idempotent), e.g. after a test suite removed every engine's listeners."""
    global _generation
    with _install_lock:
        _watched.clear()
        _generation = object()


def _on_connect(dbapi_connection: Any, record: Any) -> None:
    record.info[WATCHED_KEY] = True  # every statement on it is seen from now on


def _on_checkout_sqlite(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """SQLite has no state-changing statements the key must see (and replacing an
    in-memory database's connection would lose the database): watched from now on."""
    record.info[WATCHED_KEY] = True


def watch_engine(bind: Any) -> None:
    """Install the engine listeners on *bind*'s engine, once (idempotent, thread-safe).

    *bind* is an Engine, an option engine, a Connection, or an asyncio engine or connection.
    The listeners go on the root engine (an option engine fires its parent's listeners and
    shares its pool); engines are tracked weakly. The pool replaces the connections it
    opened before at their next checkout (SQLite's are kept and marked watched instead, see
    :func:`_on_checkout_sqlite`); a connection checked out before counts as having unknown
    state (:func:`~.bindstate.connection_taint`).
    """
    d = getattr(bind, "__dict__", None)
    if d is not None and d.get(_SEEN_KEY) is _generation:
        return  # seen already: the common case, first
    engine = bind if isinstance(bind, Engine) else _engine_of(bind)
    if engine is None:
        return
    if engine in _watched:
        engine.__dict__[_SEEN_KEY] = _generation
        return
    root = _compat.root_engine(engine)
    with _install_lock:
        if root not in _watched:
            # event.contains() keys on id(engine) while the dialect's and the pool's
            # listeners live on those objects: an engine at the address of a dead one whose
            # dialect or pool lived on would look as if it had them. So only an engine that
            # had its listeners installed (forget_watched() since) is asked.
            seen = root.__dict__.get(_INSTALLED_KEY, False)
            rd = root.dialect
            innodb = _INNODB_EVENTS if rd.name in NO_ROWS_NO_VIEW else ()
            sqlite = (("checkout", _on_checkout_sqlite),) if rd.name == "sqlite" else ()
            for name, fn in (*_ENGINE_EVENTS, *innodb, ("connect", _on_connect), *sqlite):
                if not (seen and event.contains(root, name, fn)):
                    event.listen(root, name, fn)
            root.__dict__[_INSTALLED_KEY] = True
            if not sqlite:
                # a pooled connection opened before may have run state-changing SQL nobody
                # saw (SET search_path): the pool replaces each at its next checkout
                _compat.recycle_connections(root.pool)
            _watched.add(root)
            root.__dict__[_SEEN_KEY] = _generation
        _watched.add(engine)
        engine.__dict__[_SEEN_KEY] = _generation


def _engine_of(bind: Any) -> Engine | None:
    sync = getattr(bind, "sync_engine", None) or getattr(bind, "sync_connection", None)
    if sync is not None:
        bind = sync
    engine = getattr(bind, "engine", None)
    return engine if isinstance(engine, Engine) else None


def is_watched(engine: Engine) -> bool:
    """Whether *engine* (or the engine it was made from) has the listeners."""
    return engine in _watched or _compat.root_engine(engine) in _watched
