"""The circuit breaker: stop calling a store that keeps failing, probe it now and then."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .errors import BackendUnavailable

__all__ = ["BreakerOpen", "CircuitBreaker"]


class BreakerOpen(BackendUnavailable):
    """The breaker refused a call: not a new failure of the store."""


class CircuitBreaker:
    """Consecutive-failure circuit breaker: open after *threshold*, probe after *timeout*."""

    def __init__(self, threshold: int, timeout: float, enabled: bool) -> None:
        self.threshold = threshold
        self.timeout = timeout
        self.enabled = enabled
        self.failures = 0
        self.open_until = 0.0
        self._lock = threading.Lock()
        self.on_recover: Callable[[bool], None] | None = None
        """Called after a success that ends a run of failures (with: was it open)."""
        self.on_open: Callable[[int], None] | None = None
        """Called when the failures reach the threshold (with: how many)."""

    def allow(self) -> bool:
        """Whether a call may go to the store now (while open: one probe per *timeout*)."""
        if not self.enabled or self.failures < self.threshold:
            return True
        now = time.monotonic()
        with self._lock:
            if now >= self.open_until:
                self.open_until = now + self.timeout  # let exactly one probe through
                return True
        return False

    def refusal(self) -> BreakerOpen:
        """The error a refused call reports."""
        return BreakerOpen(
            "the cache circuit breaker is open after repeated failures; "
            f"it retries in {self.timeout}s"
        )

    @property
    def is_open(self) -> bool:
        return self.enabled and self.failures >= self.threshold

    def success(self) -> None:
        if self.failures:
            was_open = self.is_open
            self.failures = 0
            if self.on_recover is not None:
                self.on_recover(was_open)

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            if self.failures >= self.threshold:
                self.open_until = time.monotonic() + self.timeout
            opened = self.enabled and self.failures == self.threshold
        if opened and self.on_open is not None:
            self.on_open(self.failures)
