"""FastAPI integration: ``cached_dependency`` and the ``cache_router`` admin surface.

Needs the ``fastapi`` extra: ``pip install 'yokedcache_sa[fastapi]'``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, Final

from ..cache import DEFAULT_TTL, TTL, YokedCache, get_default_cache
from ..cli import process_info
from ..errors import MissingDependency
from ..orm.session import instrument_session

try:
    from fastapi import APIRouter, Body, Depends
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        "the FastAPI integration needs FastAPI: pip install 'yokedcache_sa[fastapi]'"
    ) from exc

__all__ = ["RequestSession", "cache_router", "cached_dependency"]

_PER_PROCESS = (
    "hits",
    "misses",
    "hit_rate",
    "sets",
    "invalidations",
    "errors",
    "pending_invalidations",
    "healthy",
    "table_hits",
    "table_invalidations",
)


def _session_of(db: Any) -> Any:
    return getattr(db, "sync_session", db)  # AsyncSession (or RequestSession) -> its Session


class _Done:
    """An already-finished awaitable: what ``RequestSession.commit()`` returns."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield  # pragma: no cover - makes this a generator

    def __repr__(self) -> str:
        return "<committed>"


DONE: Final = _Done()


class RequestSession:
    """The sync session :func:`cached_dependency` yields: your Session, except that
    ``commit()`` also returns an already-finished awaitable.

    So ``await db.commit()`` works in ``async def`` routes on a sync session (the commit
    has happened when ``commit()`` returns; awaiting the result does nothing). Every other
    attribute is the session's own; ``sync_session`` is the session itself (as on
    ``AsyncSession``).

    Added in 0.2.
    """

    __slots__ = ("sync_session",)

    def __init__(self, session: Any) -> None:
        object.__setattr__(self, "sync_session", session)

    def commit(self) -> _Done:
        """Commit the session; the result may be awaited (it is already done)."""
        self.sync_session.commit()
        return DONE

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sync_session, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.sync_session, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self.sync_session, name)

    def __contains__(self, instance: object) -> bool:
        return instance in self.sync_session

    def __iter__(self) -> Iterator[Any]:
        return iter(self.sync_session)

    def __enter__(self) -> RequestSession:
        self.sync_session.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sync_session.__exit__(*exc)

    def __repr__(self) -> str:
        return f"<RequestSession of {self.sync_session!r}>"


def cached_dependency(
    get_db: Callable[..., Any],
    *,
    cache: YokedCache | None = None,
    ttl: TTL = DEFAULT_TTL,
    table_name: str | None = None,
    tags: Iterable[str] = (),
) -> Callable[..., Any]:
    """Wrap a session dependency so the session it yields caches reads and invalidates writes.

    Args:
        get_db: your dependency (sync or async generator, or function) yielding a
            ``Session``, ``CachingSession`` or ``AsyncSession``. Its cleanup always runs.
        cache: the cache; resolved per request through ``Depends(cache)``, so
            ``app.dependency_overrides[cache] = lambda: other`` swaps it (and from then on
            direct calls on *cache* reach *other* as well). Omitted: the default cache.
        ttl: TTL of entries stored through this session.
        table_name: adds the tag ``table:<table_name>`` to every entry of the session.
        tags: more tags for every entry.

    A sync session is yielded as a :class:`RequestSession` (``await db.commit()`` then
    works in async routes); an ``AsyncSession`` as itself.

    Example::

        cached_get_db = cached_dependency(get_db, cache=cache, ttl=300, table_name="users")

        @app.get("/users/{user_id}")
        def get_user(user_id: int, db: Session = Depends(cached_get_db)): ...
    """
    extra = tuple(tags)
    cache_dep: Callable[[], YokedCache] = cache if cache is not None else get_default_cache

    async def dependency(
        db: Any = Depends(get_db), resolved: YokedCache = Depends(cache_dep)
    ) -> Any:
        if cache is not None:
            cache.redirect_to(None if resolved is cache else resolved)
        session = _session_of(db)
        instrument_session(session, resolved, default_ttl=ttl, table_name=table_name, tags=extra)
        return db if session is not db else RequestSession(db)

    dependency.__name__ = f"cached_{getattr(get_db, '__name__', 'db')}"
    return dependency


def cache_router(cache: YokedCache | None = None, *, prefix: str = "/cache") -> APIRouter:
    """An APIRouter with cache stats, health and invalidation endpoints.

    This is an admin surface: protect it (``dependencies=[Depends(require_admin)]`` when you
    include it) — anyone who can call it can empty your cache.

    ``/stats`` says which process answered (``process``: pid, hostname) and which figures
    are that process's own (``per_process``) or the store's (``global``): behind several
    workers, each request may reach another worker.

    Endpoints: ``GET {prefix}/stats``, ``GET {prefix}/health``,
    ``POST {prefix}/invalidate/tags`` (JSON list of tags),
    ``POST {prefix}/invalidate/tables`` (JSON list of table names).
    """
    router = APIRouter(prefix=prefix, tags=["cache"])
    cache_dep: Callable[[], YokedCache] = cache if cache is not None else get_default_cache

    @router.get("/stats")
    async def stats(c: YokedCache = Depends(cache_dep)) -> dict[str, Any]:
        s = await c.get_stats()
        shared_store = c.backend.name != "memory"
        return {
            # which worker answered: every figure but "keys" (and, with Redis, nothing
            # else) is this process's own
            "process": process_info(),
            "per_process": [*_PER_PROCESS, *(() if shared_store else ("keys",))],
            "global": ["keys"] if shared_store else [],
            "hits": s.hits,
            "misses": s.misses,
            "hit_rate": s.hit_rate,
            "keys": s.key_count,
            "sets": s.sets,
            "invalidations": s.invalidations,
            "errors": s.errors,
            "pending_invalidations": s.pending_invalidations,
            "backend": s.backend,
            "healthy": s.healthy,
            "table_hits": s.table_hits,
            "table_invalidations": s.table_invalidations,
        }

    @router.get("/health")
    async def health(c: YokedCache = Depends(cache_dep)) -> dict[str, bool]:
        return {"healthy": await c.health()}

    @router.post("/invalidate/tags")
    async def invalidate_tags(
        tags: list[str] = Body(..., max_length=1000), c: YokedCache = Depends(cache_dep)
    ) -> dict[str, Any]:
        await c.invalidate_tags(tags)
        return {"ok": True, "invalidated": tags}

    @router.post("/invalidate/tables")
    async def invalidate_tables(
        tables: list[str] = Body(..., max_length=1000), c: YokedCache = Depends(cache_dep)
    ) -> dict[str, Any]:
        await c.invalidate_tables(tables)
        return {"ok": True, "invalidated": tables}

    return router
