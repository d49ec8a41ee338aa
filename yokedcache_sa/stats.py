"""Counters of one cache and the :class:`CacheStats` snapshot users read."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["CacheStats", "Counters"]


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters of one cache since it was created (or since ``reset_stats``).

    ``hit_rate`` is a fraction from 0 to 1 (format it with ``:.1%``).
    """

    hits: int
    misses: int
    sets: int
    invalidations: int
    errors: int
    key_count: int
    backend: str
    healthy: bool
    pending_invalidations: int = 0
    table_hits: dict[str, int] = field(default_factory=dict)
    table_invalidations: dict[str, int] = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        """hits / (hits + misses), 0.0 before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


_FOLD_AT = 1024


class Counters:
    """The mutable counters behind :class:`CacheStats` (plain ints: a lost increment
    under a thread race only blurs a statistic)."""

    __slots__ = (
        "_hit_log",
        "_table_hits",
        "errors",
        "hits",
        "invalidations",
        "misses",
        "sets",
        "table_inv",
    )

    def __init__(self) -> None:
        self.hits = self.misses = self.sets = self.invalidations = self.errors = 0
        self._table_hits: Counter[str] = Counter()
        self.table_inv: Counter[str] = Counter()
        # the tags of the hits not counted per table yet: counted when read, or every
        # _FOLD_AT hits (an entry's tags are one tuple, shared by its hits)
        self._hit_log: list[Iterable[str]] = []

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]  # re-running __init__ zeroes every counter

    @property
    def table_hits(self) -> Counter[str]:
        """Hits per table tag."""
        self._fold()
        return self._table_hits

    def hit(self, tags: Iterable[str]) -> None:
        self.hits += 1
        if tags:
            log = self._hit_log
            log.append(tags)
            if len(log) >= _FOLD_AT:
                self._fold()

    def _fold(self) -> None:
        log, self._hit_log = self._hit_log, []
        counts = self._table_hits
        for tags in log:
            for t in tags:
                if t[:6] == "table:":
                    counts[t] += 1

    def invalidated(self, ids: Iterable[str]) -> None:
        self.invalidations += 1
        for t in ids:
            if t[:6] == "table:":
                self.table_inv[t] += 1

    def snapshot(self, key_count: int, backend: str, healthy: bool, pending: int) -> CacheStats:
        return CacheStats(
            hits=self.hits,
            misses=self.misses,
            sets=self.sets,
            invalidations=self.invalidations,
            errors=self.errors,
            key_count=key_count,
            backend=backend,
            healthy=healthy,
            pending_invalidations=pending,
            table_hits=dict(self.table_hits),
            table_invalidations=dict(self.table_inv),
        )
