"""The state of one cache and its pure steps: decide an entry, encode a value, count.

:class:`CacheState` is what every flow (:mod:`yokedcache_sa.flows`) reads and updates; it
does no I/O. :class:`~yokedcache_sa.cache.YokedCache` is this state plus the public methods.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple, TypeVar

from . import codec
from .backends.base import Backend, Fetched, StoreOutcome
from .backends.memory import MemoryBackend
from .breaker import BreakerOpen, CircuitBreaker
from .config import CacheConfig
from .errors import BackendError, BackendUnavailable, CorruptEntryError
from .keys import MISSING, TTL, check_ttl
from .logs import StateLog, debug_on, key_digest, tables_of
from .observe import (
    Bypass,
    Hooks,
    Invalidated,
    PendingChanged,
    RefusalReason,
    Stored,
    StoreRefused,
    tables_in,
)
from .pending import PendingInvalidations
from .stats import Counters
from .tags import Snapshot, is_fresh, tag_id

__all__ = ["COMPUTE_LOCK_SECONDS", "CacheState", "ComputeLock", "Lookup"]

log = logging.getLogger("yokedcache_sa")
T = TypeVar("T")
# hot paths ask the logger directly (its answer is cached by the logging module)
debug_enabled = functools.partial(log.isEnabledFor, logging.DEBUG)

_STORE_WORDS: Final = {
    StoreOutcome.STORED: "stored",
    StoreOutcome.STALE: "store refused (a tag moved since the read, or new epoch)",
    StoreOutcome.MARKED: "store refused (a tag is being written)",
}

COMPUTE_LOCK_SECONDS: Final = 30.0
"""Lifetime of a compute (stampede) lock; a crashed holder frees it by expiry."""


class ComputeLock:
    """A compute lock taken for a key: pass it to ``store`` (which drops it) or unlock it."""

    __slots__ = ("released", "token")

    def __init__(self, token: str) -> None:
        self.token = token
        self.released = False


_tuple_new = tuple.__new__


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

    def depends_on(self, tags: Iterable[str]) -> bool:
        """Whether the entry carries any of *tags* (e.g. the tables the caller has written
        and not committed: then it must not serve them, nor store what it computes)."""
        ids = self.tags
        return any(tag_id(t) in ids for t in tags)


def build_backend(cfg: CacheConfig) -> Backend:
    """The store *cfg* describes: Redis when it has a URL, else process memory."""
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


class CacheState:
    """Configuration, backend, breaker, counters and pending invalidations of one cache."""

    def __init__(self, config: CacheConfig | None, backend: Backend | None) -> None:
        self.config = cfg = config if config is not None else CacheConfig()
        self.backend: Backend = backend if backend is not None else build_backend(cfg)
        self._secret = (
            cfg.signing_secret.get_secret_value().encode() if cfg.signing_secret else None
        )
        self._max_bytes = cfg.max_value_bytes
        self._breaker = CircuitBreaker(
            cfg.circuit_breaker_threshold, cfg.circuit_breaker_timeout, cfg.enable_circuit_breaker
        )
        state_log = self._state_log = StateLog(
            getattr(self.backend, "url_redacted", None) or f"({self.backend.name} backend)"
        )
        # The callbacks must not reference self: a cycle would keep a dropped cache alive
        # (and the default of get_default_cache) until the garbage collector runs.
        self._hooks = hooks = Hooks()
        self._breaker.on_recover = _both(state_log.recovered, hooks.breaker_recovered)
        self._breaker.on_open = _both(
            functools.partial(state_log.opened, timeout=cfg.circuit_breaker_timeout),
            hooks.breaker_opened,
        )
        self._counts = Counters()
        self._redirect: CacheState | None = None
        """Set by a dependency override: the drivers run every flow on that cache instead."""
        self._pending = PendingInvalidations(self._retry_in_background)
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

    def _retry_in_background(self) -> None:  # overridden by the façade (it drives the flow)
        raise NotImplementedError  # pragma: no cover

    def _on_connected(self) -> None:  # overridden by the façade (the default-cache rule)
        pass

    # -- read-only views (for operator tools and exporters) -----------------------------------

    @property
    def breaker_open(self) -> bool:
        """Whether the circuit breaker refuses backend calls now. Added in 0.x."""
        return self._breaker.is_open

    @property
    def pending_count(self) -> int:
        """Tags whose invalidation this process has not delivered to the store yet (what
        ``CacheStats.pending_invalidations`` reports). Added in 0.x."""
        return len(self._pending)

    def entry_header(self, key: str, payload: bytes) -> codec.Header:
        """Verify *payload* as the entry of *key* in this cache (its key scope, signing
        secret and size limit) and return its header; :meth:`decide` does the same inline.

        Raises:
            KeyMismatch: the entry was stored for another key.
            CorruptEntryError: see :func:`yokedcache_sa.codec.decode_header`.

        Added in 0.x.
        """
        return codec.decode_header(
            payload, key=self._key_scope + key, secret=self._secret, max_bytes=self._max_bytes
        )

    # -- pure steps --------------------------------------------------------------------------

    def decide(
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
                self.count_error("ignored an entry whose stored tags disagree with its header")
                return MISSING, None
            if blocked or not is_fresh(header.epoch, header.seq, fetched.snapshot, horizon):
                return MISSING, header
            return codec.unpack_value(payload[header.body_start : header.body_end]), header
        except codec.KeyMismatch:
            self._counts.errors += 1
            if not self._warned_key_mismatch:
                self._warned_key_mismatch = True
                log.warning(
                    "yokedcache: ignored an entry stored for another key (copied or swapped "
                    "in the store; treated as a miss, counted in errors, logged once)"
                )
            return MISSING, None
        except CorruptEntryError as exc:
            self.count_error("ignored a bad entry (treated as a miss): %s", exc)
            return MISSING, None

    def looked_up(
        self, key: str, fetched: Fetched, horizon: int | None, token: str | None, t0: float
    ) -> Lookup:
        """The :class:`Lookup` of a fetch, counted as a hit or a miss."""
        pending = self._pending
        blocked = bool(pending.tags) and pending.blocks(fetched.tags)  # .tags: a C-level test
        value, header = self.decide(key, fetched, horizon, blocked)
        if value is MISSING:
            self._counts.misses += 1
        elif header is not None:
            self._counts.hit(header.tags)
        else:  # pragma: no cover - a value always comes with its header
            self._counts.hits += 1
        if t0:
            _debug_lookup(key, value is not MISSING, header, fetched, t0)
        lock = ComputeLock(token) if token is not None and fetched.lock == 1 else None
        # made without Lookup's Python-level __new__ (every field given)
        look: Lookup = _tuple_new(
            Lookup, (value, fetched.snapshot, fetched.tags, lock, fetched.lock == -1)
        )
        return look

    def read_failed(self, exc: BackendError) -> Lookup:
        """The :class:`Lookup` of a read the store failed: a miss that must not be stored."""
        self.unavailable(exc, "read")
        self._counts.misses += 1
        if self._hooks.active:
            self._hooks.emit(
                Bypass("breaker_open" if isinstance(exc, BreakerOpen) else "unavailable")
            )
        return Lookup(MISSING, None)

    def ttl(self, ttl: TTL) -> float | None:
        return check_ttl(ttl, self.config.default_ttl)

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

    def count_error(self, msg: str, *args: object) -> None:
        self._counts.errors += 1
        log.warning(msg, *args)

    def unavailable(
        self,
        exc: BackendError,
        what: str,
        consequence: str = "reads use the database, invalidations are retried",
    ) -> None:
        """Count and log a failed *what* (the driver has told the breaker already)."""
        if isinstance(exc, BreakerOpen):
            self._counts.errors += 1
            if debug_on():
                log.debug("yokedcache: %s skipped: %s", what, exc)
            return
        if isinstance(exc, BackendUnavailable):
            self._counts.errors += 1
            self._state_log.unreachable(what, exc, consequence)  # WARNING once per outage
            return
        self.count_error("cache %s failed, using the database: %s", what, exc)

    def stored(self, outcome: StoreOutcome, key: str, ids: tuple[str, ...], t0: float) -> bool:
        """Count a store's outcome; True when stored."""
        if t0:
            log.debug(
                "yokedcache: %s key=%s tables=%s in %.2f ms",
                _STORE_WORDS[outcome],
                key_digest(key),
                tables_of(ids),
                (time.perf_counter() - t0) * 1000,
            )
        if self._hooks.active:
            digest, tables = key_digest(key), tables_in(ids)
            self._hooks.emit(
                Stored(digest, tables)
                if outcome is StoreOutcome.STORED
                else StoreRefused(digest, tables, _REFUSALS[outcome])
            )
        if outcome is StoreOutcome.STORED:
            self._counts.sets += 1
            return True
        return False

    def refused_pending(self, key: str, ids: tuple[str, ...]) -> None:
        """Report a store refused because an invalidation of its tags is pending here."""
        if debug_on():
            log.debug(
                "yokedcache: store refused (invalidation pending here) key=%s tables=%s",
                key_digest(key),
                tables_of(ids),
            )
        if self._hooks.active:
            self._hooks.emit(StoreRefused(key_digest(key), tables_in(ids), "pending"))

    def invalidated(self, ids: Iterable[str]) -> None:
        """Count a delivered invalidation of *ids*."""
        if debug_on():
            log.debug("yokedcache: invalidated tags=%s", list(ids))
        self._counts.invalidated(ids)
        if self._hooks.active:
            ids = tuple(ids)
            self._hooks.emit(Invalidated(tables_in(ids), len(ids)))

    def add_pending(self, ids: tuple[str, ...], writer: str) -> None:
        """Queue an undelivered invalidation (bypassed here, retried)."""
        self._pending.add(ids, writer)
        self._state_log.pending_now(ids)
        if self._hooks.active:
            self._hooks.emit(PendingChanged(len(self._pending)))

    def delivered(self, ids: list[str], writer: str) -> None:
        """Count a pending invalidation of *writer* delivered at last."""
        done = self._pending.delivered(ids, writer)
        if done:  # counted once even when the timer and a flush both delivered
            self.invalidated(done)
            if not self._pending.tags:
                self._state_log.delivered()
            if self._hooks.active:
                self._hooks.emit(PendingChanged(len(self._pending)))

    @staticmethod
    def is_store_failure(exc: BackendError) -> bool:
        """Whether *exc* is the store failing (counted by the breaker), not a refusal."""
        return isinstance(exc, BackendUnavailable) and not isinstance(exc, BreakerOpen)

    def blocked(self, tags: Iterable[str]) -> bool:
        return self._pending.blocks(tags)


_REFUSALS: Final[dict[StoreOutcome, RefusalReason]] = {
    StoreOutcome.STALE: "version_moved",
    StoreOutcome.MARKED: "marked",
}


def _both(first: Callable[[T], None], second: Callable[[T], None]) -> Callable[[T], None]:
    """A callback calling *first*, then *second* (neither holds the cache)."""

    def call(arg: T) -> None:
        first(arg)
        second(arg)

    return call


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
