"""Helpers shared by the backend suites and the core cache tests: a fake clock, a cache whose
time can pass (fake on memory, short real spans on Redis), and the raw Redis key layout."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import redis as redis_py

from yokedcache_sa import YokedCache
from yokedcache_sa.backends.redis import RedisBackend
from yokedcache_sa.keys import normalize_key as _normalize_key
from yokedcache_sa.tags import Snapshot

__all__ = [
    "PW",
    "FakeClock",
    "Timed",
    "Unserializable",
    "is_redis",
    "meta_key",
    "observe_miss",
    "raw_client",
    "raw_entry_key",
]

PW = "hunter2-Secret"
"""A password that must never appear in an error message."""


def is_redis(cache: YokedCache) -> bool:
    return cache.backend.name == "redis"


def raw_client(cache: YokedCache) -> redis_py.Redis:
    backend = cache.backend
    assert isinstance(backend, RedisBackend)
    return backend.client


def raw_entry_key(cache: YokedCache, key: str) -> str:
    """The Redis key of a plain (``get``/``set``) key: layout from backends/redis_commands.py."""
    return f"{cache.config.key_prefix}:e:{_normalize_key(key)}"


def meta_key(cache: YokedCache) -> str:
    return f"{{{cache.config.key_prefix}}}:meta"


def observe_miss(cache: YokedCache, key: str) -> Snapshot:
    """Look *key* up: it must be a miss, and the miss carries the snapshot a store needs."""
    look = cache.lookup_sync(key)
    assert not look.hit
    assert look.snapshot is not None
    return look.snapshot


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Timed:
    """A cache whose time can pass: a fake clock on memory, real (short) time on Redis."""

    cache: YokedCache
    span: float
    """The TTL / write lease to use: long on the fake clock, short on Redis."""
    clock: FakeClock | None

    def pass_part_of_span(self) -> None:
        if self.clock is not None:
            self.clock.advance(self.span * 0.5)

    def eventually(self, predicate: Callable[[], bool]) -> bool:
        """Let the span elapse, then report whether *predicate* holds."""
        if self.clock is not None:
            self.clock.advance(self.span + 0.001)
            return predicate()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # bounded poll, only on the real store
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


class Unserializable:
    """A value the codec refuses."""
