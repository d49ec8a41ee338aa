"""What the cache logs: one WARNING per change of state, one DEBUG line per operation.

Logger: ``yokedcache_sa`` (the library never sets its level or adds handlers; configure it
with :mod:`logging`, see docs/operations.md, "Logging").

WARNING, once per transition (not once per call): the store became unreachable / answers
again, the circuit breaker opened / closed, invalidations became pending / were all
delivered. DEBUG: one line per hit, miss, store, refused store and invalidation, with the
key digest, the tables and the time the store took. The DEBUG lines are built only when
DEBUG is enabled for the logger (:func:`debug_on`, a check the logging module caches).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterable

__all__ = ["LoopCheck", "StateLog", "debug_on", "key_digest", "loop_check", "tables_of"]

log = logging.getLogger("yokedcache_sa")
_DEBUG = logging.DEBUG


def debug_on() -> bool:
    """Whether DEBUG lines of the ``yokedcache_sa`` logger would be emitted."""
    return log.isEnabledFor(_DEBUG)


def key_digest(key: str) -> str:
    """A short, log-safe name of a normalized key (query keys are digests already)."""
    if key[:2] in ("q:", "h:"):
        return key[:26]
    return "k#" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=6).hexdigest()


def tables_of(tags: Iterable[str]) -> str:
    """The table names among tag ids, comma-separated (``-`` for none)."""
    names = sorted(t[6:] for t in tags if t[:6] == "table:")
    return ",".join(names) if names else "-"


class StateLog:
    """Remembers the last reported state of one cache and logs only its changes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.down = False
        self.breaker_open = False
        self.pending = False
        self._lock = threading.Lock()

    def _flip(self, attr: str, value: bool) -> bool:
        with self._lock:
            if getattr(self, attr) is value:
                return False
            setattr(self, attr, value)
            return True

    def unreachable(self, what: str, exc: BaseException, consequence: str) -> None:
        """An operation failed because the store did not answer."""
        if self._flip("down", True):
            log.warning(
                "yokedcache: the cache store %s is unreachable (%s failed: %s); %s. "
                "Logged once; a WARNING follows when it answers again.",
                self.where,
                what,
                exc,
                consequence,
            )
        elif debug_on():
            log.debug("yokedcache: %s failed (store still unreachable): %s", what, exc)

    def reachable(self) -> None:
        """An operation succeeded after failures."""
        if self._flip("down", False):
            log.warning("yokedcache: the cache store %s answers again", self.where)

    def recovered(self, was_open: bool) -> None:
        """An operation succeeded after failures (the breaker was open or not)."""
        if was_open:
            self.closed()
        self.reachable()

    def opened(self, failures: int, timeout: float) -> None:
        if self._flip("breaker_open", True):
            log.warning(
                "yokedcache: circuit breaker opened after %d consecutive failures of %s: "
                "the cache is skipped (reads use the database), one probe every %ss",
                failures,
                self.where,
                timeout,
            )

    def closed(self) -> None:
        if self._flip("breaker_open", False):
            log.warning("yokedcache: circuit breaker closed: %s is used again", self.where)

    def pending_now(self, tags: Iterable[str]) -> None:
        """Invalidations could not be delivered and are kept to retry."""
        if self._flip("pending", True):
            log.warning(
                "yokedcache: invalidation of %s not delivered to %s; those tags are bypassed "
                "in this process and retried until delivered (other processes may serve "
                "older entries meanwhile: docs/consistency.md). A WARNING follows on delivery.",
                sorted(tags),
                self.where,
            )

    def delivered(self) -> None:
        """Every pending invalidation was delivered."""
        if self._flip("pending", False):
            log.warning("yokedcache: pending invalidations delivered to %s", self.where)


class LoopCheck:
    """Warns once per process when a sync cache call runs on a thread with a running event
    loop: a sync session (or sync ``@cached`` function) used in ``async def`` code, which
    blocks the loop for every database and Redis round trip.

    ``armed`` is checked before anything else, so after the warning the check costs one
    attribute read.
    """

    def __init__(self) -> None:
        self.armed = True

    def fire(self, what: str) -> None:
        if not self.armed:
            return
        self.armed = False
        log.warning(
            "yokedcache: a sync %s ran on the event loop thread: a sync Session / "
            "CachingSession (or a sync @cached function) in async code blocks the loop on "
            "every database and cache round trip, and `await session.execute(...)` fails "
            "with TypeError. Use an AsyncSession over CachingSession: "
            "async_sessionmaker(async_engine, sync_session_class=CachingSession, "
            "cache=cache), or declare the route with `def` so FastAPI runs it in its "
            "threadpool. Logged once per process.",
            what,
        )


loop_check = LoopCheck()
"""The process-wide :class:`LoopCheck` (``loop_check.armed = True`` re-arms it)."""
