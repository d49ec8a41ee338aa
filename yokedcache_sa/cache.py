"""YokedCache: the cache object users hold — keys, TTL, tags, stats, health, invalidation.

Async methods carry the plain names (``get``, ``set``, ``invalidate_tags`` …); each has a sync
twin with the ``_sync`` suffix for code without an event loop. Both twins run the same pure
steps (:func:`~yokedcache_sa.tags.is_fresh`, the codec) around one backend call.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import threading
import time
import weakref
from asyncio import _get_running_loop
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, NamedTuple, TypeVar

from . import codec
from .backends.base import Backend, Fetched, StoreOutcome
from .backends.memory import MemoryBackend
from .config import CacheConfig
from .errors import (
    BackendError,
    BackendUnavailable,
    CorruptEntryError,
    InvalidationError,
    SerializationError,
)
from .logs import StateLog, debug_on, key_digest, loop_check, tables_of
from .tags import ALL_TAG, Snapshot, is_fresh, table_tag, tag_id, tag_ids

if TYPE_CHECKING:
    from .orm.explain import Explanation

__all__ = [
    "MISSING",
    "CacheStats",
    "Lookup",
    "YokedCache",
    "get_default_cache",
    "set_default_cache",
]

log = logging.getLogger("yokedcache_sa")
# hot paths ask the logger directly (its answer is cached by the logging module)
_debug_enabled = log.isEnabledFor
_DEBUG: Final = logging.DEBUG

T = TypeVar("T")


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = _Missing()
"""Returned by lookups on a miss (``None`` is a value that can be cached)."""


class _Default:
    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT_TTL"


DEFAULT_TTL: Final = _Default()
"""Sentinel: use the config's ``default_ttl``. ``ttl=None`` means no expiry."""

TTL = float | int | None | _Default


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of one cache since it was created (or since ``reset_stats``).

    ``hit_rate`` is a fraction from 0 to 1 (format it with ``:.1%``).
    """

    hits: int
    misses: int
    sets: int
    invalidations: int
    errors: int
    key_count: int
    backend: str
    healthy: bool
    pending_invalidations: int = 0
    table_hits: dict[str, int] = field(default_factory=dict)
    table_invalidations: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


COMPUTE_LOCK_SECONDS: Final = 30.0
"""Lifetime of a compute (stampede) lock; a crashed holder frees it by expiry."""


class ComputeLock:
    """A compute lock taken for a key: pass it to ``store`` (which drops it) or unlock it."""

    __slots__ = ("released", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.released = False


class Lookup(NamedTuple):
    """Outcome of :meth:`YokedCache.lookup_sync`: a value or MISSING, and what to store under.

    ``snapshot`` is None when the cache could not be consulted (unavailable, or a tag has an
    undelivered invalidation): then the caller must not store. With ``lock=True`` a miss
    also reports the compute lock: ``lock`` when this caller took it, ``lock_busy`` when
    another caller holds it.
    """

    value: Any
    snapshot: Snapshot | None
    tags: tuple[str, ...] = ()
    lock: ComputeLock | None = None
    lock_busy: bool = False

    @property
    def hit(self) -> bool:
        return self.value is not MISSING


class _Breaker:
    """Consecutive-failure circuit breaker: open after *threshold*, probe after *timeout*."""

    def __init__(self, threshold: int, timeout: float, enabled: bool) -> None:
        self.threshold = threshold
        self.timeout = timeout
        self.enabled = enabled
        self.failures = 0
        self.open_until = 0.0
        self._lock = threading.Lock()
        self.on_recover: Callable[[bool], None] | None = None
        self.on_open: Callable[[int], None] | None = None

    def allow(self) -> bool:
        if not self.enabled or self.failures < self.threshold:
            return True
        now = time.monotonic()
        with self._lock:
            if now >= self.open_until:
                self.open_until = now + self.timeout  # let exactly one probe through
                return True
        return False

    @property
    def is_open(self) -> bool:
        return self.enabled and self.failures >= self.threshold

    def success(self) -> None:
        if self.failures:
            was_open = self.is_open
            self.failures = 0
            if self.on_recover is not None:
                self.on_recover(was_open)

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.open_until = time.monotonic() + self.timeout
            opened = self.enabled and self.failures == self.threshold
        if opened and self.on_open is not None:
            self.on_open(self.failures)


class _BreakerOpen(BackendUnavailable):
    """The breaker refused a call: not a new failure of the store."""


_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@=+")


@functools.lru_cache(maxsize=8192)
def _normalize_key(key: str) -> str:
    if not isinstance(key, str):
        raise TypeError(f"cache keys are strings, got {type(key).__name__}")
    if key and len(key) <= 200 and set(key) <= _KEY_SAFE:
        return "k:" + key
    return "h:" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


_registry_lock = threading.Lock()
_last_created: weakref.ref[YokedCache] | None = None
_last_connected: weakref.ref[YokedCache] | None = None
_explicit_default: YokedCache | None = None


def set_default_cache(cache: YokedCache | None) -> None:
    """Make *cache* the one ``@cached`` uses when no ``cache=`` is given (None to unset)."""
    global _explicit_default
    _explicit_default = cache


def get_default_cache() -> YokedCache:
    """Return the default cache: the one set with :func:`set_default_cache`, else the most
    recently connected :class:`YokedCache`, else the most recently created one.

    Raises:
        LookupError: no cache exists yet.
    """
    for ref in (_explicit_default, _last_connected, _last_created):
        cache = ref if isinstance(ref, YokedCache) else (ref() if ref is not None else None)
        if cache is not None:
            return cache._target()
    raise LookupError(
        "no YokedCache exists yet: create one (YokedCache(CacheConfig())) or pass cache= to @cached"
    )


def _new_writer() -> str:
    return os.urandom(8).hex()


class YokedCache:
    """A tag-invalidated cache over a memory or Redis backend.

    Args:
        config: settings; ``CacheConfig()`` (no Redis URL) is the in-process memory backend.
        backend: use this store instead of building one from *config*.

    The instance is callable and returns itself, so ``Depends(cache)`` injects it and
    ``app.dependency_overrides[cache] = lambda: other`` swaps it.

    Example::

        cache = YokedCache(CacheConfig(redis_url="redis://localhost:6379/0"))
        await cache.set("greeting", {"hello": "world"}, ttl=60, tags=["demo"])
        await cache.get("greeting")          # {'hello': 'world'}
        await cache.invalidate_tags(["demo"])
        await cache.get("greeting")          # None
    """

    def __init__(
        self, config: CacheConfig | None = None, *, backend: Backend | None = None
    ) -> None:
        global _last_created
        self.config = config if config is not None else CacheConfig()
        self.backend: Backend = backend if backend is not None else self._build_backend()
        cfg = self.config
        self._secret = (
            cfg.signing_secret.get_secret_value().encode() if cfg.signing_secret else None
        )
        self._max_bytes = cfg.max_value_bytes
        self._breaker = _Breaker(
            cfg.circuit_breaker_threshold, cfg.circuit_breaker_timeout, cfg.enable_circuit_breaker
        )
        state_log = self._state_log = StateLog(
            getattr(self.backend, "url_redacted", None) or f"({self.backend.name} backend)"
        )
        # The callbacks must not reference self: a cycle would keep a dropped cache alive
        # (and the default of get_default_cache) until the garbage collector runs.
        self._breaker.on_recover = state_log.recovered
        self._breaker.on_open = functools.partial(
            state_log.opened, timeout=cfg.circuit_breaker_timeout
        )
        self._lock = threading.Lock()
        self._hits = self._misses = self._sets = self._invalidations = self._errors = 0
        self._table_hits: Counter[str] = Counter()
        self._table_invalidations: Counter[str] = Counter()
        # tag id -> (writer, attempts, next retry time): invalidations not yet delivered
        self._pending: dict[str, tuple[str, int, float]] = {}
        self._retry_timer: threading.Timer | None = None
        self._redirect: YokedCache | None = None
        # Entries are bound to their full key: the prefix of the store they live in, then
        # the key (an entry copied under another key is refused).
        self._key_scope = f"{getattr(self.backend, 'prefix', None) or cfg.key_prefix}\x00"
        self._warned_key_mismatch = False
        # The memory backend hands back the very bytes object it stored: verify and parse
        # each entry's header once, for the key it was verified under (the body is decoded
        # on every hit, never shared).
        self._header_memo: dict[bytes, tuple[str, codec.Header]] | None = (
            {} if getattr(self.backend, "stable_payloads", False) else None
        )
        self.connected = False
        with _registry_lock:
            _last_created = weakref.ref(self)

    def _build_backend(self) -> Backend:
        cfg = self.config
        if cfg.redis_url is None:
            return MemoryBackend(
                max_entries=cfg.memory_max_entries,
                max_bytes=cfg.memory_max_bytes,
                shared_prefix=cfg.key_prefix if cfg.memory_shared else None,
            )
        from .backends.redis import RedisBackend

        return RedisBackend(
            cfg.redis_url.get_secret_value(),
            prefix=cfg.key_prefix,
            max_connections=cfg.max_connections,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.socket_connect_timeout,
        )

    def __repr__(self) -> str:
        where = getattr(self.backend, "url_redacted", None) or self.backend.name
        return f"<YokedCache {where} prefix={self.config.key_prefix!r}>"

    def __call__(self) -> YokedCache:
        return self

    # -- redirection (dependency overrides in tests) ---------------------------------------

    def redirect_to(self, other: YokedCache | None) -> None:
        """Send every call on this object to *other* (None restores it).

        ``cached_dependency`` calls this when ``app.dependency_overrides[cache]`` resolves
        the cache to another object, so module-level calls such as
        ``cache.invalidate_tags(...)`` reach the same store as the routes.
        """
        self._redirect = None if other is self else other

    def _target(self) -> YokedCache:
        seen = self
        while seen._redirect is not None:
            seen = seen._redirect
        return seen

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self, *, required: bool = True) -> YokedCache:
        """Check the store answers and make this the default cache of ``@cached``.

        Args:
            required: False to start even when the store does not answer: one WARNING is
                logged, reads go to the database and caching starts when it answers
                (``connected`` stays False). Added in 0.x.

        Raises:
            BackendUnavailable: the store cannot be reached (only with ``required=True``).
        """
        try:
            await self.backend.aping()
        except BackendUnavailable as exc:
            self._connect_failed(exc, required)
        else:
            self.connected = True
        return self._registered()

    def connect_sync(self, *, required: bool = True) -> YokedCache:
        """Sync twin of :meth:`connect`."""
        try:
            self.backend.ping()
        except BackendUnavailable as exc:
            self._connect_failed(exc, required)
        else:
            self.connected = True
        return self._registered()

    def _connect_failed(self, exc: BackendUnavailable, required: bool) -> None:
        if required:
            raise exc
        self._unavailable(
            exc,
            "connect",
            "starting anyway (required=False): reads use the database until it answers",
        )

    def _registered(self) -> YokedCache:
        global _last_connected
        with _registry_lock:
            _last_connected = weakref.ref(self)
        return self

    async def disconnect(self) -> None:
        """Close connections (they reopen on next use)."""
        self.connected = False
        await self.backend.aclose()
        self.backend.close()

    def disconnect_sync(self) -> None:
        """Sync twin of :meth:`disconnect`."""
        self.connected = False
        self.backend.close()

    async def __aenter__(self) -> YokedCache:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # -- pure steps shared by both twins ---------------------------------------------------

    def _decide(
        self, key: str, fetched: Fetched, horizon: int | None, blocked: bool
    ) -> tuple[Any, codec.Header | None]:
        """Return (value or MISSING, header) for what the store reported for *key*."""
        payload = fetched.payload
        if payload is None:
            return MISSING, None
        memo = self._header_memo
        try:
            seen = memo.get(payload) if memo is not None else None
            if seen is not None and seen[0] == key:
                header = seen[1]
            else:
                header = codec.decode_header(
                    payload,
                    key=self._key_scope + key,
                    secret=self._secret,
                    max_bytes=self._max_bytes,
                )
                if memo is not None:
                    if len(memo) >= 4096:
                        memo.clear()
                    memo[payload] = (key, header)
            if fetched.tags != header.tags:
                self._count_error("ignored an entry whose stored tags disagree with its header")
                return MISSING, None
            if blocked or not is_fresh(header.epoch, header.seq, fetched.snapshot, horizon):
                return MISSING, header
            return codec.unpack_value(payload[header.body_start : header.body_end]), header
        except codec.KeyMismatch:
            self._errors += 1
            if not self._warned_key_mismatch:
                self._warned_key_mismatch = True
                log.warning(
                    "yokedcache: ignored an entry stored for another key (copied or swapped "
                    "in the store; treated as a miss, counted in errors, logged once)"
                )
            return MISSING, None
        except CorruptEntryError as exc:
            self._count_error("ignored a bad entry (treated as a miss): %s", exc)
            return MISSING, None

    def _count_error(self, msg: str, *args: object) -> None:
        self._errors += 1
        log.warning(msg, *args)

    def _record(self, hit: bool, header: codec.Header | None) -> None:
        if hit:
            self._hits += 1
            if header is not None:
                table_hits = self._table_hits
                for t in header.tags:
                    if t[:6] == "table:":
                        table_hits[t] += 1
        else:
            self._misses += 1

    def _blocked(self, tags: Iterable[str]) -> bool:
        pending = self._pending
        return bool(pending) and any(t in pending for t in tags)

    def _ttl(self, ttl: TTL) -> float | None:
        if isinstance(ttl, _Default):
            return self.config.default_ttl
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be > 0 seconds or None (no expiry), got {ttl!r}")
        return None if ttl is None else float(ttl)

    def _encode(self, key: str, value: object, tags: tuple[str, ...], snap: Snapshot) -> bytes:
        return codec.encode(
            value,
            key=self._key_scope + key,
            epoch=snap.epoch,
            seq=snap.seq,
            tags=tags,
            created=time.time(),
            secret=self._secret,
            max_bytes=self._max_bytes,
        )

    def _unavailable(
        self,
        exc: BackendError,
        what: str,
        consequence: str = "reads use the database, invalidations are retried",
    ) -> None:
        # A refusal by the open breaker is not a failure: counting it would push the next
        # probe back on every call, so under steady traffic the breaker would never close.
        if isinstance(exc, _BreakerOpen):
            self._errors += 1
            if debug_on():
                log.debug("yokedcache: %s skipped: %s", what, exc)
            return
        if isinstance(exc, BackendUnavailable):
            self._errors += 1
            # WARNING once per outage (the breaker logs its own opening)
            self._state_log.unreachable(what, exc, consequence)
            self._breaker.failure()
            return
        self._count_error("cache %s failed, using the database: %s", what, exc)

    def _check_breaker(self) -> None:
        if not self._breaker.allow():
            raise _BreakerOpen(
                "the cache circuit breaker is open after repeated failures; "
                f"it retries in {self.config.circuit_breaker_timeout}s"
            )

    # -- protocol used by the ORM layer and @cached ----------------------------------------

    def _looked_up(
        self, key: str, fetched: Fetched, horizon: int | None, token: str | None, t0: float
    ) -> Lookup:
        value, header = self._decide(
            key, fetched, horizon, bool(self._pending) and self._blocked(fetched.tags)
        )
        self._record(value is not MISSING, header)
        if t0:
            _debug_lookup(key, value is not MISSING, header, fetched, t0)
        lock = ComputeLock(token) if token is not None and fetched.lock == 1 else None
        return Lookup(value, fetched.snapshot, fetched.tags, lock, fetched.lock == -1)

    def lookup_sync(self, key: str, *, horizon: int | None = None, lock: bool = False) -> Lookup:
        """Read *key*; on a miss the returned snapshot is what a later store must carry.

        Args:
            horizon: the write sequence a snapshot-isolated transaction began at.
            lock: on a miss, also take the compute lock of *key* (same round trip).

        Never raises for a sick cache: an unreachable store or a bad entry is a miss with
        ``snapshot=None`` (do not store) or a plain miss.
        """
        me = self._target()
        if me is not self:
            return me.lookup_sync(key, horizon=horizon, lock=lock)
        if loop_check.armed and _get_running_loop() is not None:
            loop_check.fire("cache read")
        if self._pending:
            self._retry_pending_sync()
        token = _new_writer() if lock else None
        breaker = self._breaker
        t0 = time.perf_counter() if _debug_enabled(_DEBUG) else 0.0
        try:
            if breaker.failures:
                self._check_breaker()
            fetched = self.backend.fetch(key, token, COMPUTE_LOCK_SECONDS)
            if breaker.failures:
                breaker.success()
        except BackendError as exc:
            self._unavailable(exc, "read")
            self._misses += 1
            return Lookup(MISSING, None)
        return self._looked_up(key, fetched, horizon, token, t0)

    async def lookup(self, key: str, *, horizon: int | None = None, lock: bool = False) -> Lookup:
        """Async twin of :meth:`lookup_sync`."""
        me = self._target()
        if me is not self:
            return await me.lookup(key, horizon=horizon, lock=lock)
        if self._pending:
            await self._retry_pending()
        token = _new_writer() if lock else None
        t0 = time.perf_counter() if _debug_enabled(_DEBUG) else 0.0
        try:
            self._check_breaker()
            fetched = await self.backend.afetch(key, token, COMPUTE_LOCK_SECONDS)
            self._breaker.success()
        except BackendError as exc:
            self._unavailable(exc, "read")
            self._misses += 1
            return Lookup(MISSING, None)
        return self._looked_up(key, fetched, horizon, token, t0)

    def _prepare_store(
        self, key: str, value: object, tags: Iterable[str], snapshot: Snapshot
    ) -> tuple[tuple[str, ...], bytes] | None:
        ids = tag_ids(tags)
        if self._blocked(ids):
            if debug_on():
                log.debug(
                    "yokedcache: store refused (invalidation pending here) key=%s tables=%s",
                    key_digest(key),
                    tables_of(ids),
                )
            return None
        return ids, self._encode(key, value, ids, snapshot)

    def store_sync(
        self,
        key: str,
        value: object,
        *,
        tags: Iterable[str],
        snapshot: Snapshot,
        ttl: TTL = DEFAULT_TTL,
        lock: ComputeLock | None = None,
    ) -> bool:
        """Store *value* computed after *snapshot* was observed; refused if a tag moved since.

        Raises:
            SerializationError: the value cannot be encoded (nothing stored).
        """
        me = self._target()
        prepared = me._prepare_store(key, value, tags, snapshot)
        if prepared is None:
            return False
        ids, payload = prepared
        token = me._lock_token(lock)
        t0 = time.perf_counter() if _debug_enabled(_DEBUG) else 0.0
        try:
            me._check_breaker()
            outcome = me.backend.store(
                key, payload, me._ttl(ttl), ids, snapshot.epoch, snapshot.seq, token
            )
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "write")
            return False
        return me._stored(outcome, lock, key, ids, t0)

    async def store(
        self,
        key: str,
        value: object,
        *,
        tags: Iterable[str],
        snapshot: Snapshot,
        ttl: TTL = DEFAULT_TTL,
        lock: ComputeLock | None = None,
    ) -> bool:
        """Async twin of :meth:`store_sync`."""
        me = self._target()
        prepared = me._prepare_store(key, value, tags, snapshot)
        if prepared is None:
            return False
        ids, payload = prepared
        token = me._lock_token(lock)
        t0 = time.perf_counter() if _debug_enabled(_DEBUG) else 0.0
        try:
            me._check_breaker()
            outcome = await me.backend.astore(
                key, payload, me._ttl(ttl), ids, snapshot.epoch, snapshot.seq, token
            )
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "write")
            return False
        return me._stored(outcome, lock, key, ids, t0)

    @staticmethod
    def _lock_token(lock: ComputeLock | None) -> str | None:
        return lock.token if lock is not None and not lock.released else None

    def _stored(
        self,
        outcome: StoreOutcome,
        lock: ComputeLock | None,
        key: str = "",
        ids: Sequence[str] = (),
        t0: float = 0.0,
    ) -> bool:
        if lock is not None:
            lock.released = True  # the store script dropped it, whatever the outcome
        if t0:
            log.debug(
                "yokedcache: %s key=%s tables=%s in %.2f ms",
                _STORE_WORDS[outcome],
                key_digest(key),
                tables_of(ids),
                (time.perf_counter() - t0) * 1000,
            )
        if outcome is StoreOutcome.STORED:
            self._sets += 1
            return True
        return False

    def observe_sync(self) -> Snapshot | None:
        """Return the current epoch and write sequence, or None if the store is unreachable."""
        me = self._target()
        if me is not self:
            return me.observe_sync()
        try:
            self._check_breaker()
            snap = self.backend.observe()
            self._breaker.success()
            return snap
        except BackendError as exc:
            self._unavailable(exc, "read")
            return None

    async def observe(self) -> Snapshot | None:
        """Async twin of :meth:`observe_sync`."""
        me = self._target()
        if me is not self:
            return await me.observe()
        try:
            self._check_breaker()
            snap = await self.backend.aobserve()
            self._breaker.success()
            return snap
        except BackendError as exc:
            self._unavailable(exc, "read")
            return None

    # -- two-phase writes ------------------------------------------------------------------

    @staticmethod
    def new_writer() -> str:
        """Return a fresh writer id for :meth:`begin_write_sync`."""
        return _new_writer()

    # The twins below differ only in awaiting the backend; what happens on failure is decided
    # once, in the _*_failed helpers.

    def _begin_failed(self, ids: tuple[str, ...], writer: str, exc: BackendError) -> None:
        if self.config.strict_invalidation:
            self._unavailable(
                exc, "marking written tables", "strict_invalidation refuses commits meanwhile"
            )
            raise InvalidationError(
                f"strict_invalidation: could not mark {list(ids)} before COMMIT ({exc}); "
                "the transaction is not committed — retry when the cache answers, or turn "
                "strict_invalidation off to commit with a bounded staleness window"
            ) from exc
        self._unavailable(exc, "marking written tables")
        self._add_pending(ids, writer)

    def _end_failed(
        self, ids: tuple[str, ...], writer: str, exc: BackendError
    ) -> InvalidationError:
        self._unavailable(exc, "invalidation")
        self._add_pending(ids, writer)
        return InvalidationError(
            f"invalidation of {list(ids)} not delivered ({exc}); those tags are bypassed in "
            "this process and retried until the cache answers"
        )

    def begin_write_sync(self, tags: Iterable[str], writer: str) -> None:
        """Mark *tags* as being written: no entry for them is served or stored until
        :meth:`end_write_sync` or :meth:`release_sync` (or the lease expires).

        If the store is unreachable the tags become pending in this process (bypassed here,
        and the later ``end_write`` retried until delivered).

        Raises:
            InvalidationError: only with ``strict_invalidation``, when the mark (and its
                version bump) could not be delivered; the caller must not commit.
        """
        me = self._target()
        if loop_check.armed and _get_running_loop() is not None:
            loop_check.fire("commit")
        ids = tuple(tag_id(t) for t in tags)
        cfg = me.config
        try:
            me._check_breaker()
            me.backend.begin_write(ids, writer, cfg.write_lease, cfg.strict_invalidation)
            me._breaker.success()
        except BackendError as exc:
            me._begin_failed(ids, writer, exc)

    async def begin_write(self, tags: Iterable[str], writer: str) -> None:
        """Async twin of :meth:`begin_write_sync`."""
        me = self._target()
        ids = tuple(tag_id(t) for t in tags)
        cfg = me.config
        try:
            me._check_breaker()
            await me.backend.abegin_write(ids, writer, cfg.write_lease, cfg.strict_invalidation)
            me._breaker.success()
        except BackendError as exc:
            me._begin_failed(ids, writer, exc)

    def end_write_sync(self, tags: Iterable[str], writer: str) -> None:
        """Give *tags* new versions and drop *writer*'s marks (after the commit).

        Raises:
            InvalidationError: the store could not be reached; the tags stay pending in this
                process (bypassed, retried with backoff) until delivered.
        """
        me = self._target()
        ids = tuple(tag_id(t) for t in tags)
        if not ids:
            return
        try:
            me._check_breaker()
            me.backend.end_write(ids, writer)
            me._breaker.success()
        except BackendError as exc:
            raise me._end_failed(ids, writer, exc) from exc
        me._count_invalidation(ids)

    async def end_write(self, tags: Iterable[str], writer: str) -> None:
        """Async twin of :meth:`end_write_sync`."""
        me = self._target()
        ids = tuple(tag_id(t) for t in tags)
        if not ids:
            return
        try:
            me._check_breaker()
            await me.backend.aend_write(ids, writer)
            me._breaker.success()
        except BackendError as exc:
            raise me._end_failed(ids, writer, exc) from exc
        me._count_invalidation(ids)

    def release_sync(self, tags: Iterable[str], writer: str) -> None:
        """Drop *writer*'s marks without new versions (after a rollback). Never raises.

        An unreleased mark only makes other processes bypass until its lease expires.
        """
        me = self._target()
        ids = tuple(tag_id(t) for t in tags)
        if not ids:
            return
        try:
            me._check_breaker()
            me.backend.release(ids, writer)
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "release")

    async def release(self, tags: Iterable[str], writer: str) -> None:
        """Async twin of :meth:`release_sync`."""
        me = self._target()
        ids = tuple(tag_id(t) for t in tags)
        if not ids:
            return
        try:
            me._check_breaker()
            await me.backend.arelease(ids, writer)
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "release")

    def _count_invalidation(self, ids: Sequence[str]) -> None:
        if debug_on():
            log.debug("yokedcache: invalidated tags=%s", list(ids))
        self._invalidations += 1
        for t in ids:
            if t.startswith("table:"):
                self._table_invalidations[t] += 1

    def _add_pending(self, ids: Sequence[str], writer: str) -> None:
        with self._lock:
            for t in ids:
                _w, attempts, _n = self._pending.get(t, (writer, 0, 0.0))
                self._pending[t] = (writer, attempts, time.monotonic())
        self._state_log.pending_now(ids)
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        """Retry pending invalidations in the background too, so a writer that goes quiet
        still delivers them (lookups also retry them when due)."""
        with self._lock:
            if self._retry_timer is not None or not self._pending:
                return
            delay = max(0.05, min(w for _w, _a, w in self._pending.values()) - time.monotonic())
            timer = threading.Timer(delay, self._retry_in_background)
            timer.daemon = True
            self._retry_timer = timer
        timer.start()

    def _retry_in_background(self) -> None:
        with self._lock:
            self._retry_timer = None
        try:
            self._retry_pending_sync()
        except Exception as exc:  # never let the timer thread die noisily
            log.warning("yokedcache: background retry of invalidations failed: %s", exc)
        self._schedule_retry()

    def _due_pending(self) -> dict[str, list[str]]:
        now = time.monotonic()
        due: dict[str, list[str]] = {}
        for t, (writer, _a, when) in list(self._pending.items()):
            if when <= now:
                due.setdefault(writer, []).append(t)
        return due

    def _pending_failed(self, ids: Sequence[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for t in ids:
                if t in self._pending:
                    writer, attempts, _n = self._pending[t]
                    delay = min(5.0, 0.05 * 2**attempts)
                    self._pending[t] = (writer, attempts + 1, now + delay)

    def _pending_done(self, ids: Sequence[str]) -> None:
        with self._lock:
            for t in ids:
                self._pending.pop(t, None)
            left = len(self._pending)
        self._count_invalidation(ids)
        if not left:
            self._state_log.delivered()

    def _retry_pending_sync(self) -> None:
        for writer, ids in self._due_pending().items():
            try:
                if not self._breaker.allow():
                    self._pending_failed(ids)
                    continue
                self.backend.end_write(ids, writer)
                self._breaker.success()
            except BackendError:
                self._breaker.failure()
                self._pending_failed(ids)
            else:
                self._pending_done(ids)

    async def _retry_pending(self) -> None:
        for writer, ids in self._due_pending().items():
            try:
                if not self._breaker.allow():
                    self._pending_failed(ids)
                    continue
                await self.backend.aend_write(ids, writer)
                self._breaker.success()
            except BackendError:
                self._breaker.failure()
                self._pending_failed(ids)
            else:
                self._pending_done(ids)

    def flush_pending_sync(self) -> int:
        """Try to deliver undelivered invalidations now; return how many tags remain."""
        me = self._target()
        with self._lock:
            for t, (w, a, _n) in list(me._pending.items()):
                me._pending[t] = (w, a, 0.0)
        me._retry_pending_sync()
        return len(me._pending)

    # -- locks for stampede protection ----------------------------------------------------

    def try_lock_sync(self, key: str, ttl: float) -> tuple[bool, str | None]:
        """Try to take the compute lock of *key*.

        Returns ``(True, token)`` when taken, ``(False, None)`` when another caller holds it,
        and ``(True, None)`` when the store is unreachable (compute without a lock).
        """
        me = self._target()
        token = _new_writer()
        try:
            me._check_breaker()
            got = me.backend.acquire(key, token, ttl)
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "lock")
            return True, None
        return (True, token) if got else (False, None)

    async def try_lock(self, key: str, ttl: float) -> tuple[bool, str | None]:
        """Async twin of :meth:`try_lock_sync`."""
        me = self._target()
        token = _new_writer()
        try:
            me._check_breaker()
            got = await me.backend.aacquire(key, token, ttl)
            me._breaker.success()
        except BackendError as exc:
            me._unavailable(exc, "lock")
            return True, None
        return (True, token) if got else (False, None)

    def unlock_sync(self, key: str, token: str | None) -> None:
        """Drop a lock taken with :meth:`try_lock_sync` (no-op for a None token)."""
        if token is None:
            return
        me = self._target()
        try:
            me.backend.unlock(key, token)
        except BackendError as exc:
            me._unavailable(exc, "unlock")  # the lock expires by itself

    async def unlock(self, key: str, token: str | None) -> None:
        """Async twin of :meth:`unlock_sync`."""
        if token is None:
            return
        me = self._target()
        try:
            await me.backend.aunlock(key, token)
        except BackendError as exc:
            me._unavailable(exc, "unlock")

    def is_locked_sync(self, key: str) -> bool:
        """Whether another caller holds the compute lock of *key* (False if unreachable)."""
        me = self._target()
        try:
            return me.backend.locked(key)
        except BackendError:
            return False

    async def is_locked(self, key: str) -> bool:
        """Async twin of :meth:`is_locked_sync`."""
        me = self._target()
        try:
            return await me.backend.alocked(key)
        except BackendError:
            return False

    # -- plain key/value API ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value at *key*, or *default*. Never raises for a sick cache."""
        look = await self.lookup(_normalize_key(key))
        return default if look.value is MISSING else look.value

    def get_sync(self, key: str, default: Any = None) -> Any:
        """Sync twin of :meth:`get`."""
        look = self.lookup_sync(_normalize_key(key))
        return default if look.value is MISSING else look.value

    async def set(
        self, key: str, value: object, *, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = ()
    ) -> bool:
        """Store *value* under *key* with *tags*; return whether it was stored.

        Refused (False) while a tag is being written. A sick cache logs and returns False.

        Raises:
            SerializationError: the value cannot be encoded; nothing was stored.
        """
        me = self._target()
        snap = await me.observe()
        if snap is None:
            codec.pack_value(value)  # still report unserializable values
            return False
        return await me.store(_normalize_key(key), value, tags=tags, snapshot=snap, ttl=ttl)

    def set_sync(
        self, key: str, value: object, *, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = ()
    ) -> bool:
        """Sync twin of :meth:`set`."""
        me = self._target()
        snap = me.observe_sync()
        if snap is None:
            codec.pack_value(value)
            return False
        return me.store_sync(_normalize_key(key), value, tags=tags, snapshot=snap, ttl=ttl)

    async def delete(self, key: str) -> bool:
        """Delete *key*; return whether it existed.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """
        me = self._target()
        return bool(await me.backend.adelete_many([_normalize_key(key)]))

    def delete_sync(self, key: str) -> bool:
        """Sync twin of :meth:`delete`."""
        me = self._target()
        return bool(me.backend.delete_many([_normalize_key(key)]))

    async def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Make every entry carrying any of *tags* stale (one round trip, any entry count).

        Raises:
            InvalidationError: not delivered; the tags are bypassed here and retried.
        """
        await self._target().end_write(list(tags), _new_writer())

    def invalidate_tags_sync(self, tags: Iterable[str]) -> None:
        """Sync twin of :meth:`invalidate_tags`."""
        self._target().end_write_sync(list(tags), _new_writer())

    async def invalidate_tables(self, tables: Iterable[str]) -> None:
        """Invalidate the tags ``table:<name>`` of *tables* (``schema.name`` where qualified)."""
        await self.invalidate_tags([table_tag(t) for t in tables])

    def invalidate_tables_sync(self, tables: Iterable[str]) -> None:
        """Sync twin of :meth:`invalidate_tables`."""
        self.invalidate_tags_sync([table_tag(t) for t in tables])

    async def invalidate_all(self) -> None:
        """Make every entry of this cache stale at once."""
        await self.invalidate_tags([ALL_TAG])

    def invalidate_all_sync(self) -> None:
        """Sync twin of :meth:`invalidate_all`."""
        self.invalidate_tags_sync([ALL_TAG])

    async def clear(self) -> None:
        """Remove this cache's own entries and version state (never other apps' keys).

        Raises:
            BackendUnavailable: the store cannot be reached.
        """
        await self._target().backend.aclear()

    def clear_sync(self) -> None:
        """Sync twin of :meth:`clear`."""
        self._target().backend.clear()

    # -- observability ---------------------------------------------------------------------

    def _stats(self, key_count: int, healthy: bool) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            sets=self._sets,
            invalidations=self._invalidations,
            errors=self._errors,
            key_count=key_count,
            backend=self.backend.name,
            healthy=healthy,
            pending_invalidations=len(self._pending),
            table_hits=dict(self._table_hits),
            table_invalidations=dict(self._table_invalidations),
        )

    async def get_stats(self) -> CacheStats:
        """Return counters and the current number of entries (-1 if the store is down)."""
        me = self._target()
        try:
            count = await me.backend.akey_count()
            healthy = not me._breaker.is_open
        except BackendError:
            count, healthy = -1, False
        return me._stats(count, healthy)

    def get_stats_sync(self) -> CacheStats:
        """Sync twin of :meth:`get_stats`."""
        me = self._target()
        try:
            count = me.backend.key_count()
            healthy = not me._breaker.is_open
        except BackendError:
            count, healthy = -1, False
        return me._stats(count, healthy)

    def reset_stats(self) -> None:
        """Zero the counters."""
        me = self._target()
        me._hits = me._misses = me._sets = me._invalidations = me._errors = 0
        me._table_hits.clear()
        me._table_invalidations.clear()

    async def health(self) -> bool:
        """True when the store answers and the circuit breaker is closed."""
        me = self._target()
        if me._breaker.is_open:
            return False
        try:
            await me.backend.aping()
        except BackendError:
            return False
        return True

    def health_sync(self) -> bool:
        """Sync twin of :meth:`health`."""
        me = self._target()
        if me._breaker.is_open:
            return False
        try:
            me.backend.ping()
        except BackendError:
            return False
        return True

    def explain(self, statement_or_query: Any, *, session: Any, params: Any = None) -> Explanation:
        """What *session* would do with a statement, looked up in this cache; see
        :func:`yokedcache_sa.orm.explain.explain`. Added in 0.x."""
        from .orm.explain import explain

        return explain(statement_or_query, session=session, cache=self, params=params)


_STORE_WORDS: Final = {
    StoreOutcome.STORED: "stored",
    StoreOutcome.STALE: "store refused (a tag moved since the read, or new epoch)",
    StoreOutcome.BEING_WRITTEN: "store refused (a tag is being written)",
}


def _debug_lookup(
    key: str, hit: bool, header: codec.Header | None, fetched: Fetched, t0: float
) -> None:
    if hit:
        what = "hit"
    elif header is not None:
        what = "miss (stale entry)"
    else:
        what = "miss"
    log.debug(
        "yokedcache: %s key=%s tables=%s in %.2f ms",
        what,
        key_digest(key),
        tables_of(header.tags if header is not None else fetched.tags),
        (time.perf_counter() - t0) * 1000,
    )


def make_key(*parts: object) -> str:
    """Hash *parts* (their reprs) into a short cache key."""
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


__all__ += ["DEFAULT_TTL", "SerializationError", "make_key"]
