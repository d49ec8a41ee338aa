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
import hashlib
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
from .base import Fetched, StoreOutcome

if TYPE_CHECKING:
    import redis as redis_sync
    import redis.asyncio as redis_async

__all__ = ["RedisBackend"]

_LUA_HELPERS = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(m, now)
  for e in string.gmatch(m, ':(%d+);') do
    if tonumber(e) > now then return true end
  end
  return false
end
local function others(m, w, now)
  local out = {}
  for wid, e in string.gmatch(m or '', '([^:;]+):(%d+);') do
    if wid ~= w and tonumber(e) > now then out[#out + 1] = wid .. ':' .. e .. ';' end
  end
  return out
end
local function drop_writer(meta, field, w, now)
  local m = redis.call('HGET', meta, field)
  if not m then return end
  local out = others(m, w, now)
  if #out == 0 then redis.call('HDEL', meta, field)
  else redis.call('HSET', meta, field, table.concat(out)) end
end
local function epoch(meta, candidate)
  local ep = redis.call('HGET', meta, 'epoch')
  if not ep then
    redis.call('HSET', meta, 'epoch', candidate)
    ep = candidate
  end
  return ep
end
"""

# KEYS: entry, meta. ARGV: epoch candidate.
# -> {payload|nil, epoch, seq, max version of the entry's tags, flag (1 marked, 2 malformed)}
# KEYS: entry, meta, lock. ARGV: epoch candidate, lock token ('' = none), lock ttl ms.
# -> {payload|nil, epoch, seq, max version of the entry's tags, flag (1 marked, 2 malformed),
#     tag block, lock (1 taken, -1 held by another, 0 not asked or the entry is fresh)}
# The entry's framing is "<epoch>:<seq>\n<tag id>\n...\0<payload>"; epoch and seq repeat the
# signed header's, so the script can tell a fresh entry and only then skip the compute lock.
_FETCH = (
    _LUA_HELPERS
    + """
local meta = KEYS[2]
local v = redis.call('GET', KEYS[1])
local h = redis.call('HMGET', meta, 'epoch', 'seq')
local ep = h[1]
if not ep then
  redis.call('HSET', meta, 'epoch', ARGV[1])
  ep = ARGV[1]
end
local seq = tonumber(h[2] or '0')
local top, flag, block, body, fresh = 0, 0, '', false, false
if v then
  local i = string.find(v, '\\0', 1, true)
  local nl = i and string.find(v, '\\n', 1, true)
  local e_ep, e_seq = nil, nil
  if i and (not nl or nl > i) then nl = i end
  if i then e_ep, e_seq = string.match(string.sub(v, 1, nl - 1), '^(.*):(%d+)$') end
  if not e_ep then
    flag = 2
  else
    block = string.sub(v, nl + 1, i - 1)
    body = string.sub(v, i + 1)
    local fields = {}
    for tag in string.gmatch(block, '[^\\n]+') do
      fields[#fields + 1] = 'v:' .. tag
      fields[#fields + 1] = 'm:' .. tag
    end
    if #fields > 0 then
      local r = redis.call('HMGET', meta, unpack(fields))
      local now = nil
      for j = 1, #fields, 2 do
        local tv = tonumber(r[j] or '0')
        if tv > top then top = tv end
        if flag == 0 and r[j + 1] then
          now = now or now_ms()
          if live(r[j + 1], now) then flag = 1 end
        end
      end
    end
    fresh = flag == 0 and e_ep == ep and top <= tonumber(e_seq)
  end
end
local lock = 0
if ARGV[2] ~= '' and not fresh then
  if redis.call('SET', KEYS[3], ARGV[2], 'NX', 'PX', ARGV[3]) then lock = 1 else lock = -1 end
end
if flag == 2 then body = false end
return {body, ep, seq, top, flag, block, lock}
"""
)

# KEYS: meta. ARGV: epoch candidate. -> {epoch, seq}
_OBSERVE = (
    _LUA_HELPERS
    + """
local ep = epoch(KEYS[1], ARGV[1])
return {ep, tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')}
"""
)

# KEYS: entry, meta, lock. ARGV: framed value, ttl ms (0 = none), epoch, seq, lock token,
# tag ids... -> 1 stored, 0 stale, -1 being written. Drops the compute lock if it holds it.
_STORE = (
    _LUA_HELPERS
    + """
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
if redis.call('HGET', KEYS[2], 'epoch') ~= ARGV[3] then return 0 end
local s = tonumber(ARGV[4])
local now = now_ms()
for i = 6, #ARGV do
  local r = redis.call('HMGET', KEYS[2], 'v:' .. ARGV[i], 'm:' .. ARGV[i])
  if tonumber(r[1] or '0') > s then return 0 end
  if r[2] and live(r[2], now) then return -1 end
end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
else redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""
)

# KEYS: meta. ARGV: writer, lease ms, epoch candidate, bump (0/1), tag ids...
_BEGIN = (
    _LUA_HELPERS
    + """
local meta = KEYS[1]
epoch(meta, ARGV[3])
local now = now_ms()
local w = ARGV[1]
local mark = w .. ':' .. string.format('%d', now + tonumber(ARGV[2])) .. ';'
if ARGV[4] == '1' then
  local seq = redis.call('HINCRBY', meta, 'seq', 1)
  for i = 5, #ARGV do redis.call('HSET', meta, 'v:' .. ARGV[i], seq) end
end
for i = 5, #ARGV do
  local f = 'm:' .. ARGV[i]
  local out = others(redis.call('HGET', meta, f), w, now)
  out[#out + 1] = mark
  redis.call('HSET', meta, f, table.concat(out))
end
return 1
"""
)

# KEYS: meta. ARGV: writer, epoch candidate, tag ids... -> new seq
_END = (
    _LUA_HELPERS
    + """
local meta = KEYS[1]
epoch(meta, ARGV[2])
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local now = now_ms()
for i = 3, #ARGV do
  redis.call('HSET', meta, 'v:' .. ARGV[i], seq)
  drop_writer(meta, 'm:' .. ARGV[i], ARGV[1], now)
end
return seq
"""
)

# KEYS: meta. ARGV: writer, tag ids...
_RELEASE = (
    _LUA_HELPERS
    + """
local now = now_ms()
for i = 2, #ARGV do drop_writer(KEYS[1], 'm:' .. ARGV[i], ARGV[1], now) end
return 1
"""
)

# KEYS: lock. ARGV: token. Delete the lock only if this token holds it.
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_SCRIPTS = {
    "unlock": _UNLOCK,
    "fetch": _FETCH,
    "observe": _OBSERVE,
    "store": _STORE,
    "begin": _BEGIN,
    "end": _END,
    "release": _RELEASE,
}


_SHAS = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in _SCRIPTS.items()}

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
