"""Shared fixtures: real services on loopback, URLs from the environment.

A service that does not answer is skipped locally and fails the run under ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.redis_process import RedisProcess
from yokedcache_sa import CacheConfig, YokedCache

REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PG_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
PG_ASYNC_URL = os.environ.get(
    "YOKEDCACHE_TEST_PG_ASYNC_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
MARIADB_URL = os.environ.get(
    "YOKEDCACHE_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test"
)
MARIADB_ASYNC_URL = os.environ.get(
    "YOKEDCACHE_TEST_MARIADB_ASYNC_URL", "mysql+aiomysql://root@127.0.0.1:3306/test"
)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

SHARED_REDIS: dict[str, Any] = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
"""Timeouts of the caches tests build on the shared Redis, which is up: the library's defaults
(0.25 s per reply, 0.5 s to connect) are for production, where a slow cache is better skipped.
On a loaded CI machine a process can stall past them; a read that times out is, by design, a
miss that is not stored, and a test expecting the next read to hit then fails (issue #9).
Tests of slow or failing stores use private servers and short timeouts of their own."""

# The memory backend shares its version record with every process of the host that uses the
# same key prefix: caches built with the default prefix get one private to this test run, so
# that concurrent runs (and a demo app) on one host never invalidate each other's entries.
os.environ.setdefault("YOKEDCACHE_KEY_PREFIX", "t" + uuid.uuid4().hex[:12])


def _port_open(url: str, default_port: int) -> bool:
    from urllib.parse import urlsplit

    parts = urlsplit(url)  # a driver suffix ("mysql+aiomysql") is a legal scheme
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    """Skip (locally) or fail (under CI=true) when *url* does not answer."""
    if _port_open(url, default_port):
        return
    msg = f"{name} at {url} is not reachable"
    if IN_CI:
        pytest.fail(f"{msg}; CI=true requires every service", pytrace=False)
    pytest.skip(msg)


def require_redis_server() -> None:
    """Skip (locally) or fail (under CI=true) when ``redis-server`` is not on PATH: tests that
    stop, pause or misconfigure Redis start their own."""
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not on PATH; CI=true requires it", pytrace=False)
        pytest.skip("redis-server is not on PATH")


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A private redis-server on a free port, stopped after the test."""
    require_redis_server()
    server = RedisProcess()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_URL, 6379)
    return REDIS_URL


@pytest.fixture
def unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:12]


def _own_cache(backend: str, prefix: str) -> Iterator[YokedCache]:
    if backend == "memory":
        c = YokedCache(CacheConfig(key_prefix=prefix))
    else:
        require_service("Redis", REDIS_URL, 6379)
        c = YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=prefix, **SHARED_REDIS))
    yield c
    try:
        c.clear_sync()
    finally:
        c.disconnect_sync()


@pytest.fixture(params=["memory", "redis"])
def cache(request: pytest.FixtureRequest, unique_prefix: str) -> Iterator[YokedCache]:
    """A YokedCache bound to each backend, with a private key prefix."""
    yield from _own_cache(request.param, unique_prefix)


@pytest.fixture
def redis_cache(unique_prefix: str) -> Iterator[YokedCache]:
    """A Redis-backed YokedCache with a private key prefix (for Redis-only behaviour)."""
    yield from _own_cache("redis", unique_prefix)
