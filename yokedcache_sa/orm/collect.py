"""Read collectors: the tables read while something (an @cached call, a private read)
computes."""

from __future__ import annotations

import contextvars
import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger("yokedcache_sa")


_begin_counter = itertools.count(1)

# -- read collectors (tables read while something computes) --------------------------------


@dataclass
class Collector:
    """Tables read by SQL executed while it is active (nested collectors feed their parents)."""

    parent: Collector | None = None
    tables: set[str] = field(default_factory=set)
    unknown: str | None = None
    started_at: int = field(default_factory=lambda: next(_begin_counter))
    strict_snapshot: bool = False

    def add(self, tags: Iterable[str]) -> None:
        c: Collector | None = self
        tags = tuple(tags)
        while c is not None:
            c.tables.update(tags)
            c = c.parent

    def mark_unknown(self, why: str) -> None:
        c: Collector | None = self
        while c is not None:
            if c.unknown is None:
                c.unknown = why
            c = c.parent


_collector: contextvars.ContextVar[Collector | None] = contextvars.ContextVar(
    "yokedcache_collector", default=None
)


def current_collector() -> Collector | None:
    """The collector active in this context, if any."""
    return _collector.get()


class reading_collector:
    """Collect the tables read by SQL executed inside the ``with`` block."""

    def __init__(self, strict_snapshot: bool = False) -> None:
        self.collector = Collector(_collector.get(), strict_snapshot=strict_snapshot)
        self._token: contextvars.Token[Collector | None] | None = None

    def __enter__(self) -> Collector:
        self._token = _collector.set(self.collector)
        return self.collector

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _collector.reset(self._token)


def _mark_strict(col: Collector, why: str) -> None:
    """Mark the innermost @cached computation (a strict collector) and its parents."""
    c: Collector | None = col
    while c is not None and not c.strict_snapshot:
        c = c.parent
    if c is not None:
        c.mark_unknown(why)
