"""Per-session cache state: settings, the open transaction's writes, marks and snapshot
facts."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Final

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, scoped_session

from ..cache import DEFAULT_TTL, TTL, YokedCache
from ..defaults import get_session_default_cache
from ..errors import InvalidationError
from ..txview import TransactionView
from . import dependents
from ._greenlet import call_twin
from .bindstate import UNWATCHED, changes_isolation

log = logging.getLogger("yokedcache_sa")


STATE_KEY: Final = "_yokedcache_state"  # in the session's __dict__, not its .info
_STATEMENT_LEVEL = frozenset({"READ COMMITTED", "AUTOCOMMIT"})
_known_metadata = dependents.MetadataSet()  # every MetaData whose tables a cached read saw

_RESET: Final[dict[str, Any]] = {
    "_txn_cache": None,
    "writer": None,
    "dirty_reads": False,
    "db_commit_started": False,
    "committing": False,
    "committed": False,
    "autocommitted": False,
    "tainted": None,
    "unbegun": False,
}
"""What :meth:`SessionState._reset` sets besides fresh containers."""

# -- per-session state ---------------------------------------------------------------------


class SessionState:
    """Cache settings and transaction bookkeeping of one session."""

    _txn_cache: YokedCache | None

    def __init__(
        self,
        cache: YokedCache | None,
        default_ttl: TTL = DEFAULT_TTL,
        tags: Iterable[str] = (),
        vary_on: Callable[[Session], Hashable] | None = None,
        lazy_begin: bool = False,
        *,
        enabled: bool = True,
    ) -> None:
        self._cache = cache
        # True when the session's rollback() begins the transaction hits did not begin
        # (CachingSession.rollback); otherwise a hit begins it (see reads._serve)
        self.lazy_begin = lazy_begin
        self.default_ttl = default_ttl
        self.tags = tuple(tags)
        self.enabled = enabled
        self.vary_on = vary_on
        self.executions = 0  # ORM statements this session's read listener has seen
        self._reset()

    @property
    def cache(self) -> YokedCache:
        """The cache this session uses (the default cache when none was given)."""
        c = self._cache if self._cache is not None else get_session_default_cache()
        return c.resolved()

    def txn_cache(self) -> YokedCache:
        """The cache of the open transaction: chosen once, at its first use, so that its
        marks, bump and release go to one cache even if the default changes meanwhile."""
        c = self._txn_cache
        if c is None:
            c = self._cache if self._cache is not None else get_session_default_cache()
            c = self._txn_cache = c.resolved()  # the cache property, inlined
        return c

    def _reset(self) -> None:
        # the fields that are not containers, in one call
        self.__dict__.update(_RESET)
        self.marked: set[str] = set()
        self.written: set[str] = set()
        # the snapshot facts (per engine) and the horizon they give: computed by the core
        self.view = TransactionView()
        # PostgreSQL: per connection, the modification counters before this transaction's
        # first write; before COMMIT, tables whose counters moved are added to the writes
        self.pg_base: dict[int, dict[tuple[str, str, bool], int]] = {}
        # PostgreSQL: per connection, what was known of triggers when a write of this
        # transaction was looked up as without any (see pgwrites.recheck_looked)
        self.pg_looked: dict[int, object] = {}
        self.conns: list[weakref.ref[Connection]] = []
        self.variants: dict[Engine, str] = {}  # connection-level schema_translate_map
        # the open SAVEPOINTs' session transactions and what was written before each began
        self.savepoints: list[tuple[Any, frozenset[str]]] = []

    # set by _reset(); annotated here for readers and type checkers
    writer: str | None
    dirty_reads: bool
    db_commit_started: bool
    committing: bool  # between before_commit and the transaction's end
    committed: bool
    autocommitted: bool
    # SQL that changed connection state (SET, set_config) ran in this transaction or on its
    # pooled connection: nothing is served or stored (unless vary_on keys that state)
    tainted: str | None
    unbegun: bool  # served a hit while the session had no transaction (see _rollback)

    def taint(self, conn: Connection, why: str, *, force: bool = False) -> None:
        """Stop serving and storing: *conn* runs with state the key does not capture (with
        *force*, or for an isolation change, also under ``vary_on``: the transaction's
        snapshot is not what the cache knows of)."""
        if self.tainted is not None:
            return
        keyed = self.vary_on is not None and why != UNWATCHED
        if keyed and not force and not changes_isolation(why):
            return  # the application keys that state itself
        self.tainted = why
        info = conn.info
        if why == UNWATCHED:
            log.debug("yokedcache: caching is off for this transaction %s", why)
        elif not info.get("yokedcache_logged"):
            info["yokedcache_logged"] = True
            log.info(
                "yokedcache: caching is off for this connection: it ran %r, which changes "
                "what queries return; pass vary_on=<callable returning that state> to "
                "CachingSession to cache per state",
                why,
            )

    # writes --------------------------------------------------------------------------------

    def note_written(self, tags: Iterable[str], autocommit: bool = False) -> None:
        """Record tables written by a statement about to run.

        The "being written" marks only have to be in place before the database COMMIT (they
        keep other processes from serving or storing old data between COMMIT and the version
        bump), so they are taken in one round trip just before it — or right away when the
        connection autocommits each statement.
        """
        tags = dependents.cascade_closure(tags, _known_metadata.members())
        self.written.update(tags)
        if autocommit:
            self.autocommitted = True  # the database commits it as it runs
            self.mark_pending()

    def mark_pending(self) -> None:
        """Take the marks on written tables not marked yet (before COMMIT)."""
        new = self.written - self.marked
        if not new:
            return
        if self.writer is None:
            self.writer = YokedCache.new_writer()
        cache = self.txn_cache()
        call_twin(cache.begin_write_sync, cache.begin_write, sorted(new), self.writer)
        # only once taken: a commit retried after a refused mark (strict mode) marks again
        self.marked.update(new)

    def finish(self, committed: bool) -> None:
        """End the transaction: bump marked tags after a commit, else release them."""
        committed = committed or self.autocommitted
        if committed:
            try:
                self.mark_pending()  # written but never marked (no COMMIT event was seen)
            except InvalidationError as exc:  # strict mode; the end_write below still runs
                log.error("yokedcache: %s", exc)
        marked, writer = sorted(self.marked), self.writer
        conns, cache = self.conns, self._txn_cache
        self._reset()
        for ref in conns:
            conn = ref()
            if conn is not None:
                conn.__dict__.pop("_yc_state", None)
        if not marked or writer is None:
            return
        assert cache is not None  # the marks were taken on it
        if committed:
            try:
                call_twin(cache.end_write_sync, cache.end_write, marked, writer)
            except InvalidationError as exc:
                # The commit happened; the cache keeps the tags pending (bypassed here,
                # retried) — see docs/consistency.md for what other processes may see.
                # The cache logs a WARNING when tags become pending and when delivered.
                log.debug("yokedcache: %s", exc)
        else:
            call_twin(cache.release_sync, cache.release, marked, writer)


def state_of(session: Session | AsyncSession | scoped_session[Any]) -> SessionState | None:
    """The cache state of *session*, or None for a session that does not cache.

    *session* may be an ``AsyncSession`` (its sync session's state) or a ``scoped_session``
    (its current session's). The state holds the session's settings (``enabled``,
    ``default_ttl``, ``tags``, ``vary_on``) and its transaction's bookkeeping; it is kept
    off the Session's own attributes and ``info``.

    Example::

        state_of(session).enabled = False  # this session reads around the cache

    Changed in 0.2: takes an ``AsyncSession`` or ``scoped_session``; replaces the
    deprecated ``CachingSession.yokedcache`` property.
    """
    if isinstance(session, scoped_session):
        session = session()
    if isinstance(session, AsyncSession):
        session = session.sync_session
    st: SessionState | None = session.__dict__.get(STATE_KEY)
    return st
