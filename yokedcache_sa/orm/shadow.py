"""Sampled shadow reads: re-run a sampled ORM hit against the database and compare.

With ``CacheConfig(shadow_read_rate=r)`` (env ``YOKEDCACHE_SHADOW_READ_RATE``), a fraction
*r* of ORM cache hits is queued here after being served. One background thread per process
runs each queued statement in a fresh plain :class:`~sqlalchemy.orm.Session` on the same
engine (its own pooled connection; never the user's transaction), freezes the rows as the
store path does, and compares them with what the cache served.

A mismatch counts only when it cannot be a legitimate change: after the database read the
entry is looked at again (without counting a lookup) and must still be fresh with its tags'
versions exactly as they were at the hit — a commit in between moves them (or marks them
being written), and the read is then ``skipped``. Hits inside snapshot-isolated
transactions, or transactions that have written, are never sampled.

For an async engine (``AsyncSession``) the thread runs its own event loop and opens one
unpooled connection on the same URL per shadow read (the application's pooled connections
belong to its loop; engine-level ``connect_args`` are not copied).

Rows are compared as plain data: column values of the rows and of the entities in them,
and the identities of their loaded relationships (in order when the statement has an
ORDER BY, as a multiset otherwise). The columns of related objects that are not rows
themselves are not compared.

A full queue drops the sample (``skipped``): shadow reads never build up behind a slow
database.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .. import codec
from ..cache import YokedCache
from ..errors import SerializationError
from ..logs import key_digest
from ..observe import ShadowRead, tables_in
from ..peek import peek_sync
from ..tags import Snapshot
from . import _compat
from .results import NotCacheable, rows_to_entry

__all__ = ["ShadowJob", "sample", "wait_idle"]

log = logging.getLogger("yokedcache_sa")

QUEUE_SIZE: Final = 64
_random = random.random


@dataclass(frozen=True)
class ShadowJob:
    """One sampled hit: what was served, and how to ask the database the same question."""

    cache: YokedCache
    engine: Engine
    key: str
    statement: Any
    parameters: Any
    execution_options: dict[str, Any]
    served: Any
    tags: tuple[str, ...]
    versions: Snapshot
    ordered: bool


def sample(rate: float) -> bool:
    """Whether this hit is sampled (*rate* > 0)."""
    return _random() < rate


def submit(job: ShadowJob) -> None:
    """Queue *job* for the background thread (dropped, as ``skipped``, when it is full)."""
    worker = _worker()
    try:
        worker.put_nowait(job)
    except queue.Full:
        _report(job, "skipped")


def wait_idle(timeout: float = 10.0) -> bool:
    """Wait until every queued shadow read is done; False on timeout (for tests)."""
    w = _the_worker
    if w is None:
        return True
    return w.idle(timeout)


class _Worker:
    def __init__(self) -> None:
        self.jobs: queue.Queue[ShadowJob] = queue.Queue(QUEUE_SIZE)
        self._pending = 0
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="yokedcache-shadow", daemon=True)
        self.thread.start()

    def put_nowait(self, job: ShadowJob) -> None:
        with self._cond:
            self.jobs.put_nowait(job)
            self._pending += 1

    def idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                run(job)
            except Exception:  # pragma: no cover - run() reports its own failures
                log.exception("yokedcache: shadow read failed")
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()


_the_worker: _Worker | None = None
_worker_lock = threading.Lock()


def _worker() -> _Worker:
    global _the_worker
    w = _the_worker
    if w is None or not w.thread.is_alive():  # e.g. in a forked child
        with _worker_lock:
            w = _the_worker
            if w is None or not w.thread.is_alive():
                w = _the_worker = _Worker()
    return w


def _rows(job: ShadowJob) -> Any:
    with Session(bind=job.engine, autoflush=False, expire_on_commit=False) as session:
        result = session.execute(
            job.statement, job.parameters or None, execution_options=job.execution_options
        )
        frozen = result.freeze()
        return rows_to_entry(frozen.data, _compat.supports_scalars(frozen))[0]


# An engine of an async driver (asyncpg, aiosqlite …) cannot run in this thread: its pooled
# connections belong to the application's event loop. The thread runs a loop of its own and
# opens one unpooled connection on the same URL per shadow read (closed after it).
_local = threading.local()


def _rows_async(job: ShadowJob) -> Any:
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
    from sqlalchemy.pool import NullPool

    loop = getattr(_local, "loop", None)
    if loop is None:
        loop = _local.loop = asyncio.new_event_loop()

    async def rows() -> Any:
        aengine = create_async_engine(job.engine.url, poolclass=NullPool)
        try:
            async with AsyncSession(aengine, autoflush=False, expire_on_commit=False) as s:
                result = await s.execute(
                    job.statement, job.parameters or None, execution_options=job.execution_options
                )
                frozen = result.freeze()
                return rows_to_entry(frozen.data, _compat.supports_scalars(frozen))[0]
        finally:
            await aengine.dispose()

    return loop.run_until_complete(rows())


def run(job: ShadowJob) -> str:
    """Run one shadow read now (in the calling thread, which must not be running an event
    loop when the engine's driver is async); return its outcome."""
    try:
        payload = _rows_async(job) if job.engine.dialect.is_async else _rows(job)
    except NotCacheable:
        return _report(job, "skipped")
    except Exception as exc:
        log.debug("yokedcache: shadow read of key=%s failed: %s", key_digest(job.key), exc)
        return _report(job, "error")
    try:
        same = canonical(payload, job.ordered) == canonical(job.served, job.ordered)
    except (SerializationError, TypeError, ValueError, IndexError, KeyError):
        return _report(job, "error")
    if same:
        return _report(job, "match")
    now = peek_sync(job.cache, job.key)
    v = now.versions
    if not (now.fresh and v is not None and now.tags == job.tags and v.same_versions(job.versions)):
        return _report(job, "skipped")  # a write moved the versions meanwhile: no verdict
    log.warning(
        "yokedcache: shadow read mismatch key=%s tables=%s: the cache served rows the "
        "database does not return, while the tables' versions did not move (an outside "
        "write, or a bug worth reporting with this line)",
        key_digest(job.key),
        ",".join(tables_in(job.tags)) or "-",
    )
    return _report(job, "mismatch")


def _report(job: ShadowJob, outcome: Any) -> str:
    hooks = job.cache.hooks
    if hooks.active:
        hooks.emit(ShadowRead(key_digest(job.key), tables_in(job.tags), outcome))
    return str(outcome)


def canonical(payload: Any, ordered: bool) -> Any:
    """Comparable plain data of a frozen result (``[rows, objects, kinds]``)."""
    rows, objects, kinds = payload

    def ident(i: int) -> bytes:
        rec = objects[i]
        return codec.pack_value([rec[0], list(rec[1]), rec[2]])

    def entity(i: int) -> list[Any]:
        rec = objects[i]
        cols = sorted(rec[3].items())
        rels = sorted(
            (
                k,
                None
                if v is None
                else sorted(ident(x) for x in v)
                if isinstance(v, list)
                else ident(v),
            )
            for k, v in rec[4].items()
        )
        return [rec[0], list(rec[1]), rec[2], cols, rels]

    out = [
        codec.pack_value(
            [
                entity(v) if n < len(kinds) and kinds[n] and v is not None else v
                for n, v in enumerate(row)
            ]
        )
        for row in rows
    ]
    return out if ordered else sorted(out)


def submit_hit(
    cache: YokedCache,
    engine: Engine,
    key: str,
    statement: Any,
    parameters: Any,
    execution_options: dict[str, Any],
    served: Any,
    tags: tuple[str, ...],
    versions: Snapshot,
) -> None:
    """Queue the shadow read of one sampled hit (the read listener calls this)."""
    eo = _compat.without_lazy_load_origin(execution_options)
    eo["yokedcache"] = False
    params = dict(parameters) if isinstance(parameters, dict) else parameters
    ordered = bool(_compat.order_by_clauses(statement))
    submit(ShadowJob(cache, engine, key, statement, params, eo, served, tags, versions, ordered))
