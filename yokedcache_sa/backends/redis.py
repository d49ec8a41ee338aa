"""Redis backend: redis-py sync and asyncio clients from one URL, Lua for every multi-key step.

Key layout (``P`` = key prefix)::

    P:e:<key>      an entry: b"<tag id>\\n<tag id>…\\0<payload>"   (hashed on the whole key)
    {P}:meta       hash: epoch, seq, v:<tag id> = version, m:<tag id> = write leases

All version state lives in ONE hash, so it is lost (evicted, flushed, restarted) all at once
and a lost hash means a new epoch: no entry recorded under the old epoch is ever served again.
Each operation is one EVALSHA (one round trip). See docs/consistency.md for the slot mapping
under Redis Cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections.abc import AsyncGenerator, Generator, Iterator, Sequence
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
from .redis_lua import SCRIPTS as _SCRIPTS
from .redis_lua import SHAS as _SHAS

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

__all__ = ["RedisBackend"]


Command = tuple[Any, ...]
"""A Redis command as ``execute_command`` takes it."""
Commands = Generator[Command, Any, Any]
"""A backend operation: yields commands, receives their (parsed) replies, returns the result."""


def _import_redis() -> Any:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependency(
            "the Redis backend needs redis-py: pip install 'yokedcache_sa[redis]'"
        ) from exc
    return redis


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _new_epoch() -> str:
    return os.urandom(8).hex()


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


def _state_of(meta: dict[bytes, bytes], entries: int, now_ms: int) -> StoreState:
    versions: dict[str, int] = {}
    marks: dict[str, int] = {}
    for raw, value in meta.items():
        name = raw.decode("utf-8", "replace")
        if name.startswith("v:"):
            versions[name[2:]] = int(value)
        elif name.startswith("m:"):
            live = sum(
                1
                for lease in value.decode().split(";")
                if lease and int(lease.rpartition(":")[2] or 0) > now_ms
            )
            if live:
                marks[name[2:]] = live
    epoch = meta.get(b"epoch")
    return StoreState(
        entries,
        epoch.decode() if epoch is not None else None,
        int(meta.get(b"seq", b"0")),
        versions,
        marks,
    )


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
        self.meta_key = f"{{{prefix}}}:meta"
        self._entry_prefix = f"{prefix}:e:"
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
        client = self._sync()
        with self._errors(what):
            return run_steps_sync(commands, lambda cmd: client.execute_command(*cmd))

    async def _arun(self, what: str, commands: Commands) -> Any:
        client = self._async()
        with self._errors(what):
            return await run_steps_async(commands, lambda cmd: client.execute_command(*cmd))

    def _eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Commands:
        """EVALSHA of the script *name*, loading it once if the server lacks it."""
        call = ("EVALSHA", _SHAS[name], len(keys), *keys, *args)
        try:
            return (yield call)
        except self._redis.exceptions.NoScriptError:
            yield "SCRIPT", "LOAD", _SCRIPTS[name]
            return (yield call)

    def _scan(self, cursor: int) -> Command:
        """One SCAN page (about 1000 keys) of this prefix's entries."""
        return "SCAN", cursor, "MATCH", _glob_escape(self._entry_prefix) + "*", "COUNT", 1000

    # -- decoding of script replies (shared by both twins) ----------------------------------

    @staticmethod
    def _fetched(reply: list[Any]) -> Fetched:
        payload, ep, seq, top, flag, block, lock = reply
        ep = ep.decode() if isinstance(ep, bytes) else str(ep)
        if flag == 2:
            payload = b"\x00malformed"  # the decoder rejects it and counts an error
        tags = tuple(block.decode().split("\n")) if block else ()
        return Fetched(payload, Snapshot(ep, int(seq), int(top), flag == 1), tags, int(lock))

    @staticmethod
    def _observed(reply: list[Any]) -> Snapshot:
        ep, seq = reply
        return Snapshot(ep.decode() if isinstance(ep, bytes) else str(ep), int(seq))

    def _store_args(
        self,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None,
    ) -> list[Any]:
        framed = f"{epoch}:{seq}\n".encode() + "\n".join(tags).encode() + b"\x00" + payload
        ttl_ms = max(1, int(ttl * 1000)) if ttl else 0
        return [framed, ttl_ms, epoch, seq, lock_token or "", *tags]

    def entry_key(self, key: str) -> str:
        """The Redis key of an entry."""
        return self._entry_prefix + key

    def _lock_key(self, name: str) -> str:
        return f"{self.prefix}:l:{name}"

    # -- operations: each built once as commands, run by either driver -----------------------

    def _fetch(self, key: str, lock_token: str | None, lock_ttl: float) -> Commands:
        keys = (self._entry_prefix + key, self.meta_key, self._lock_key(key))
        args = (_new_epoch(), lock_token or "", max(1, int(lock_ttl * 1000)))
        return self._fetched((yield from self._eval("fetch", keys, args)))

    def _observe(self) -> Commands:
        return self._observed((yield from self._eval("observe", (self.meta_key,), (_new_epoch(),))))

    def _store(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None,
    ) -> Commands:
        keys = (self._entry_prefix + key, self.meta_key, self._lock_key(key))
        args = self._store_args(payload, ttl, tags, epoch, seq, lock_token)
        return StoreOutcome(int((yield from self._eval("store", keys, args))))

    def _begin_write(self, tags: Sequence[str], writer: str, lease: float, bump: bool) -> Commands:
        args = (writer, int(lease * 1000), _new_epoch(), int(bump), *tags)
        yield from self._eval("begin", (self.meta_key,), args)

    def _end_write(self, tags: Sequence[str], writer: str) -> Commands:
        return int((yield from self._eval("end", (self.meta_key,), (writer, _new_epoch(), *tags))))

    def _release(self, tags: Sequence[str], writer: str) -> Commands:
        yield from self._eval("release", (self.meta_key,), (writer, *tags))

    def _acquire(self, name: str, token: str, ttl: float) -> Commands:
        px = max(1, int(ttl * 1000))
        return bool((yield "SET", self._lock_key(name), token, "NX", "PX", px))

    def _unlock(self, name: str, token: str) -> Commands:
        yield from self._eval("unlock", (self._lock_key(name),), (token,))

    def _locked(self, name: str) -> Commands:
        return bool((yield "EXISTS", self._lock_key(name)))

    def _delete_many(self, keys: Sequence[str]) -> Commands:
        if not keys:
            return 0
        return int((yield ("DEL", *[self._entry_prefix + k for k in keys])))

    def _clear(self) -> Commands:
        # Dropping the version hash first makes every entry stale at once; the SCAN that
        # follows only frees memory.
        yield "DEL", self.meta_key
        cursor = None
        while cursor != 0:
            cursor, keys = yield self._scan(cursor or 0)
            if keys:
                yield ("UNLINK", *keys)

    def _key_count(self) -> Commands:
        count, cursor = 0, None
        while cursor != 0:
            cursor, keys = yield self._scan(cursor or 0)
            count += len(keys)
        return count

    def _ping(self) -> Commands:
        yield ("PING",)

    # -- sync API --------------------------------------------------------------------------

    def fetch(self, key: str, lock_token: str | None = None, lock_ttl: float = 0.0) -> Fetched:
        return self._run("a read", self._fetch(key, lock_token, lock_ttl))  # type: ignore[no-any-return]

    def observe(self) -> Snapshot:
        return self._run("a read", self._observe())  # type: ignore[no-any-return]

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
        return self._run("a write", self._store(key, payload, ttl, tags, epoch, seq, lock_token))  # type: ignore[no-any-return]

    def begin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        self._run("begin_write", self._begin_write(tags, writer, lease, bump))

    def end_write(self, tags: Sequence[str], writer: str) -> int:
        return self._run("an invalidation", self._end_write(tags, writer))  # type: ignore[no-any-return]

    def release(self, tags: Sequence[str], writer: str) -> None:
        self._run("a release", self._release(tags, writer))

    def acquire(self, name: str, token: str, ttl: float) -> bool:
        return self._run("a lock", self._acquire(name, token, ttl))  # type: ignore[no-any-return]

    def unlock(self, name: str, token: str) -> None:
        self._run("an unlock", self._unlock(name, token))

    def locked(self, name: str) -> bool:
        return self._run("a lock check", self._locked(name))  # type: ignore[no-any-return]

    def delete_many(self, keys: Sequence[str]) -> int:
        return self._run("a delete", self._delete_many(keys))  # type: ignore[no-any-return]

    def clear(self) -> None:
        self._run("clear", self._clear())

    def key_count(self) -> int:
        return self._run("a key count", self._key_count())  # type: ignore[no-any-return]

    def describe(self) -> StoreState:
        """Entries, epoch, write sequence, and per-tag versions and live marks (one HGETALL
        and a SCAN of the entry keys).

        Added in 0.x.
        """
        meta = self._read_meta()
        return _state_of(meta, self.key_count(), self._server_ms())

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
        self._run("PING", self._ping())

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
        return await self._arun("a read", self._fetch(key, lock_token, lock_ttl))  # type: ignore[no-any-return]

    async def aobserve(self) -> Snapshot:
        return await self._arun("a read", self._observe())  # type: ignore[no-any-return]

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
            "a write", self._store(key, payload, ttl, tags, epoch, seq, lock_token)
        )

    async def abegin_write(
        self, tags: Sequence[str], writer: str, lease: float, bump: bool = False
    ) -> None:
        await self._arun("begin_write", self._begin_write(tags, writer, lease, bump))

    async def aend_write(self, tags: Sequence[str], writer: str) -> int:
        return await self._arun("an invalidation", self._end_write(tags, writer))  # type: ignore[no-any-return]

    async def arelease(self, tags: Sequence[str], writer: str) -> None:
        await self._arun("a release", self._release(tags, writer))

    async def aacquire(self, name: str, token: str, ttl: float) -> bool:
        return await self._arun("a lock", self._acquire(name, token, ttl))  # type: ignore[no-any-return]

    async def aunlock(self, name: str, token: str) -> None:
        await self._arun("an unlock", self._unlock(name, token))

    async def alocked(self, name: str) -> bool:
        return await self._arun("a lock check", self._locked(name))  # type: ignore[no-any-return]

    async def adelete_many(self, keys: Sequence[str]) -> int:
        return await self._arun("a delete", self._delete_many(keys))  # type: ignore[no-any-return]

    async def aclear(self) -> None:
        await self._arun("clear", self._clear())

    async def akey_count(self) -> int:
        return await self._arun("a key count", self._key_count())  # type: ignore[no-any-return]

    async def aping(self) -> None:
        await self._arun("PING", self._ping())

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
