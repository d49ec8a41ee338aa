"""CachingSession, CachingQuery, ``instrument_session`` and the listeners' installation.

The listeners live in one module per concept: ``reads`` (serve, or run and store),
``transactions`` (session begin/commit), ``engine_events`` (writes and connection state),
``pgwrites`` (PostgreSQL's modification counters), ``shapes`` (statement shapes and keys),
``state`` (per-session state) and ``collect`` (tables read during a computation).

Reads (``do_orm_execute``): a cacheable SELECT is looked up; on a miss it runs in the caller's
session (SQLAlchemy builds the objects and fires their events), is frozen to plain data and
stored under the snapshot observed *before* it ran — unless the result holds an object the
session had before (its attributes may predate the rows) or one with changes. A hit thaws the
entry into the caller's session.

Writes (engine ``before_cursor_execute``): every INSERT/UPDATE/DELETE/DDL or raw SQL a session's
connection executes records its tables (plus FK-cascade and declared dependents); just before
the database COMMIT they are marked "being written" in one round trip; the root
``after_commit`` bumps them; a rollback releases them. Reads of tables
the open transaction wrote bypass the cache until the transaction ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Hashable, Iterable
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.orm import Query, Session

from ..cache import DEFAULT_TTL, TTL, YokedCache
from ..errors import InvalidationError
from ..tags import table_tag
from . import _compat
from .collect import Collector, current_collector, reading_collector
from .engine_events import _install_engine_listeners
from .options import FromCache, NoCache
from .reads import _on_execute
from .state import STATE_KEY, SessionCache, state_of
from .transactions import _after_begin, _after_commit, _after_transaction_end, _before_commit

__all__ = [
    "CachingQuery",
    "CachingSession",
    "Collector",
    "SessionCache",
    "current_collector",
    "instrument_session",
    "reading_collector",
    "state_of",
]

log = logging.getLogger("yokedcache_sa")


_SESSION_EVENTS = (
    ("do_orm_execute", _on_execute),
    ("after_begin", _after_begin),
    ("before_commit", _before_commit),
    ("after_commit", _after_commit),
    ("after_transaction_end", _after_transaction_end),
)


# -- public classes ------------------------------------------------------------------------


class _Done:
    """An already-finished awaitable: ``await session.commit()`` works on a sync session."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator

    def __repr__(self) -> str:
        return "<committed>"


DONE: Final = _Done()


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

    ``commit()`` also returns an already-finished awaitable, so ``await session.commit()``
    works in async routes that use a sync session.

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
        kw.setdefault("query_cls", CachingQuery)
        super().__init__(bind, **kw)
        extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
        self.__dict__[STATE_KEY] = SessionCache(
            cache, default_ttl=default_ttl, tags=extra, vary_on=vary_on
        )

    def commit(self) -> _Done:  # type: ignore[override]
        """Commit, invalidate what the transaction wrote, and return a finished awaitable."""
        _commit_and_finish(self, Session.commit)
        return DONE

    def rollback(self) -> None:
        """Roll back, expiring what the transaction loaded (cache hits included)."""
        _rollback(self, Session.rollback)

    @property
    def yokedcache(self) -> SessionCache:
        """This session's cache settings."""
        st = state_of(self)
        assert st is not None
        return st


def _commit_and_finish(session: Session, commit: Any) -> None:
    try:
        commit(session)
    except InvalidationError:
        st = state_of(session)
        if st is not None and not (st.committed or st.db_commit_started):
            # strict_invalidation refused the COMMIT before it was sent: roll back, or a later
            # commit() would commit these writes with their tables no longer marked.
            session.rollback()
        raise
    finally:
        st = state_of(session)
        if st is not None and (st.marked or st.writer):
            # An exception in another after_commit listener skipped ours: finish here.
            st.finish(committed=st.committed or st.db_commit_started)


def _rollback(session: Session, rollback: Any) -> None:
    """*rollback* as if the hits served since the last transaction had begun one.

    A read from the database autobegins the session's transaction, so a plain Session's
    ``rollback()`` after it expires every loaded object; a hit needs no transaction and
    begins none (it would cost more than the hit). Beginning it now gives the same result.
    """
    st = state_of(session)
    if st is not None and st.unbegun:
        st.unbegun = False
        if session.get_transaction() is None:
            _compat.autobegin(session)
    rollback(session)


def instrument_session(
    session: Session,
    cache: YokedCache | None = None,
    *,
    default_ttl: TTL = DEFAULT_TTL,
    tags: Iterable[str] = (),
    table_name: str | None = None,
    vary_on: Callable[[Session], Hashable] | None = None,
) -> Session:
    """Make an existing plain Session cache its reads and invalidate on commit.

    Returns the same session. Its ``commit()`` then also returns a finished awaitable.
    Instrumenting a :class:`CachingSession` only updates its settings. *vary_on* is as
    for :class:`CachingSession`.
    """
    _install_engine_listeners()
    extra = (*tags, table_tag(table_name)) if table_name else tuple(tags)
    st = state_of(session)
    if st is not None:
        if cache is not None:
            st._cache = cache
        st.tags = tuple(dict.fromkeys((*st.tags, *extra)))
        if not isinstance(default_ttl, type(DEFAULT_TTL)):
            st.default_ttl = default_ttl
        if vary_on is not None:
            st.vary_on = vary_on
        return session
    session.__dict__[STATE_KEY] = SessionCache(
        cache, default_ttl=default_ttl, tags=extra, vary_on=vary_on
    )
    if isinstance(session, CachingSession):
        return session
    if "dispatch" not in session.__dict__:
        # Not used yet: give it a subclass whose class-level listeners and awaitable commit
        # cost nothing per request (instance-level listeners cost ~0.1 ms to register).
        session.__class__ = _instrumented_class(type(session))
        return session
    for name, fn in _SESSION_EVENTS:
        event.listen(session, name, fn)
    plain_commit = type(session).commit
    plain_rollback = type(session).rollback

    def commit() -> _Done:
        _commit_and_finish(session, plain_commit)
        return DONE

    def rollback() -> None:
        _rollback(session, plain_rollback)

    session.commit = commit  # type: ignore[method-assign,assignment]  # awaitable commit
    session.rollback = rollback  # type: ignore[method-assign]
    return session


_instrumented: dict[type[Session], type[Session]] = {}


def _instrumented_class(cls: type[Session]) -> type[Session]:
    """A subclass of *cls* carrying the cache listeners and the awaitable commit."""
    sub = _instrumented.get(cls)
    if sub is None:
        plain_commit, plain_rollback = cls.commit, cls.rollback

        def commit(self: Session) -> _Done:
            _commit_and_finish(self, plain_commit)
            return DONE

        def rollback(self: Session) -> None:
            _rollback(self, plain_rollback)

        sub = type(f"Instrumented{cls.__name__}", (cls,), {"commit": commit, "rollback": rollback})
        for name, fn in _SESSION_EVENTS:
            event.listen(sub, name, fn)
        _instrumented[cls] = sub
    return sub


for _name, _fn in _SESSION_EVENTS:
    event.listen(CachingSession, _name, _fn)
_install_engine_listeners()
