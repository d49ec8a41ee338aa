"""Keys and sentinels of the cache API: ``MISSING``, ``DEFAULT_TTL``, key normalization.

The key a caller passes to ``get``/``set`` is normalized once here into the key the store
sees: short safe keys are kept readable (``k:<key>``), anything else is hashed (``h:<hex>``).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
from typing import Final

from .errors import ArgumentTypeError, UsageError

__all__ = [
    "DEFAULT_TTL",
    "MISSING",
    "TTL",
    "Default",
    "Missing",
    "check_ttl",
    "make_key",
    "new_token",
    "normalize_key",
]


class Missing:
    """Type of :data:`MISSING`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Final = Missing()
"""Returned by lookups on a miss (``None`` is a value that can be cached)."""


class Default:
    """Type of :data:`DEFAULT_TTL`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFAULT_TTL"


DEFAULT_TTL: Final = Default()
"""Sentinel: use the config's ``default_ttl``. ``ttl=None`` means no expiry."""

TTL = float | int | None | Default


def check_ttl(ttl: TTL, default: float | None) -> float | None:
    """Return the TTL in seconds (None: no expiry) that *ttl* asks for.

    Raises:
        UsageError: *ttl* is zero or negative.
    """
    if isinstance(ttl, Default):
        return default
    if ttl is not None and ttl <= 0:
        raise UsageError(f"ttl must be > 0 seconds or None (no expiry), got {ttl!r}")
    return None if ttl is None else float(ttl)


_KEY_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@=+")


@functools.lru_cache(maxsize=8192)
def normalize_key(key: str) -> str:
    """Return the store key of the user key *key*.

    Raises:
        ArgumentTypeError: *key* is not a string.
    """
    if not isinstance(key, str):
        raise ArgumentTypeError(f"cache keys are strings, got {type(key).__name__}")
    if key and len(key) <= 200 and set(key) <= _KEY_SAFE:
        return "k:" + key
    return "h:" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=20).hexdigest()


def make_key(*parts: object) -> str:
    """Hash *parts* (their reprs) into a short cache key."""
    h = hashlib.blake2b(digest_size=20)
    for p in parts:
        h.update(repr(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()


def new_token() -> str:
    """A fresh id for a writer or a lock holder: unique among processes (a random
    per-process prefix, drawn again in a forked child) and within one (a counter) — every
    lookup that may compute takes one, so it costs no system call."""
    return f"{_token_prefix}{next(_token_count):x}"


def _reseed_tokens() -> None:
    global _token_prefix, _token_count
    _token_prefix = os.urandom(8).hex() + "."
    _token_count = itertools.count()


_token_prefix = ""
_token_count = itertools.count()
_reseed_tokens()
os.register_at_fork(after_in_child=_reseed_tokens)
