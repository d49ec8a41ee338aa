"""yokedcache_sa: correct, fast query-result caching for SQLAlchemy 2.x.

Reads through a :class:`CachingSession` are cached in Redis or process memory; every commit
that writes a table invalidates every cached result that read it, in every process, before
``commit()`` returns.
"""

from __future__ import annotations

import importlib
from typing import Any

from .cache import DEFAULT_TTL as DEFAULT_TTL
from .cache import MISSING as MISSING
from .cache import CacheStats as CacheStats
from .cache import YokedCache as YokedCache
from .cache import get_default_cache as get_default_cache
from .cache import set_default_cache as set_default_cache
from .config import CacheConfig as CacheConfig
from .errors import BackendError as BackendError
from .errors import BackendUnavailable as BackendUnavailable
from .errors import ConfigError as ConfigError
from .errors import InvalidationError as InvalidationError
from .errors import MissingDependency as MissingDependency
from .errors import NoDefaultCache as NoDefaultCache
from .errors import SerializationError as SerializationError
from .errors import UsageError as UsageError
from .errors import YokedCacheError as YokedCacheError

__version__ = "0.1.0"

__all__ = [  # noqa: RUF022 - grouped: core names, then lazily imported ones
    "DEFAULT_TTL",
    "MISSING",
    "BackendError",
    "BackendUnavailable",
    "CacheConfig",
    "CacheStats",
    "ConfigError",
    "InvalidationError",
    "MissingDependency",
    "NoDefaultCache",
    "SerializationError",
    "UsageError",
    "YokedCache",
    "YokedCacheError",
    "__version__",
    "get_default_cache",
    "set_default_cache",
    "CachingQuery",
    "CachingSession",
    "FromCache",
    "NoCache",
    "cache_router",
    "cached",
    "cached_dependency",
    "declare_dependency",
    "declare_function",
    "explain",
    "instrument_session",
    "listen_on_session",
    "refresh_catalog",
    "watch_engine",
]


_LAZY = {
    "CachingSession": "yokedcache_sa.orm",
    "CachingQuery": "yokedcache_sa.orm",
    "FromCache": "yokedcache_sa.orm",
    "NoCache": "yokedcache_sa.orm",
    "instrument_session": "yokedcache_sa.orm",
    "listen_on_session": "yokedcache_sa.orm",
    "watch_engine": "yokedcache_sa.orm",
    "refresh_catalog": "yokedcache_sa.orm",
    "declare_dependency": "yokedcache_sa.orm",
    "declare_function": "yokedcache_sa.orm",
    "explain": "yokedcache_sa.orm",
    "cached": "yokedcache_sa.functions",
    "cached_dependency": "yokedcache_sa.integrations.fastapi",
    "cache_router": "yokedcache_sa.integrations.fastapi",
}


def __getattr__(name: str) -> Any:
    # The ORM and FastAPI layers import SQLAlchemy / FastAPI; load them on first use, so
    # that importing yokedcache_sa works without the fastapi extra.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'yokedcache_sa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
