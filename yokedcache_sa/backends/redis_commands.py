"""The Redis backend's key layout, and each of its operations as a generator of commands.

Key layout (``P`` = key prefix)::

    P:e:<key>      an entry: b"<tag id>\\n<tag id>…\\0<payload>"   (hashed on the whole key)
    P:l:<name>     a compute lock: the holder's token, with a PX expiry
    {P}:meta       hash: epoch, seq, v:<tag id> = version, m:<tag id> = write leases

No I/O here: an operation yields commands (tuples as ``execute_command`` takes them) and
receives their replies; :class:`~.redis.RedisBackend` sends them on its sync or asyncio client.
Each operation that touches versions is one EVALSHA of a script of :mod:`.redis_lua`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Sequence
from typing import Any, Final

from ..tags import Snapshot
from .base import Fetched, StoreOutcome, StoreState
from .redis_lua import SCRIPTS, SHAS

__all__ = ["Command", "Commands", "RedisCommands", "new_epoch", "state_of"]

Command = tuple[Any, ...]
"""A Redis command as ``execute_command`` takes it."""
Commands = Generator[Command, Any, Any]
"""A backend operation: yields commands, receives their (parsed) replies, returns the result."""
_FETCH_SHA: Final = SHAS["fetch"]


def new_epoch() -> str:
    """A random epoch, offered to a script that finds no version record."""
    return os.urandom(8).hex()


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def state_of(meta: dict[bytes, bytes], entries: int, now_ms: int) -> StoreState:
    """The :class:`StoreState` of a version hash read at server time *now_ms*."""
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


class RedisCommands:
    """The commands of one key prefix: each operation of the backend, built once.

    Args:
        prefix: the key prefix.
        no_script: the exception a client raises for NOSCRIPT (redis-py's
            ``NoScriptError``); the script is then loaded and the call sent again.
    """

    def __init__(self, prefix: str, no_script: type[BaseException]) -> None:
        self.prefix = prefix
        self.meta_key = f"{{{prefix}}}:meta"
        self.entry_prefix = f"{prefix}:e:"
        self.no_script = no_script

    def entry_key(self, key: str) -> str:
        """The Redis key of an entry."""
        return self.entry_prefix + key

    def lock_key(self, name: str) -> str:
        """The Redis key of the compute lock *name*."""
        return f"{self.prefix}:l:{name}"

    def eval(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Commands:
        """EVALSHA of the script *name*, loading it once if the server lacks it."""
        return (yield from self.eval_call(name, ("EVALSHA", SHAS[name], len(keys), *keys, *args)))

    def eval_call(self, name: str, call: Command) -> Commands:
        """*call*, an EVALSHA of the script *name*, loading the script once if the server
        lacks it."""
        try:
            return (yield call)
        except self.no_script:
            yield "SCRIPT", "LOAD", SCRIPTS[name]
            return (yield call)

    def scan(self, cursor: int) -> Command:
        """One SCAN page (about 1000 keys) of this prefix's entries."""
        return "SCAN", cursor, "MATCH", _glob_escape(self.entry_prefix) + "*", "COUNT", 1000

    @staticmethod
    def fetched(reply: list[Any]) -> Fetched:
        """Decode the fetch script's reply."""
        payload, ep, seq, top, flag, block, lock = reply
        ep = ep.decode() if isinstance(ep, bytes) else str(ep)
        if flag == 2:
            payload = b"\x00malformed"  # the decoder rejects it and counts an error
        tags = tuple(block.decode().split("\n")) if block else ()
        return Fetched(payload, Snapshot(ep, int(seq), int(top), flag == 1), tags, int(lock))

    @staticmethod
    def observed(reply: list[Any]) -> Snapshot:
        """Decode the observe script's reply."""
        ep, seq = reply
        return Snapshot(ep.decode() if isinstance(ep, bytes) else str(ep), int(seq))

    def store_args(
        self,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None,
    ) -> list[Any]:
        """The store script's arguments (the payload framed with its epoch, seq and tags)."""
        framed = f"{epoch}:{seq}\n".encode() + "\n".join(tags).encode() + b"\x00" + payload
        ttl_ms = max(1, int(ttl * 1000)) if ttl else 0
        return [framed, ttl_ms, epoch, seq, lock_token or "", *tags]

    # -- the operations, one per method of the Backend protocol ------------------------------

    def fetch_call(self, key: str, lock_token: str | None, lock_ttl: float) -> Command:
        """The EVALSHA of the fetch script for *key* (run by :meth:`fetch`, which loads the
        script when the server lacks it; the backend's sync fast path sends it directly)."""
        return (
            "EVALSHA",
            _FETCH_SHA,
            3,
            self.entry_prefix + key,
            self.meta_key,
            f"{self.prefix}:l:{key}",  # lock_key(key)
            new_epoch(),
            lock_token or "",
            max(1, int(lock_ttl * 1000)),
        )

    def fetch(self, key: str, lock_token: str | None, lock_ttl: float) -> Commands:
        call = self.fetch_call(key, lock_token, lock_ttl)
        return self.fetched((yield from self.eval_call("fetch", call)))

    def observe(self) -> Commands:
        return self.observed((yield from self.eval("observe", (self.meta_key,), (new_epoch(),))))

    def store(
        self,
        key: str,
        payload: bytes,
        ttl: float | None,
        tags: Sequence[str],
        epoch: str,
        seq: int,
        lock_token: str | None,
    ) -> Commands:
        keys = (self.entry_prefix + key, self.meta_key, self.lock_key(key))
        args = self.store_args(payload, ttl, tags, epoch, seq, lock_token)
        return StoreOutcome(int((yield from self.eval("store", keys, args))))

    def begin_write(self, tags: Sequence[str], writer: str, lease: float, bump: bool) -> Commands:
        args = (writer, int(lease * 1000), new_epoch(), int(bump), *tags)
        yield from self.eval("begin", (self.meta_key,), args)

    def end_write(self, tags: Sequence[str], writer: str) -> Commands:
        return int((yield from self.eval("end", (self.meta_key,), (writer, new_epoch(), *tags))))

    def release(self, tags: Sequence[str], writer: str) -> Commands:
        yield from self.eval("release", (self.meta_key,), (writer, *tags))

    def acquire(self, name: str, token: str, ttl: float) -> Commands:
        px = max(1, int(ttl * 1000))
        return bool((yield "SET", self.lock_key(name), token, "NX", "PX", px))

    def unlock(self, name: str, token: str) -> Commands:
        yield from self.eval("unlock", (self.lock_key(name),), (token,))

    def locked(self, name: str) -> Commands:
        return bool((yield "EXISTS", self.lock_key(name)))

    def delete_many(self, keys: Sequence[str]) -> Commands:
        if not keys:
            return 0
        return int((yield ("DEL", *[self.entry_prefix + k for k in keys])))

    def clear(self) -> Commands:
        # Dropping the version hash first makes every entry stale at once; the SCAN that
        # follows only frees memory.
        yield "DEL", self.meta_key
        cursor = None
        while cursor != 0:
            cursor, keys = yield self.scan(cursor or 0)
            if keys:
                yield ("UNLINK", *keys)

    def key_count(self) -> Commands:
        count, cursor = 0, None
        while cursor != 0:
            cursor, keys = yield self.scan(cursor or 0)
            count += len(keys)
        return count

    def ping(self) -> Commands:
        yield ("PING",)
