"""Statement counting for every suite: one ``before_cursor_execute`` counter.

Tests count the SQL an engine sends, so that a test cannot pass by never caching (a hit sends
nothing) nor by never invalidating (a stale hit sends nothing either).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event

__all__ = ["Box", "SQLCounter"]


@dataclass
class Box:
    """Filled with the number of statements when a ``counting()`` block ends."""

    n: int = -1


class SQLCounter:
    """Counts the statements *engine* sends; optionally only SELECTs naming *table*, and
    optionally sleeping *delay* seconds in each counted statement (to widen race windows;
    with *first_only*, in the first one only)."""

    def __init__(
        self, engine: Engine, table: str | None = None, delay: float = 0.0, first_only: bool = False
    ) -> None:
        self.engine = engine
        self.table = table
        self.delay = delay
        self.first_only = first_only
        self.n = 0
        self.statements: list[str] = []
        self.first_done = threading.Event()  # set when the first counted statement may run
        self._lock = threading.Lock()
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if self.table is not None and (
            not statement.lstrip().upper().startswith("SELECT") or self.table not in statement
        ):
            return
        with self._lock:
            self.n += 1
            self.statements.append(statement)
            first = self.n == 1
        if self.delay and (first or not self.first_only):
            time.sleep(self.delay)
        if first:
            self.first_done.set()

    def remove(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._count)

    def mark(self) -> int:
        return self.n

    def since(self, mark: int) -> int:
        return self.n - mark

    def run(self, fn: Callable[[], Any]) -> tuple[Any, int]:
        """Call *fn*; return its result and how many statements it sent."""
        before = self.n
        out = fn()
        return out, self.n - before

    @contextmanager
    def counting(self) -> Iterator[Box]:
        """``with counter.counting() as box: ...``; then ``box.n`` statements were sent."""
        box = Box()
        before = self.n
        try:
            yield box
        finally:
            box.n = self.n - before

    @contextmanager
    def delta(self) -> Iterator[list[int]]:
        """As :meth:`counting`, the count in ``box[0]``."""
        box = [0]
        before = self.n
        try:
            yield box
        finally:
            box[0] = self.n - before
