"""``@cached``: cache a function's result, invalidated by the tables its SQL read.

Every table read by SQL that runs while the function computes — through any session or
connection of a watched engine — becomes a ``table:<name>`` tag of the result, so a committed
write to those tables (through a caching session) invalidates it even if the decorator only
named other tags. Concurrent callers that miss the same key wait for one computation.

Engines are watched on first sight, as by caching sessions: before each computation, those of
the sessions, engines, connections and session factories among the arguments and among the
names the function's code reads (its closure, its module's globals, and attributes of modules
it names). An engine reached otherwise (through a helper function's globals) is seen once a
caching session or :func:`~yokedcache_sa.orm.watch_engine` has seen it.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import types
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar, cast, overload

from . import codec, stampede
from .cache import DEFAULT_TTL, MISSING, TTL, Lookup, YokedCache, get_default_cache
from .errors import SerializationError
from .orm.session import Collector, current_collector, reading_collector, state_of
from .orm.watch import watch_engine
from .steps import run_steps_async, run_steps_sync

__all__ = ["cached"]

log = logging.getLogger("yokedcache_sa")

P = ParamSpec("P")
R = TypeVar("R")

_EXCLUDED_MODULES = ("sqlalchemy.", "starlette.", "fastapi.", "yokedcache_sa.")


def _excluded(value: object) -> bool:
    mod = type(value).__module__ or ""
    return mod.startswith(_EXCLUDED_MODULES) or isinstance(value, YokedCache)


def _cache_from_args(args: Iterable[Any]) -> YokedCache | None:
    from sqlalchemy.orm import Session

    for a in args:
        sess = getattr(a, "sync_session", a)
        if isinstance(sess, Session):
            st = state_of(sess)
            if st is not None:
                return st.cache
    return None


def _watch_binds_of(args: Iterable[Any]) -> None:
    """Watch the engines of the sessions, engines and connections among *args*."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.orm import Session

    for a in args:
        for attr in ("sync_session", "sync_engine", "sync_connection"):
            a = getattr(a, attr, None) or a
        if isinstance(a, Session):
            a = a.bind
        if isinstance(a, Engine | Connection):
            watch_engine(a)


def _named_by(fn: Callable[..., Any]) -> Iterator[Any]:
    """What *fn*'s code can reach by name: its closure cells, the module globals it reads,
    and the attributes it reads of modules among them (``db.engine``). Plain lookups only:
    nothing is called, no attribute hook runs."""
    f = inspect.unwrap(fn)
    code = getattr(f, "__code__", None)
    if code is None:
        return
    for cell in getattr(f, "__closure__", None) or ():
        try:
            yield cell.cell_contents
        except ValueError:  # a cell not filled yet
            continue
    names = code.co_names  # globals and attribute names alike
    g: dict[str, Any] = getattr(f, "__globals__", {})
    for name in names:
        if name in g:
            value = g[name]
            yield value
            if isinstance(value, types.ModuleType):
                attrs = vars(value)
                yield from (attrs[n] for n in names if n in attrs)


def _watch_binds_named_by(fn: Callable[..., Any]) -> None:
    """Watch the engines of the engines, connections, sessions and session factories (plain,
    async, scoped) *fn*'s code names (see :func:`_named_by`)."""
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.ext.asyncio import (
        AsyncConnection,
        AsyncEngine,
        AsyncSession,
        async_scoped_session,
        async_sessionmaker,
    )
    from sqlalchemy.orm import Session, scoped_session, sessionmaker

    for value in _named_by(fn):
        if isinstance(value, scoped_session | async_scoped_session):
            value = value.session_factory
        if isinstance(value, sessionmaker | async_sessionmaker):
            value = value.kw.get("bind")
        elif isinstance(value, Session | AsyncSession):
            value = value.bind
        if isinstance(value, Engine | Connection | AsyncEngine | AsyncConnection):
            watch_engine(value)


Step = tuple[Any, ...]


class _Cached:
    """The policy of one decorated function (shared by its sync and async wrappers)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        ttl: TTL,
        tags: tuple[str, ...],
        cache: YokedCache | None,
        key: Callable[..., str] | None,
    ) -> None:
        self.fn = fn
        self.ttl = ttl
        self.tags = tags
        self.cache = cache
        self.key_fn = key
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.sig = inspect.signature(fn)

    def resolve(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> YokedCache:
        if self.cache is not None:
            return self.cache.resolved()
        return _cache_from_args((*args, *kwargs.values())) or get_default_cache()

    def make_key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if self.key_fn is not None:
            raw = f"{self.name}|{self.key_fn(*args, **kwargs)}".encode()
        else:
            try:
                bound = self.sig.bind(*args, **kwargs)
            except TypeError:
                return None  # let the call raise its own TypeError
            bound.apply_defaults()
            parts = {n: v for n, v in bound.arguments.items() if not _excluded(v)}
            try:
                raw = codec.pack_key([self.name, parts])
            except SerializationError as exc:
                log.debug("yokedcache: %s called with uncacheable arguments: %s", self.name, exc)
                return None
        return "f:" + hashlib.blake2b(raw, digest_size=20).hexdigest()

    def storable(self, col: Collector, look: Lookup) -> set[str] | None:
        """The tags to store the result under, or None when it must not be stored."""
        if look.snapshot is None:
            return None  # the cache was not consulted
        if col.unknown:
            log.debug("yokedcache: %s result not stored: %s", self.name, col.unknown)
            return None
        return set(self.tags) | col.tables

    def store_args(self, tags: set[str], look: Lookup) -> dict[str, Any]:
        assert look.snapshot is not None
        return {"tags": tags, "snapshot": look.snapshot, "ttl": self.ttl, "lock": look.lock}

    def report_unstorable(self, exc: SerializationError) -> None:
        log.error(
            "yokedcache: @cached %s returned a value that cannot be cached (%s); "
            "it is returned uncached",
            self.name,
            exc,
        )

    # one flow for sync and async callers ---------------------------------------------------
    #
    # Steps: ("call",) runs the function; ("lookup", cache, key) looks up with the compute
    # lock; ("flight", cache, key, look) coordinates concurrent misses (stampede.py), whose
    # compute runs _compute_flow; ("store", cache, key, value, kwargs) stores the result.

    def call_flow(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Generator[Step, Any, Any]:
        """One call of the decorated function: a hit, or a computation stored."""
        k = self.make_key(args, kwargs)
        if k is None:
            return (yield ("call",))
        cache = self.resolve(args, kwargs)
        look = yield "lookup", cache, k
        if look.value is not MISSING:
            return self._hit(look)
        return (yield "flight", cache, k, look)

    def compute_flow(
        self, cache: YokedCache, k: str, look: Lookup, args: Iterable[Any] = ()
    ) -> Generator[Step, Any, Any]:
        """Run the function, collecting the tables its SQL reads, and store its result."""
        # before the function opens connections of them: SQL on an engine that is not
        # watched is not seen
        _watch_binds_of(args)
        _watch_binds_named_by(self.fn)
        with reading_collector(strict_snapshot=True) as col:
            value = yield ("call",)
        tags = self.storable(col, look)
        if tags is not None:
            try:
                yield "store", cache, k, value, self.store_args(tags, look)
            except SerializationError as exc:
                self.report_unstorable(exc)
        return value

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call from sync code."""
        return run_steps_sync(self.call_flow(args, kwargs), _SyncCall(self, args, kwargs))

    async def acall(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call from a coroutine."""
        return await run_steps_async(self.call_flow(args, kwargs), _AsyncCall(self, args, kwargs))

    @staticmethod
    def _hit(look: Lookup) -> Any:
        # A cached function called while another computes: the outer result depends on
        # whatever this one read.
        outer = current_collector()
        if outer is not None:
            outer.add(t for t in look.tags if t.startswith("table:"))
        return look.value


class _SyncCall:
    """Performs the steps of one sync call."""

    def __init__(self, policy: _Cached, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.policy, self.args, self.kwargs = policy, args, kwargs

    def all_args(self) -> tuple[Any, ...]:
        return (*self.args, *self.kwargs.values())

    def __call__(self, step: Step) -> Any:
        kind = step[0]
        if kind == "call":
            return self.policy.fn(*self.args, **self.kwargs)
        if kind == "lookup":
            return step[1].lookup_sync(step[2], lock=True)
        if kind == "store":
            return step[1].store_sync(step[2], step[3], **step[4])
        cache: YokedCache = step[1]
        k: str = step[2]
        look: Lookup = step[3]
        return stampede.run_sync(
            cache,
            k,
            relookup=lambda: cache.lookup_sync(k),
            compute=lambda lk: run_steps_sync(
                self.policy.compute_flow(cache, k, lk, self.all_args()), self
            ),
            on_hit=self.policy._hit,
            first=look,
        )


class _AsyncCall(_SyncCall):
    """Performs the steps of one coroutine call."""

    async def __call__(self, step: Step) -> Any:
        kind = step[0]
        if kind == "call":
            return await self.policy.fn(*self.args, **self.kwargs)
        if kind == "lookup":
            return await step[1].lookup(step[2], lock=True)
        if kind == "store":
            return await step[1].store(step[2], step[3], **step[4])
        cache: YokedCache = step[1]
        k: str = step[2]
        look: Lookup = step[3]

        async def relookup() -> Lookup:
            return await cache.lookup(k)

        async def compute(lk: Lookup) -> Any:
            return await run_steps_async(
                self.policy.compute_flow(cache, k, lk, self.all_args()), self
            )

        return await stampede.run_async(
            cache, k, relookup=relookup, compute=compute, on_hit=self.policy._hit, first=look
        )


@overload
def cached(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def cached(
    *,
    ttl: TTL = ...,
    tags: Iterable[str] = ...,
    cache: YokedCache | None = ...,
    key: Callable[..., str] | None = ...,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def cached(
    fn: Callable[P, R] | None = None,
    /,
    *,
    ttl: TTL = DEFAULT_TTL,
    tags: Iterable[str] = (),
    cache: YokedCache | None = None,
    key: Callable[..., str] | None = None,
) -> Any:
    """Cache a sync or async function's result.

    Args:
        ttl: seconds; None for no expiry; omitted for the cache's ``default_ttl``.
        tags: tags of every result (``cache.invalidate_tags([...])`` drops them). The tables
            read by SQL during the call are added automatically as ``table:<name>``.
        cache: the cache to use. Omitted: the cache of a caching session passed as an
            argument, else :func:`~yokedcache_sa.get_default_cache` (the one set with
            ``set_default_cache``, else the most recently connected, else created, cache).
        key: ``key(*args, **kwargs) -> str`` to build the key yourself. By default the key
            is built from the arguments, leaving out sessions, connections, engines, requests
            and caches.

    ``None`` results are cached (distinct from a miss). A result that cannot be serialized is
    returned uncached and logged. A result whose SQL used raw text or a snapshot transaction
    begun before the call is returned uncached (its freshness cannot be proven).

    Example::

        @cached(ttl=600, tags=["analytics"])
        async def compute_user_stats(db: Session) -> dict[str, int]:
            return {"total": db.query(User).count()}
    """

    def decorate(f: Callable[P, R]) -> Callable[P, R]:
        policy = _Cached(f, ttl, tuple(tags), cache, key)
        if inspect.iscoroutinefunction(f):

            @functools.wraps(f)
            async def awrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                return await policy.acall(args, kwargs)

            awrapper.cache_policy = policy  # type: ignore[attr-defined]
            return cast(Callable[P, R], awrapper)

        @functools.wraps(f)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            return policy.call(args, kwargs)

        wrapper.cache_policy = policy  # type: ignore[attr-defined]
        return cast(Callable[P, R], wrapper)

    if fn is not None:
        return decorate(fn)
    return decorate
