"""Exceptions raised by yokedcache_sa.

Every exception the library raises on purpose derives from :class:`YokedCacheError`::

    YokedCacheError
    ├── ConfigError (also ValueError)          a setting is invalid; the message names it
    ├── BackendError                           the cache store failed an operation
    │   └── BackendUnavailable                 the store cannot be reached (or the breaker is open)
    ├── SerializationError (also TypeError)    a value cannot be encoded; nothing was stored
    ├── CorruptEntryError                      an entry failed to decode (internal: read as a miss)
    ├── InvalidationError                      a commit's invalidation could not be delivered
    └── MissingDependency (also ImportError)   an optional extra is not installed

Errors from redis-py or pydantic never cross the library boundary untranslated; the original
is kept as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "CorruptEntryError",
    "InvalidationError",
    "MissingDependency",
    "SerializationError",
    "YokedCacheError",
]


class YokedCacheError(Exception):
    """Root of every exception raised by yokedcache_sa."""


class ConfigError(YokedCacheError, ValueError):
    """A configuration value is invalid; the message names the field and a fix."""


class BackendError(YokedCacheError):
    """The cache store failed an operation."""


class BackendUnavailable(BackendError):
    """The cache store cannot be reached, timed out, or the circuit breaker is open."""


class SerializationError(YokedCacheError, TypeError):
    """A value cannot be encoded for the cache; nothing was stored."""


class CorruptEntryError(YokedCacheError):
    """A stored entry is corrupt, truncated, forged, oversized or of another format.

    Raised inside the decoder only; the cache treats such an entry as a miss and counts an
    error, it never reaches a caller of ``get``.
    """


class InvalidationError(YokedCacheError):
    """An invalidation could not be delivered to the cache store.

    The affected tags stay pending in this process (bypassed, retried) until delivered.
    """


class MissingDependency(YokedCacheError, ImportError):
    """An optional dependency is not installed; the message names the pip command."""


def redact_url(url: str | None) -> str | None:
    """Return *url* with any password replaced by ``***``."""
    if url is None:
        return None
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" not in netloc:
        return url
    userinfo, _, host = netloc.rpartition("@")
    user, colon, _pw = userinfo.partition(":")
    redacted = f"{user}:***" if colon else "***"
    return f"{scheme}://{redacted}@{host}{slash}{path}"
