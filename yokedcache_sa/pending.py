"""Invalidations this process could not deliver: bypassed here, retried with backoff.

A tag in the queue is never served nor stored by this process until its ``end_write`` is
delivered; lookups retry due entries, and a background timer retries them too so a writer
that goes quiet still delivers.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["PendingInvalidations"]

log = logging.getLogger("yokedcache_sa")


class PendingInvalidations:
    """tag id -> (writer, attempts, next retry time) of undelivered invalidations.

    One writer per tag: the latest one whose ``end_write`` failed. Its bump, retried, comes
    after every earlier writer's COMMIT too; an earlier writer's mark then expires with its
    lease. A retry of an earlier writer that is in flight meanwhile does not dequeue it.
    """

    def __init__(self, retry: Callable[[], Any]) -> None:
        self.tags: dict[str, tuple[str, int, float]] = {}
        self._lock = threading.Lock()
        # weakly: the queue must not keep its cache alive (the cache owns the queue)
        self._retry: Callable[[], Callable[[], Any] | None] = (
            weakref.WeakMethod(retry) if hasattr(retry, "__self__") else (lambda: retry)
        )
        self._timer: threading.Timer | None = None

    def __len__(self) -> int:
        return len(self.tags)

    def __bool__(self) -> bool:
        return bool(self.tags)

    def blocks(self, tags: Iterable[str]) -> bool:
        """Whether one of *tags* has an undelivered invalidation."""
        pending = self.tags
        return bool(pending) and any(t in pending for t in tags)

    def add(self, ids: Sequence[str], writer: str) -> None:
        with self._lock:
            for t in ids:
                _w, attempts, _n = self.tags.get(t, (writer, 0, 0.0))
                self.tags[t] = (writer, attempts, time.monotonic())
        self.schedule()

    def due(self) -> dict[str, list[str]]:
        """writer -> tag ids whose retry is due now."""
        now = time.monotonic()
        due: dict[str, list[str]] = {}
        for t, (writer, _a, when) in list(self.tags.items()):
            if when <= now:
                due.setdefault(writer, []).append(t)
        return due

    def make_all_due(self) -> None:
        with self._lock:
            for t, (w, a, _n) in list(self.tags.items()):
                self.tags[t] = (w, a, 0.0)

    def failed(self, ids: Sequence[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for t in ids:
                if t in self.tags:
                    writer, attempts, _n = self.tags[t]
                    delay = min(5.0, 0.05 * 2 ** min(attempts, 7))
                    self.tags[t] = (writer, attempts + 1, now + delay)

    def delivered(self, ids: Sequence[str], writer: str) -> list[str]:
        """Drop *ids* queued for *writer*; return those it was still queued for (a concurrent
        retry — the timer and a flush — may have delivered some first). A tag another writer
        was queued for meanwhile stays: that writer committed after this delivery began."""
        done = []
        with self._lock:
            for t in ids:
                entry = self.tags.get(t)
                if entry is not None and entry[0] == writer:
                    del self.tags[t]
                    done.append(t)
        return done

    def schedule(self) -> None:
        """Start the background retry timer unless it runs or nothing is pending."""
        with self._lock:
            if self._timer is not None or not self.tags:
                return
            delay = max(0.05, min(w for _w, _a, w in self.tags.values()) - time.monotonic())
            timer = threading.Timer(delay, self._fire)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        retry = self._retry()
        if retry is None:
            return
        try:
            retry()
        except Exception as exc:  # never let the timer thread die noisily
            log.warning("yokedcache: background retry of invalidations failed: %s", exc)
        self.schedule()
