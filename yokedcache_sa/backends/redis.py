"""Redis backend: redis-py sync and asyncio clients from one URL, Lua for every multi-key step.

The key layout and the operations, each built once as a generator of commands, are in
:mod:`.redis_commands`; this module holds the clients, the mapping of redis-py errors, the two
drivers that send the commands, and the public sync and async methods.

All version state lives in ONE hash, so it is lost (evicted, flushed, restarted) all at once
and a lost hash means a new epoch: no entry recorded under the old epoch is ever served again.
Each operation is one EVALSHA (one round trip). See docs/consistency.md for the slot mapping
under Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncGenerator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    MissingDependency,
    redact_text,
    redact_url,
)
from ..steps import run_steps_async, run_steps_sync
from ..tags import Snapshot
from .base import Fetched, StoreOutcome, StoreState
from .redis_commands import Commands, RedisCommands, state_of

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

__all__ = ["RedisBackend"]


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency(
            "the Redis backend needs redis-py: pip install 'yokedcache_sa[redis]'"
        ) from exc
    return redis


async def _close_with_loop(client: Any) -> AsyncGenerator[None, None]:
    # Registered as an async generator of the client's loop: asyncio.run() (any Runner)
    # closes it at loop shutdown, which closes the client's pooled connections while the
    # loop still runs, instead of leaking them (ResourceWarning) when the loop goes away.
    try:
        yield
    finally:
        await client.aclose(close_connection_pool=True)


def _start_closer(closer: AsyncGenerator[None, None]) -> None:
    # The first step runs synchronously up to the yield; it registers the generator with
    # the running loop's shutdown_asyncgens().
    try:
        closer.asend(None).send(None)
    except StopIteration:
        pass


class RedisBackend:
    """A Redis (or ``rediss://`` TLS) store shared by every process using the same prefix.

    One connection pool (bounded by *max_connections*) serves sync callers from any
    thread; each running event loop gets its own asyncio client, so one backend works from
    several loops (``asyncio.run`` twice, FastAPI plus a worker thread) without errors.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "yokedcache",
        max_connections: int = 50,
        socket_timeout: float = 0.25,
        socket_connect_timeout: float = 0.5,
    ) -> None:
        self._redis = _import_redis()
        self.url_redacted = redact_url(url) or ""
        self._url = url
        self.prefix = prefix
        self.commands = RedisCommands(prefix, self._redis.exceptions.NoScriptError)
        """The operations of this backend as commands (no I/O), as its drivers send them."""
        self.meta_key = self.commands.meta_key
        self._kw = dict(
            max_connections=max_connections,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=30,
        )
        self._client: redis_sync.Redis | None = None
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[redis_async.Redis, AsyncGenerator[None, None]]
        ] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"RedisBackend({self.url_redacted!r}, prefix={self.prefix!r})"

    # -- clients ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        # redis-py texts may quote the URL or an AUTH argument: every text is redacted, and
        # an original whose text needed it is not chained (a traceback would print it).
        r = self._redis
        try:
            yield
        except r.exceptions.AuthenticationError as exc:  # a ConnectionError in redis-py
            text, cause = self._clean(exc)
            raise BackendUnavailable(
                f"Redis at {self.url_redacted} refused the credentials ({what}): "
                f"authentication failure (NOAUTH/WRONGPASS: {text}); put the password in "
                "YOKEDCACHE_REDIS_URL as redis://:PASSWORD@host:6379/0, or "
                "redis://USER:PASSWORD@host:6379/0 for an ACL user"
            ) from cause
        except (r.exceptions.ConnectionError, r.exceptions.TimeoutError, OSError) as exc:
            text, cause = self._clean(exc)
            raise BackendUnavailable(
                f"Redis at {self.url_redacted} did not answer {what}: "
                f"{type(exc).__name__}: {text}; check that it runs and that "
                "YOKEDCACHE_REDIS_URL points at it"
            ) from cause
        except r.exceptions.InvalidResponse as exc:
            text, cause = self._clean(exc)
            raise BackendUnavailable(
                f"the server at {self.url_redacted} does not speak the Redis protocol "
                f"({text}); is YOKEDCACHE_REDIS_URL pointing at the right port?"
            ) from cause
        except r.exceptions.NoPermissionError as exc:
            text, cause = self._clean(exc)
            raise BackendError(
                f"Redis at {self.url_redacted} refused {what}: ACL permission denied ({text}); "
                "grant the ACL user the keys and commands of this cache, e.g. "
                f"ACL SETUSER <user> ~{self.prefix}:* ~{{{self.prefix}}}:* "
                "+@read +@write +@scripting +ping +scan"
            ) from cause
        except r.exceptions.RedisError as exc:
            text, cause = self._clean(exc)
            raise BackendError(f"Redis at {self.url_redacted} refused {what}: {text}") from cause

    def _clean(self, exc: BaseException) -> tuple[str, BaseException | None]:
        raw = str(exc)
        text = redact_text(raw, self._url)
        return text, (exc if text == raw else None)

    def _pool(self, pool_cls: Any) -> Any:
        try:
            pool = pool_cls.from_url(self._url, **self._kw)
            # Build one connection object (no I/O) so an unknown URL option fails here, named,
            # rather than as a TypeError on the first command.
            pool.connection_class(**pool.connection_kwargs)
        except (ValueError, TypeError) as exc:
            text, cause = self._clean(exc)
            raise ConfigError(
                f"the Redis URL {self.url_redacted} is not usable: {text}; fix "
                "YOKEDCACHE_REDIS_URL (its options are those of redis-py's Redis.from_url)"
            ) from cause
        return pool

    def _sync(self) -> Any:
        client = self._client
        if client is None:
            with self._errors("a connection"):
                # A plain bounded pool: when all max_connections are busy a call fails at once
                # (a miss, served by the database) instead of queueing behind a lock.
                pool = self._pool(self._redis.ConnectionPool)
                client = self._client = self._redis.Redis(connection_pool=pool)
        return client

    def _async(self) -> Any:
        loop = asyncio.get_running_loop()
        pair = self._aclients.get(loop)
        if pair is None:
            with self._errors("a connection"):
                ra = self._redis.asyncio
                pool = self._pool(ra.ConnectionPool)
                client = ra.Redis(connection_pool=pool)
            closer = _close_with_loop(client)
            _start_closer(closer)
            pair = (client, closer)
            self._aclients[loop] = pair
        return pair[0]

    @property
    def client(self) -> redis_sync.Redis:
        """The sync redis-py client (created on first use)."""
        return self._sync()  # type: ignore[no-any-return]

    # -- the two drivers: the only code that sends commands -----------------------------------

    def _run(self, what: str, commands: Commands) -> Any:
        client = self._client if self._client is not None else self._sync()
        try:  # _errors only once something failed: entering it costs two frames a call
            return run_steps_sync(commands, client.execute_command, spread=True)
        except BaseException:
            with self._errors(what):
                raise

    async def _arun(self, what: str, commands: Commands) -> Any:
        client = self._async()
        try:
            return await run_steps_async(commands, client.execute_command, spread=True)
        except BaseException:
            with self._errors(what):
                raise

    def entry_key(self, key: str) -> str:
        """The Redis key of an entry."""
        return self.commands.entry_key(key)

    # -- sync API --------------------------------------------------------------------------

    def fetch(self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0) -> Fetched:
        # The hit path's fast path: the fetch flow's one command sent directly; the flow
        # itself runs only when the server lacks the script (it loads it and sends it again).
        commands = self.commands
        call = commands.fetch_call(key, lock_token, lock_ttl)
        client = self._client if self._client is not None else self._sync()
        try:
            reply = client.execute_command(*call)
        except commands.no_script:  # nothing ran: the flow loads the script and runs it
            reply = self._run("a read", commands.eval_call("fetch", call))
        except BaseException:
            with self._errors("a read"):  # mapped as in _run
                raise
        return commands.fetched(reply)

    def observe(self) -> Snapshot:
        return self._run("a read", self.commands.observe())  # type: ignore[no-any-return]

    def store(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None = None,
    ) -> StoreOutcome:
        return self._run(  # type: ignore[no-any-return]
            "a write", self.commands.store(key, payload, ttl, tags, epoch, seq, lock_token)
        )

    def begin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        self._run("begin_write", self.commands.begin_write(tags, writer, lease, bump))

    def end_write(self, tags: Sequence[str], writer: str) -> int:
        return self._run("an invalidation", self.commands.end_write(tags, writer))  # type: ignore[no-any-return]

    def release(self, tags: Sequence[str], writer: str) -> None:
        self._run("a release", self.commands.release(tags, writer))

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        return self._run("a lock", self.commands.acquire(name, token, ttl))  # type: ignore[no-any-return]

    def unlock(self, name: str, token: str) -> None:
        self._run("an unlock", self.commands.unlock(name, token))

    def locked(self, name: str) -> bool:
        return self._run("a lock check", self.commands.locked(name))  # type: ignore[no-any-return]

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._run("a delete", self.commands.delete_many(keys))  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._run("clear", self.commands.clear())

    def key_count(self) -> int:
        return self._run("a key count", self.commands.key_count())  # type: ignore[no-any-return]

    def describe(self) -> StoreState:
        """Entries, epoch, write sequence, and per-tag versions and live marks (one HGETALL
        and a SCAN of the entry keys).

        Added in 0.x.
        """
        meta = self._read_meta()
        return state_of(meta, self.key_count(), self._server_ms())

    def _read_meta(self) -> dict[bytes, bytes]:
        self._sync()
        assert self._client is not None
        with self._errors("a read of the version record"):
            return dict(self._client.hgetall(self.meta_key))  # type: ignore[arg-type]

    def _server_ms(self) -> int:
        assert self._client is not None
        with self._errors("TIME"):
            sec, usec = self._client.time()
        return int(sec) * 1000 + int(usec) // 1000

    def ping(self) -> None:
        self._run("PING", self.commands.ping())

    def close(self) -> None:
        """Close the sync client (asyncio clients close with their event loop, or aclose)."""
        if self._client is not None:
            self._client.close()
            self._client.connection_pool.disconnect()
            self._client = None

    # -- async twins: the same operations, run by the async driver ---------------------------

    async def afetch(
        self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0
    ) -> Fetched:
        return await self._arun("a read", self.commands.fetch(key, lock_token, lock_ttl))  # type: ignore[no-any-return]

    async def aobserve(self) -> Snapshot:
        return await self._arun("a read", self.commands.observe())  # type: ignore[no-any-return]

    async def astore(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None = None,
    ) -> StoreOutcome:
        return await self._arun(  # type: ignore[no-any-return]
            "a write", self.commands.store(key, payload, ttl, tags, epoch, seq, lock_token)
        )

    async def abegin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        await self._arun("begin_write", self.commands.begin_write(tags, writer, lease, bump))

    async def aend_write(self, tags: Sequence[str], writer: str) -> int:
        return await self._arun("an invalidation", self.commands.end_write(tags, writer))  # type: ignore[no-any-return]

    async def arelease(self, tags: Sequence[str], writer: str) -> None:
        await self._arun("a release", self.commands.release(tags, writer))

    async def aacquire(self, name: str, token: str, ttl: float) -> bool:
        return await self._arun("a lock", self.commands.acquire(name, token, ttl))  # type: ignore[no-any-return]

    async def aunlock(self, name: str, token: str) -> None:
        await self._arun("an unlock", self.commands.unlock(name, token))

    async def alocked(self, name: str) -> bool:
        return await self._arun("a lock check", self.commands.locked(name))  # type: ignore[no-any-return]

    async def adelete_many(self, keys: Sequence[str]) -> int:
        return await self._arun("a delete", self.commands.delete_many(keys))  # type: ignore[no-any-return]

    async def aclear(self) -> None:
        await self._arun("clear", self.commands.clear())

    async def akey_count(self) -> int:
        return await self._arun("a key count", self.commands.key_count())  # type: ignore[no-any-return]

    async def aping(self) -> None:
        await self._arun("PING", self.commands.ping())

    async def aclose(self) -> None:
        """Close this event loop's client and the sync client."""
        self.close()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover
            return
        pair = self._aclients.pop(loop, None)
        if pair is not None:
            await pair[1].aclose()  # closes the client and its connection pool
