"""Call the sync or the async twin of a cache method, whichever fits the caller.

Inside an AsyncSession, SQLAlchemy runs ORM code in a greenlet that may await: there the
asyncio client is used so the event loop is never blocked. Elsewhere the sync client is used.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

try:  # SQLAlchemy 2.1
    from sqlalchemy.util.concurrency import await_ as _await
except ImportError:  # pragma: no cover - SQLAlchemy 2.0
    from sqlalchemy.util.concurrency import await_only as _await  # type: ignore[no-redef,unused-ignore]
from sqlalchemy.util.concurrency import in_greenlet

__all__ = ["await_", "call_twin", "in_greenlet"]

T = TypeVar("T")


def await_(awaitable: Awaitable[T]) -> T:
    """Await *awaitable* from sync code running inside SQLAlchemy's greenlet."""
    result: T = _await(awaitable)
    return result


def call_twin(
    sync_fn: Callable[..., T], async_fn: Callable[..., Awaitable[T]], *args: Any, **kw: Any
) -> T:
    """Run ``sync_fn(*args, **kw)``, or await ``async_fn(*args, **kw)`` inside a greenlet."""
    if in_greenlet():
        return _await(async_fn(*args, **kw))
    return sync_fn(*args, **kw)
