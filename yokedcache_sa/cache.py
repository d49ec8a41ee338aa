"""YokedCache: the cache object users hold — keys, TTL, tags, stats, health, invalidation.

It adds the lifecycle, the key/value API and observability to the tag-version protocol's
operations (lookup, store, marks, locks: :mod:`yokedcache_sa.protocol`), which it inherits.

Async methods carry the plain names (``get``, ``set``, ``invalidate_tags`` …); each has a sync
twin with the ``_sync`` suffix for code without an event loop. Each twin is one line: it runs
the operation's flow (:mod:`yokedcache_sa.flows`) with the sync or the async driver
(:mod:`yokedcache_sa.drivers`). See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from . import defaults, flows
from .backends.base import Backend
from .config import CacheConfig
from .drivers import drive_async, drive_sync, lookup_async, lookup_sync
from .errors import SerializationError
from .keys import DEFAULT_TTL, MISSING, TTL, make_key, new_token
from .keys import normalize_key as _normalize_key
from .observe import Hooks, Listener
from .protocol import TagVersionProtocol
from .state import COMPUTE_LOCK_SECONDS, CacheState, ComputeLock, Lookup
from .stats import CacheStats
from .tags import ALL_TAG, table_tag

if TYPE_CHECKING:
    from .orm.explain import Explanation

get_default_cache = defaults.get_default_cache
set_default_cache = defaults.set_default_cache

__all__ = [
    "COMPUTE_LOCK_SECONDS",
    "DEFAULT_TTL",
    "MISSING",
    "TTL",
    "CacheStats",
    "ComputeLock",
    "Lookup",
    "SerializationError",
    "YokedCache",
    "get_default_cache",
    "make_key",
    "set_default_cache",
]


class YokedCache(TagVersionProtocol):
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
        super().__init__(config, backend)
        defaults.created(self)

    def __repr__(self) -> str:
        where = getattr(self.backend, "url_redacted", None) or self.backend.name
        return f"<YokedCache {where} prefix={self.config.key_prefix!r}>"

    def __call__(self) -> YokedCache:
        return self

    def _on_connected(self) -> None:
        defaults.connected(self)

    def _retry_in_background(self) -> None:
        drive_sync(flows.retry_pending, self)

    # -- redirection (dependency overrides) ------------------------------------------------

    def redirect_to(self, other: YokedCache | None) -> None:
        """Run every operation of this object on *other* (None restores it).

        ``cached_dependency`` calls this when ``app.dependency_overrides[cache]`` resolves
        the cache to another object, so module-level calls such as
        ``cache.invalidate_tags(...)`` reach the same store as the routes.
        """
        self._redirect = None if other is self else other

    def resolved(self) -> YokedCache:
        """The cache this object's operations run on: itself, or the one :meth:`redirect_to`
        sends them to. Added in 0.x."""
        seen: CacheState = self
        while seen._redirect is not None:
            seen = seen._redirect
        assert isinstance(seen, YokedCache)
        return seen

    _target = resolved  # the spelling of the façade's own methods

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
        return await drive_async(flows.connect, self, required)

    def connect_sync(self, *, required: bool = True) -> YokedCache:
        """Sync twin of :meth:`connect`."""
        return drive_sync(flows.connect, self, required)

    async def disconnect(self) -> None:
        """Close connections (they reopen on next use)."""
        await drive_async(flows.disconnect, self)

    def disconnect_sync(self) -> None:
        """Sync twin of :meth:`disconnect` (asyncio connections close with their loop)."""
        drive_sync(flows.disconnect, self)

    async def __aenter__(self) -> YokedCache:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    # -- plain key/value API ---------------------------------------------------------------

    async def get(self, key: str, default: Any = None) -> Any:
        """Return the fresh value at *key*, or *default*. Never raises for a sick cache."""
        look = await lookup_async(self, _normalize_key(key), None, False)
        return default if look.value is MISSING else look.value

    def get_sync(self, key: str, default: Any = None) -> Any:
        """Sync twin of :meth:`get`."""
        look = lookup_sync(self, _normalize_key(key), None, False)
        return default if look.value is MISSING else look.value

    async def set(
        self, key: str, value: object, *, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = ()
    ) -> bool:
        """Store *value* under *key* with *tags*; return whether it was stored.

        Refused (False) while a tag is being written. A sick cache logs and returns False.

        Raises:
            SerializationError: the value cannot be encoded; nothing was stored.
        """
        return await drive_async(flows.set_value, self, key, value, ttl, tags)

    def set_sync(
        self, key: str, value: object, *, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = ()
    ) -> bool:
        """Sync twin of :meth:`set`."""
        return drive_sync(flows.set_value, self, key, value, ttl, tags)

    async def delete(self, key: str) -> bool:
        """Delete *key*; return whether it existed.

        Raises:
            BackendUnavailable: the store cannot be reached.
        """
        return await drive_async(flows.delete, self, key)

    def delete_sync(self, key: str) -> bool:
        """Sync twin of :meth:`delete`."""
        return drive_sync(flows.delete, self, key)

    async def invalidate_tags(self, tags: Iterable[str]) -> None:
        """Make every entry carrying any of *tags* stale (one round trip, any entry count).

        Raises:
            InvalidationError: not delivered; the tags are bypassed here and retried.
        """
        await drive_async(flows.end_write, self, list(tags), new_token())

    def invalidate_tags_sync(self, tags: Iterable[str]) -> None:
        """Sync twin of :meth:`invalidate_tags`."""
        drive_sync(flows.end_write, self, list(tags), new_token())

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
        await drive_async(flows.clear, self)

    def clear_sync(self) -> None:
        """Sync twin of :meth:`clear`."""
        drive_sync(flows.clear, self)

    # -- observability ---------------------------------------------------------------------

    async def get_stats(self) -> CacheStats:
        """Return counters and the current number of entries (-1 if the store is down)."""
        return await drive_async(flows.stats, self)

    def get_stats_sync(self) -> CacheStats:
        """Sync twin of :meth:`get_stats`."""
        return drive_sync(flows.stats, self)

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._target()._counts.reset()

    # -- hooks (yokedcache_sa.observe) -----------------------------------------------------

    def add_listener(
        self, listener: Listener, kinds: Iterable[type] | None = None
    ) -> Callable[[], None]:
        """Call *listener* with each event (:mod:`yokedcache_sa.observe`) of this cache, or
        only those whose class is in *kinds*; return a function that unsubscribes it.

        Added in 0.x.
        """
        return self._target()._hooks.add(listener, kinds)

    def remove_listener(self, listener: Listener) -> None:
        """Unsubscribe *listener* (every subscription of it). Added in 0.x."""
        self._target()._hooks.remove(listener)

    @property
    def hooks(self) -> Hooks:
        """The listeners and tracer of this cache (what the ORM layer and exporters use)."""
        return self._target()._hooks

    async def health(self) -> bool:
        """True when the store answers and the circuit breaker is closed."""
        return await drive_async(flows.health, self)

    def health_sync(self) -> bool:
        """Sync twin of :meth:`health`."""
        return drive_sync(flows.health, self)

    def explain(self, statement_or_query: Any, *, session: Any, params: Any = None) -> Explanation:
        """What *session* would do with a statement, looked up in this cache; see
        :func:`yokedcache_sa.orm.explain.explain`. Added in 0.x."""
        from .orm.explain import explain

        return explain(statement_or_query, session=session, cache=self, params=params)
