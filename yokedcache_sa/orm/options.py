"""Per-query cache hints: :class:`FromCache`, :class:`NoCache` and ``execution_options``.

Hints are data only; the ``do_orm_execute`` listener reads them. They do not propagate to
lazy loads of the objects they return (``propagate_to_loaders = False``): a lazy load is a
separate query that the session caches on its own terms.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy.orm.interfaces import UserDefinedOption

from ..cache import DEFAULT_TTL, TTL
from ..errors import UsageError

__all__ = ["DEFAULT_HINT", "EXECUTION_OPTION", "FromCache", "Hint", "NoCache", "hint_from"]

EXECUTION_OPTION: Final = "yokedcache"
"""``stmt.execution_options(yokedcache={"ttl": 30, "tags": [...], "enabled": False})``"""


@dataclass(frozen=True, slots=True)
class Hint:
    """Resolved per-query settings."""

    enabled: bool = True
    ttl: TTL = DEFAULT_TTL
    tags: tuple[str, ...] = ()
    tables: tuple[str, ...] = ()


DEFAULT_HINT: Final = Hint()
"""The hint of a statement that gives none: cached, with the session's settings."""


class FromCache(UserDefinedOption):
    """Cache this statement with a TTL and extra tags (2.0-style loader option).

    Args:
        ttl: seconds; None for no expiry; omitted for the session/config default.
        tags: extra tags; ``cache.invalidate_tags([...])`` with one of them drops the entry.
        tables: tables a ``text()`` query reads (text reads are not cached without this).

    Example::

        session.scalars(select(User).options(FromCache(ttl=30, tags=["users-page"])))
    """

    propagate_to_loaders = False

    def __init__(
        self, ttl: TTL = DEFAULT_TTL, tags: Iterable[str] = (), *, tables: Iterable[str] = ()
    ) -> None:
        self.hint = Hint(True, ttl, tuple(tags), tuple(tables))
        super().__init__(payload=self.hint)

    def _gen_cache_key(self, anon_map: Any, bindparams: Any) -> tuple[Any, ...]:
        return ("yokedcache.FromCache", repr(self.hint))


class NoCache(UserDefinedOption):
    """Never read this statement from the cache nor store it (2.0-style loader option).

    Example::

        session.execute(select(Report).options(NoCache()))
    """

    propagate_to_loaders = False

    def __init__(self) -> None:
        self.hint = Hint(enabled=False)
        super().__init__(payload=self.hint)

    def _gen_cache_key(self, anon_map: Any, bindparams: Any) -> tuple[Any, ...]:
        return ("yokedcache.NoCache",)


def _from_mapping(m: Mapping[str, Any]) -> Hint:
    unknown = set(m) - {"enabled", "ttl", "tags", "tables"}
    if unknown:
        raise UsageError(
            f"unknown yokedcache execution option keys {sorted(unknown)}; "
            "use enabled, ttl, tags, tables"
        )
    return Hint(
        bool(m.get("enabled", True)),
        m.get("ttl", DEFAULT_TTL),
        tuple(m.get("tags", ())),
        tuple(m.get("tables", ())),
    )


def hint_from(options: Iterable[Any], execution_options: Mapping[str, Any]) -> Hint:
    """Combine loader-option hints and the ``yokedcache`` execution option (the latter wins)."""
    hint = DEFAULT_HINT
    for opt in options:
        h = getattr(opt, "hint", None)
        if isinstance(h, Hint):
            hint = h
    eo = execution_options.get(EXECUTION_OPTION)
    if eo is not None:
        if isinstance(eo, Hint):
            return eo
        if isinstance(eo, Mapping):
            return _from_mapping(eo)
        if eo is False:
            return Hint(enabled=False)
        raise UsageError(f"execution option {EXECUTION_OPTION}= takes a dict or False, got {eo!r}")
    return hint
