"""The backend operations a flow can yield, with the circuit-breaker policy of each.

A flow (:mod:`yokedcache_sa.flows`) yields ``(op, args)``; a driver
(:mod:`yokedcache_sa.drivers`) calls ``op.name`` (sync) or ``op.async_name`` (async) on the
backend with *args*.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

__all__ = [
    "ACQUIRE",
    "BEGIN_WRITE",
    "CLEAR",
    "CLOSE",
    "DELETE_MANY",
    "END_WRITE",
    "FETCH",
    "KEY_COUNT",
    "LOCKED",
    "OBSERVE",
    "PEEK",
    "PING",
    "RELEASE",
    "STORE",
    "UNLOCK",
    "Flow",
    "Op",
]

T = TypeVar("T")


class Op(NamedTuple):
    """A backend operation: its sync and async method names and its breaker policy."""

    name: str
    """The sync method of :class:`~yokedcache_sa.backends.base.Backend` (and the op's name)."""
    async_name: str
    guarded: bool
    """Refused while the breaker is open."""
    counted: bool
    """Its success closes the breaker, its store failure counts toward opening it."""


FETCH = Op("fetch", "afetch", True, True)
OBSERVE = Op("observe", "aobserve", True, True)
STORE = Op("store", "astore", True, True)
BEGIN_WRITE = Op("begin_write", "abegin_write", True, True)
END_WRITE = Op("end_write", "aend_write", True, True)
RELEASE = Op("release", "arelease", True, True)
ACQUIRE = Op("acquire", "aacquire", True, True)
UNLOCK = Op("unlock", "aunlock", False, True)  # always tried: a held lock delays others
LOCKED = Op("locked", "alocked", False, False)
PEEK = Op("fetch", "afetch", False, False)  # an operator's look: neither refused nor counted
DELETE_MANY = Op("delete_many", "adelete_many", False, False)
CLEAR = Op("clear", "aclear", False, False)
KEY_COUNT = Op("key_count", "akey_count", False, False)
PING = Op("ping", "aping", False, False)
CLOSE = Op("close", "aclose", False, False)

Flow = Generator[tuple[Op, tuple[Any, ...]], Any, T]
"""A cache operation: yields ``(op, args)``, receives the op's result, returns T."""
