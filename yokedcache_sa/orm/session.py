"""CachingSession, CachingQuery, ``listen_on_session`` and the listeners' installation.

The listeners live in one module per concept (docs/architecture.md has the map): ``reads``
serve a cacheable SELECT or run it in the caller's session and store it under the snapshot
observed *before* it ran; ``engine_events`` record what every statement writes, marked just
before the database COMMIT and bumped by the root ``after_commit`` (a rollback releases
them); ``transactions`` follow the session's transactions and savepoints. Reads of tables the
open transaction wrote bypass the cache until it ends.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import (
    ORMExecuteState,
    Query,
    Session,
    SessionTransaction,
    scoped_session,
    sessionmaker,
)

from ..cache import DEFAULT_TTL, TTL, YokedCache
from ..errors import InvalidationError, UsageError
from ..tags import table_tag
from . import _compat
from .collect import Collector, current_collector, reading_collector
from .options import FromCache, NoCache
from .reads import _on_execute
from .serving import READ_LISTENERS
from .state import STATE_KEY, SessionState, state_of
from .transactions import (
    _after_begin,
    _after_commit,
    _after_flush_postexec,
    _after_soft_rollback,
    _after_transaction_end,
    _before_commit,
)
from .watch import watch_engine

__all__ = [
    "CachingQuery",
    "CachingSession",
    "Collector",
    "SessionState",
    "current_collector",
    "instrument_session",
    "listen_on_session",
    "reading_collector",
    "state_of",
]

log = logging.getLogger("yokedcache_sa")


_SESSION_EVENTS = (
    ("do_orm_execute", _on_execute),
    ("after_begin", _after_begin),
    ("before_commit", _before_commit),
    ("after_flush_postexec", _after_flush_postexec),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
    ("after_soft_rollback", _after_soft_rollback),
)


# -- public classes ------------------------------------------------------------------------


class CachingQuery(Query[Any]):
    """Legacy ``session.query()`` with cache hints.

    Example::

        session.query(User).filter(User.active).cache(ttl=60, tags=["users"]).all()
        session.query(Report).no_cache().all()
    """

    def cache(
        self, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = (), *, tables: Iterable[str] = ()
    ) -> CachingQuery:
        """Cache this query with *ttl* and extra *tags*."""
        return self.options(FromCache(ttl, tags, tables=tables))

    def no_cache(self) -> CachingQuery:
        """Run this query against the database only."""
        return self.options(NoCache())


class CachingSession(Session):
    """A Session whose ORM reads are cached and whose commits invalidate what they wrote.

    Args:
        cache: the :class:`~yokedcache_sa.YokedCache` to use (the default cache if omitted).
        default_ttl: TTL of entries stored by this session (the cache's default if omitted).
        tags: extra tags on every entry this session stores.
        table_name: shorthand for ``tags=["table:<table_name>"]``.
        vary_on: ``(session) -> value`` naming connection state the application sets with
            ``SET`` / ``set_config()`` (tenant, role); the value becomes part of every key,
            and such SQL then no longer turns caching off for the transaction (see
            docs/orm.md, "Tenants").
        **kw: passed to :class:`sqlalchemy.orm.Session`.

    To add caching to sessions of another class (a plain ``sessionmaker()``), use
    :func:`listen_on_session` instead.

    Example::

        SessionLocal = sessionmaker(engine, class_=CachingSession, cache=cache)
        AsyncSessionLocal = async_sessionmaker(
            async_engine, sync_session_class=CachingSession, cache=cache
        )
    """

    def __init__(
        self,
        bind: Any = None,
        *,
        cache: YokedCache | None = None,
        default_ttl: TTL = DEFAULT_TTL,
        tags: Iterable[str] = (),
        table_name: str | None = None,
        vary_on: Callable[[Session], Hashable] | None = None,
        **kw: Any,
    ) -> None:
        if "query_cls" not in kw:
            kw["query_cls"] = CachingQuery
        super().__init__(bind, **kw)
        extra = (*tags, table_tag(table_name)) if table_name else tags
        self.__dict__[STATE_KEY] = SessionState(cache, default_ttl, extra, vary_on, True)
        if bind is not None:
            watch_engine(bind)
        if kw.get("binds"):
            _watch_binds(None, kw["binds"])

    def commit(self) -> None:
        """Commit, and invalidate what the transaction wrote.

        When a strict-mode mark refuses the COMMIT before it is sent, the transaction is
        rolled back (its writes are not committed) and the :class:`InvalidationError`
        raised.
        """
        _commit_and_finish(self, Session.commit)

    def rollback(self) -> None:
        """Roll back, expiring what the transaction loaded (cache hits included)."""
        _rollback(self, Session.rollback)


def _commit_and_finish(session: Session, commit: Any) -> None:
    try:
        commit(session)
    except InvalidationError:
        st = session.__dict__.get(STATE_KEY)  # state_of(), inlined
        if st is not None and not (st.committed or st.db_commit_started):
            # strict_invalidation refused the COMMIT before it was sent: roll back, or a later
            # commit() would commit these writes with their tables no longer marked.
            session.rollback()
        raise
    finally:
        st = session.__dict__.get(STATE_KEY)  # state_of(), inlined
        if st is not None and (st.marked or st.writer):
            # An exception in another after_commit listener skipped ours: finish here.
            st.finish(committed=st.committed or st.db_commit_started)


def _rollback(session: Session, rollback: Any) -> None:
    """*rollback* as if the hits served since the last transaction had begun one.

    A read from the database autobegins the session's transaction, so a plain Session's
    ``rollback()`` after it expires every loaded object; a hit needs no transaction and
    begins none (it would cost more than the hit). Beginning it now gives the same result.
    """
    st = session.__dict__.get(STATE_KEY)  # state_of(), inlined
    if st is not None and st.unbegun:
        st.unbegun = False
        if session.get_transaction() is None:
            _compat.autobegin(session)
    rollback(session)


def _watch_binds(bind: Any, binds: Any = None) -> None:
    """First sight of a session's engines: give them the engine listeners now, before
    any of their connections is checked out for the session."""
    if bind is not None:
        watch_engine(bind)
    if isinstance(binds, dict):
        for b in binds.values():
            watch_engine(b)


# targets of listen_on_session (a sessionmaker's class_, a Session class or instance)
_listened: weakref.WeakKeyDictionary[Any, _Listeners] = weakref.WeakKeyDictionary()

SessionTarget = sessionmaker[Any] | type[Session] | Session | scoped_session[Any]


class _Listeners:
    """The session listeners for sessions of one target, with that target's settings.

    A session gets its :class:`SessionState` at its first event (a statement, a flush, a
    commit): every path to the database passes one.
    """

    def __init__(
        self,
        cache: YokedCache | None,
        default_ttl: TTL,
        tags: tuple[str, ...],
        vary_on: Callable[[Session], Hashable] | None,
    ) -> None:
        self.cache, self.default_ttl, self.tags, self.vary_on = cache, default_ttl, tags, vary_on

    def state(self, session: Session) -> SessionState:
        st: SessionState | None = session.__dict__.get(STATE_KEY)
        if st is None:
            st = SessionState(
                self.cache, default_ttl=self.default_ttl, tags=self.tags, vary_on=self.vary_on
            )
            session.__dict__[STATE_KEY] = st
            _watch_binds(session.bind)
        return st

    def do_orm_execute(self, ox: ORMExecuteState) -> Any:
        self.state(ox.session)
        return _on_execute(ox)

    def after_begin(self, session: Session, transaction: SessionTransaction, conn: Any) -> None:
        self.state(session)
        _after_begin(session, transaction, conn)

    def before_commit(self, session: Session) -> None:
        self.state(session)
        _before_commit(session)

    def after_flush_postexec(self, session: Session, flush_context: Any) -> None:
        _after_flush_postexec(session, flush_context)

    def after_commit(self, session: Session) -> None:
        _after_commit(session)

    def after_transaction_end(self, session: Session, transaction: SessionTransaction) -> None:
        _after_transaction_end(session, transaction)

    def after_soft_rollback(self, session: Session, previous: SessionTransaction) -> None:
        _after_soft_rollback(session, previous)


READ_LISTENERS.add(_Listeners.do_orm_execute)


def listen_on_session(
    target: SessionTarget,
    cache: YokedCache | None = None,
    *,
    default_ttl: TTL = DEFAULT_TTL,
    tags: Iterable[str] = (),
    table_name: str | None = None,
    vary_on: Callable[[Session], Hashable] | None = None,
) -> None:
    """Make the sessions of *target* cache their reads and invalidate what they commit.

    The event-based installer, in the shape of SQLAlchemy's dogpile caching example: it
    registers session listeners on *target* and changes nothing else (no subclass, no
    method replaced). The sessions then behave as :class:`CachingSession` does.

    Args:
        target: a ``sessionmaker`` (its sessions), a ``Session`` subclass (every session of
            it), a ``scoped_session`` (its factory's sessions) or one ``Session`` (about
            0.1 ms to register on an instance; prefer a factory).
        cache, default_ttl, tags, table_name, vary_on: as for :class:`CachingSession`.

    Raises:
        UsageError: *target* makes :class:`CachingSession` objects (they cache already:
            pass ``cache=`` to them), or *target* already has listeners of this function.

    Differences from :class:`CachingSession`: a hit served while the session has no
    transaction begins one (as a database read would), so that ``rollback()`` expires
    what was loaded; a commit refused by a strict-mode mark leaves the transaction open
    (roll it back, or retry the commit: its tables are marked again first).

    Example::

        SessionLocal = sessionmaker(engine)
        listen_on_session(SessionLocal, cache=cache)

    Added in 0.2.
    """
    cls = _target_class(target)
    if cls is not None and issubclass(cls, CachingSession):
        raise UsageError(
            f"{cls.__name__} is a CachingSession and caches already: pass cache= (and "
            "default_ttl=, tags=, vary_on=) to it instead of calling listen_on_session()"
        )
    events: Any = target if not isinstance(target, scoped_session) else target.session_factory
    # SQLAlchemy registers a sessionmaker's listeners on its own subclass, class_
    key = events.class_ if isinstance(events, sessionmaker) else events
    if isinstance(events, Session) and (state_of(events) or _listeners_of(events)):
        raise UsageError("this session caches already: use instrument_session() to change it")
    if key in _listened or (isinstance(key, type) and any(k in _listened for k in key.__mro__)):
        raise UsageError(f"listen_on_session() was already called for {target!r}")
    extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
    listeners = _Listeners(cache, default_ttl, extra, vary_on)
    for name, _fn in _SESSION_EVENTS:
        event.listen(events, name, getattr(listeners, name))
    _listened[key] = listeners
    if isinstance(events, sessionmaker):
        _watch_binds(events.kw.get("bind"), events.kw.get("binds"))
    elif isinstance(events, Session):
        listeners.state(events)


def _target_class(target: Any) -> type[Session] | None:
    if isinstance(target, scoped_session):
        target = target.session_factory
    if isinstance(target, sessionmaker):
        return target.class_
    if isinstance(target, type) and issubclass(target, Session):
        return target
    if isinstance(target, Session):
        return type(target)
    if isinstance(target, AsyncSession | async_sessionmaker):
        raise UsageError(
            "listen_on_session() takes sync sessions: for asyncio use "
            "async_sessionmaker(engine, sync_session_class=CachingSession, cache=cache), or "
            "listen_on_session(MySession, ...) on a Session subclass of your own passed as "
            "sync_session_class"
        )
    raise UsageError(
        f"listen_on_session() takes a sessionmaker, a Session subclass, a scoped_session "
        f"or a Session, not {target!r}"
    )


def _listeners_of(session: Session) -> _Listeners | None:
    """The listeners :func:`listen_on_session` put on *session* or on its class."""
    found = _listened.get(session)
    if found is None:
        for klass in type(session).__mro__:
            found = _listened.get(klass)
            if found is not None:
                break
    return found


def instrument_session(
    session: Session,
    cache: YokedCache | None = None,
    *,
    default_ttl: TTL = DEFAULT_TTL,
    tags: Iterable[str] = (),
    table_name: str | None = None,
    vary_on: Callable[[Session], Hashable] | None = None,
) -> Session:
    """Make one existing Session cache its reads and invalidate on commit.

    Returns the same session. The first call registers the listeners on that session
    (:func:`listen_on_session` on the instance); a later call, or a call on a
    :class:`CachingSession`, only updates its settings. *vary_on* is as for
    :class:`CachingSession`.

    Changed in 0.2: the session's class and methods are left alone, so ``commit()``
    returns None; the FastAPI integration's session wrapper keeps ``await db.commit()``
    working.
    """
    extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
    st = state_of(session)
    if st is None:
        installed = _listeners_of(session)
        if installed is not None:
            st = installed.state(session)  # its factory caches: settings are changed below
    if st is None:
        listen_on_session(session, cache, default_ttl=default_ttl, tags=extra, vary_on=vary_on)
        return session
    if cache is not None:
        st._cache = cache
    st.tags = tuple(dict.fromkeys((*st.tags, *extra)))
    if not isinstance(default_ttl, type(DEFAULT_TTL)):
        st.default_ttl = default_ttl
    if vary_on is not None:
        st.vary_on = vary_on
    return session


for _name, _fn in _SESSION_EVENTS:
    event.listen(CachingSession, _name, _fn)
