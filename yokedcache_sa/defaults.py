"""The default cache: which :class:`~yokedcache_sa.cache.YokedCache` is used when none is given.

The rule, in order:

1. the cache set with :func:`set_default_cache`;
2. else the cache most recently connected (``connect``/``connect_sync``, or ``async with``);
3. else the most recently created :class:`YokedCache` — logged once (a warning naming the fix)
   when several exist, since the order of creation is then what decides;
4. else (no cache exists) :class:`~yokedcache_sa.errors.NoDefaultCache`.

``@cached`` and ``cached_dependency`` follow it (the seed tutorial's ``@cached`` without
``cache=`` relies on step 2, or on step 3 in tests that skip the app's lifespan).

A :class:`~yokedcache_sa.CachingSession` made without ``cache=`` is stricter: it takes the
cache of step 1, else the only cache that exists, and raises
:class:`~yokedcache_sa.errors.NoDefaultCache` when several exist — a session never binds to a
cache by the order caches were created or connected in.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

from .errors import NoDefaultCache

if TYPE_CHECKING:
    from .cache import YokedCache

__all__ = ["get_default_cache", "get_session_default_cache", "set_default_cache"]

log = logging.getLogger("yokedcache_sa")

_lock = threading.Lock()
_last_created: weakref.ref[YokedCache] | None = None
_warned_guess = False
_caches: weakref.WeakSet[YokedCache] = weakref.WeakSet()
_last_connected: weakref.ref[YokedCache] | None = None
_explicit_default: YokedCache | None = None

_HOW = (
    "pass cache= (CachingSession(engine, cache=cache), @cached(cache=cache)) or call "
    "yokedcache_sa.set_default_cache(cache) once at startup"
)


def set_default_cache(cache: YokedCache | None) -> None:
    """Make *cache* the one used when no ``cache=`` is given (None to unset)."""
    global _explicit_default
    _explicit_default = cache


def created(cache: YokedCache) -> None:
    global _last_created
    with _lock:
        _caches.add(cache)
        _last_created = weakref.ref(cache)


def connected(cache: YokedCache) -> None:
    global _last_connected
    with _lock:
        _last_connected = weakref.ref(cache)


def _only() -> YokedCache | None:
    with _lock:
        live = list(_caches)
    if not live:
        raise NoDefaultCache(
            "no YokedCache exists yet: create one (YokedCache(CacheConfig())) and " + _HOW
        )
    return live[0] if len(live) == 1 else None


def get_default_cache() -> YokedCache:
    """Return the default cache (see the rule in this module's docstring).

    Raises:
        NoDefaultCache: no cache exists.
    """
    if _explicit_default is not None:
        return _explicit_default.resolved()
    ref = _last_connected
    cache = ref() if ref is not None else None
    if cache is None:
        cache = _newest()
    return cache.resolved()


def _newest() -> YokedCache:
    global _warned_guess
    ref = _last_created
    cache = ref() if ref is not None else None
    if cache is None:
        cache = _only()  # the newest was collected: any survivor, if it is the only one
    if cache is None:
        raise NoDefaultCache(
            f"{len(_caches)} YokedCache objects exist and none was connected or set as the "
            "default, so which one to use is ambiguous: " + _HOW
        )
    if not _warned_guess and len(_caches) > 1:
        _warned_guess = True
        log.warning(
            "yokedcache: no cache= given and no default cache set or connected; using the "
            "most recently created of %d caches. To choose: %s",
            len(_caches),
            _HOW,
        )
    return cache


def get_session_default_cache() -> YokedCache:
    """The cache of a caching session made without ``cache=``: the one set with
    :func:`set_default_cache`, else the only cache that exists.

    Raises:
        NoDefaultCache: no cache exists, or several do and none was set as the default.
    """
    if _explicit_default is not None:
        return _explicit_default.resolved()
    cache = _only()
    if cache is None:
        raise NoDefaultCache(
            f"a CachingSession was made without cache= while {len(_caches)} YokedCache "
            "objects exist; it will not guess which one: " + _HOW
        )
    return cache.resolved()
