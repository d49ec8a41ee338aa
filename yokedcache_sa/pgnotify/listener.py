"""A background thread that turns PostgreSQL notifications into cache invalidations.

Writers outside the application's caching sessions (another service, ``psql``, cron jobs,
migrations) commit without telling the cache. With the triggers of
:func:`~yokedcache_sa.pgnotify.install` in place, each such commit sends ``NOTIFY`` naming
the tables it changed; the listener invalidates their ``table:`` tags shortly after.

Fail closed: notifications sent while the listener was disconnected are lost, so after every
reconnect it invalidates every table it watches (the whole cache when it watches all).
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..cache import YokedCache
from ..errors import InvalidationError, YokedCacheError, redact_text
from .conninfo import DEFAULT_CHANNEL, PgNotifyError, Target, connect, quote_ident, target_of
from .payloads import batch_tags, gap_tags, watched_tags
from .payloads import tags_of_payload as tags_of_payload

__all__ = ["ListenerStats", "NotifyListener", "start_listener", "tags_of_payload"]

log = logging.getLogger("yokedcache_sa")

# Defaults the URL or connect_args may override. TCP keepalives: a peer that vanished
# without closing the socket is noticed in about 20 s; a connect attempt gives up after 10 s.
_KEEPALIVE = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 3,
    "keepalives_count": 3,
}


_listeners: weakref.WeakSet[NotifyListener] = weakref.WeakSet()
# connections inherited over fork (their descriptors now lead to /dev/null)
_inherited: list[Any] = []


def _after_fork_in_child() -> None:
    for listener in list(_listeners):
        listener._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass(frozen=True)
class ListenerStats:
    """Counters of one listener: notifications received, invalidation calls made (one per
    batch), connections made after the first, and invalidations the cache did not take
    (left pending in the cache, retried by it)."""

    notifications: int
    batches: int
    reconnects: int
    undelivered: int
    connected: bool


class NotifyListener:
    """Listens on one channel with a dedicated connection and invalidates the tables named.

    Args:
        cache: the cache whose ``table:`` tags to invalidate.
        engine_or_url: an Engine, AsyncEngine or URL of any PostgreSQL driver; the listener
            opens its own psycopg connection to the same database.
        channel: the channel the triggers notify (``install(channel=...)``).
        tables: the tables whose triggers notify this channel (``schema.table`` or bare);
            after a reconnect these, and every table whose trigger notifies this channel, are
            invalidated. None: after a reconnect the whole cache is invalidated.
        connect_args: extra libpq keywords (``password=``, ``sslmode=`` …).
        max_backoff: the longest wait between reconnection attempts, in seconds.

    Call :meth:`start` (or use it as a context manager) and :meth:`stop`. Added in 0.2.
    """

    def __init__(
        self,
        cache: YokedCache,
        engine_or_url: Any,
        *,
        channel: str = DEFAULT_CHANNEL,
        tables: Iterable[str] | None = None,
        connect_args: Mapping[str, Any] | None = None,
        max_backoff: float = 10.0,
    ) -> None:
        if not channel:
            raise PgNotifyError("channel must be a non-empty string")
        self.cache = cache
        self.channel = channel
        self.target: Target = target_of(engine_or_url, connect_args)
        self.tables = None if tables is None else tuple(tables)
        self._gap_tags = watched_tags(self.tables)
        self.max_backoff = max_backoff
        self.backend_pid: int | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._notifications = self._batches = self._reconnects = self._undelivered = 0
        self._warned_cache = False
        self._attempts = 0
        self._was_up = False
        _listeners.add(self)

    def _forked(self) -> None:
        """In a forked child: the thread did not survive; the parent's connection stays the
        parent's. Reset, so :meth:`start` starts this process's own listener."""
        if self._conn is not None:
            try:
                # point the inherited descriptor at /dev/null: closing or collecting the
                # connection here then sends its Terminate message nowhere
                null = os.open(os.devnull, os.O_RDWR)
                os.dup2(null, self._conn.pgconn.socket)
                os.close(null)
            except Exception:  # not a socket any more: nothing to protect
                pass
            _inherited.append(self._conn)
        self._conn = None
        self._thread = None
        # new events: the parent's thread may have held their locks at the fork
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        # the child's first LISTEN starts after the parent's view stopped covering this
        # process: treat it as a reconnect (invalidate what is watched)
        self._attempts = 1
        self._was_up = False

    def __repr__(self) -> str:
        return f"<NotifyListener {self.target.redacted} channel={self.channel!r}>"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> NotifyListener:
        """Start the thread (once per process: in a forked child call it again); return
        self. Connecting happens in the background."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"yokedcache-pgnotify:{self.channel}", daemon=True
            )
            self._thread.start()
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until ``LISTEN`` is active; return whether it is."""
        return self._ready.wait(timeout)

    @property
    def connected(self) -> bool:
        """Whether ``LISTEN`` is active now."""
        return self._ready.is_set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and close its connection (idempotent)."""
        self._stopping.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if thread is None or not thread.is_alive():
            for s in (self._wake_r, self._wake_w):
                s.close()

    def __enter__(self) -> NotifyListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> ListenerStats:
        """The listener's counters."""
        return ListenerStats(
            self._notifications,
            self._batches,
            self._reconnects,
            self._undelivered,
            self.connected,
        )

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        logged_down = False
        while not self._stopping.is_set():
            try:
                self._listen()
            except YokedCacheError as exc:
                reason = str(exc)
            except Exception as exc:  # psycopg errors, OSError: the connection is gone
                reason = redact_text(f"{type(exc).__name__}: {exc}", self.target.url)
            else:
                reason = "connection closed"
            self._drop_connection()
            if self._stopping.is_set():
                break
            if self._was_up:  # a new outage: log it once, retry quickly first
                self._was_up = False
                backoff, logged_down = 0.1, False
            if not logged_down:
                logged_down = True
                log.warning(
                    "yokedcache: change notification from %s is disconnected (%s); "
                    "reconnecting with backoff, outside writes are not seen until then",
                    self.target.redacted,
                    " ".join(reason.split()),
                )
            if self._stopping.wait(backoff):
                break
            backoff = min(self.max_backoff, backoff * 2)
        self._drop_connection()

    def _drop_connection(self) -> None:
        self._ready.clear()
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _listen(self) -> None:
        """Connect, LISTEN, cover the gap, then turn notifications into invalidations until
        the connection fails or the listener stops."""
        self._attempts += 1
        conn = connect(self.target, **_KEEPALIVE)
        self._conn = conn
        pending: list[str] = []
        conn.add_notify_handler(lambda n: pending.append(n.payload))
        conn.execute(f"LISTEN {quote_ident(self.channel)}")
        self.backend_pid = conn.info.backend_pid
        if self._attempts > 1:
            # a previous attempt failed or its connection dropped: what was committed
            # meanwhile was never notified to us
            self._reconnects += 1
            self._cover_gap(conn)
        self._was_up = True
        self._ready.set()
        from psycopg import pq

        pgconn = conn.pgconn
        enc = conn.info.encoding
        bad = pq.ConnStatus.BAD
        with selectors.DefaultSelector() as sel:  # no FD_SETSIZE limit, unlike select()
            sel.register(conn.fileno(), selectors.EVENT_READ, "db")
            sel.register(self._wake_r, selectors.EVENT_READ, "wake")
            self._pump(sel, pgconn, pending, enc, bad)

    def _pump(
        self, sel: selectors.BaseSelector, pgconn: Any, pending: list[str], enc: str, bad: Any
    ) -> None:
        while not self._stopping.is_set():
            if not pending:
                events = sel.select(60.0)
                if any(key.data == "wake" for key, _mask in events):
                    return
                if not events:
                    continue  # idle; keepalives watch the connection
                pgconn.consume_input()
                if pgconn.status == bad:
                    raise PgNotifyError("the listener connection was closed by the server")
            while True:
                n = pgconn.notifies()
                if n is None:
                    break
                pending.append(n.extra.decode(enc))
            if pending:
                batch, pending[:] = list(pending), []
                self._deliver(batch)
            if pgconn.status == bad:
                raise PgNotifyError("the listener connection was closed by the server")

    def _deliver(self, payloads: list[str]) -> None:
        """One invalidation for a batch of notifications."""
        self._invalidate(batch_tags(payloads, self.channel))
        # counted once handled, so a caller that saw the count rise sees the invalidation
        self._notifications += len(payloads)

    def _cover_gap(self, conn: Any) -> None:
        tags = gap_tags(conn, self.channel, self.tables, self._gap_tags)
        self._invalidate(tags)
        what = "the whole cache" if tags is None else f"{len(tags)} table tags it watches"
        log.warning(
            "yokedcache: change notification from %s reconnected; invalidated %s because "
            "notifications sent while disconnected are lost",
            self.target.redacted,
            what,
        )

    def _invalidate(self, tags: frozenset[str] | None) -> None:
        try:
            if tags is None:
                self.cache.invalidate_all_sync()
            else:
                self.cache.invalidate_tags_sync(sorted(tags))
        except InvalidationError as exc:
            # the cache keeps the tags pending (bypassed here, retried until delivered)
            self._undelivered += 1
            if not self._warned_cache:
                self._warned_cache = True
                log.warning("yokedcache: change notification could not invalidate: %s", exc)
        else:
            self._warned_cache = False
        finally:
            self._batches += 1


def start_listener(
    cache: YokedCache,
    engine_or_url: Any,
    *,
    channel: str = DEFAULT_CHANNEL,
    tables: Iterable[str] | None = None,
    connect_args: Mapping[str, Any] | None = None,
) -> NotifyListener:
    """Start a :class:`NotifyListener` and return it (stop it with ``.stop()`` or use it as a
    context manager).

    Example (FastAPI lifespan)::

        @asynccontextmanager
        async def lifespan(app):
            with start_listener(cache, engine, tables=["users", "orders"]):
                yield
    """
    return NotifyListener(
        cache, engine_or_url, channel=channel, tables=tables, connect_args=connect_args
    ).start()
