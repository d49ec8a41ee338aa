"""Which other tables a write changes: FK ON DELETE/UPDATE actions and declared
dependencies (views, trigger-fed tables), kept on ``MetaData.info``."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Final

from sqlalchemy import MetaData, Table

from ..tags import ALL_TAG, table_tag
from .tracking import tag_of

__all__ = [
    "DEPENDENTS_KEY",
    "MetadataSet",
    "cascade_closure",
    "declare_dependency",
    "dependencies",
]


class MetadataSet:
    """MetaData objects held weakly; :meth:`members` is one cheap call (the write path asks
    for them at every statement, where iterating a ``WeakSet`` costs five calls)."""

    __slots__ = ("_lock", "_refs", "_set")

    def __init__(self, items: Iterable[MetaData] = ()) -> None:
        self._lock = threading.Lock()
        self._set: weakref.WeakSet[MetaData] = weakref.WeakSet(items)
        self._refs: tuple[weakref.ref[MetaData], ...] = tuple(map(weakref.ref, self._set))

    def add(self, md: MetaData) -> None:
        if md in self._set:
            return
        with self._lock:
            self._set.add(md)
            self._refs = tuple(map(weakref.ref, self._set))  # the dead ones dropped too

    def members(self) -> list[MetaData]:
        """The live members, in no particular order."""
        return [m for r in self._refs if (m := r()) is not None]

    def __contains__(self, md: object) -> bool:
        return md in self._set

    def __iter__(self) -> Iterator[MetaData]:
        return iter(self.members())

    def __len__(self) -> int:
        return len(self.members())


_cascade_cache: weakref.WeakKeyDictionary[MetaData, tuple[int, dict[str, set[str]]]] = (
    weakref.WeakKeyDictionary()
)
DEPENDENTS_KEY: Final = "yokedcache_dependents"  # in MetaData.info: base tag -> dependent tags
# declarations naming no MetaData and no Table (the two-argument string form): they hold for
# every metadata, as before declarations moved to MetaData.info
_UNATTACHED: Final = MetaData(info={DEPENDENTS_KEY: {}})
# which MetaData hold declarations (an index, weakly: the declarations are their info's),
# so that a process that writes before it has read a table of them still applies them
_declaring = MetadataSet([_UNATTACHED])


def declare_dependency(
    table: str | Table, depends_on: Iterable[str | Table], *, metadata: MetaData | None = None
) -> None:
    """Declare that *table* (a view, a trigger-fed table) changes when *depends_on* change.

    A write to any of *depends_on* then also invalidates results that read *table*.

    The declaration is kept in ``metadata.info["yokedcache_dependents"]``: of *metadata*,
    else of the MetaData of the first :class:`~sqlalchemy.Table` among the arguments. With
    names only and no *metadata* it holds for every MetaData in the process.

    Example::

        declare_dependency("user_stats_view", ["users", "orders"], metadata=Base.metadata)
        declare_dependency(audit_log, [orders])  # Table objects: their MetaData

    Changed in 0.2: takes Table objects and ``metadata=``; kept on ``MetaData.info``.
    """
    bases = list(depends_on)
    if metadata is None:
        metadata = next((t.metadata for t in (table, *bases) if isinstance(t, Table)), _UNATTACHED)
    declared: dict[str, set[str]] = metadata.info.setdefault(DEPENDENTS_KEY, {})
    _declaring.add(metadata)
    dependent = tag_of(table) if isinstance(table, Table) else table_tag(table)
    for base in bases:
        base_tag = tag_of(base) if isinstance(base, Table) else table_tag(base)
        declared.setdefault(base_tag, set()).add(dependent)


def dependencies(metadatas: Iterable[MetaData] = ()) -> dict[str, frozenset[str]]:
    """The declared dependencies of *metadatas* and the unattached ones, base table tag ->
    dependent table tags."""
    out: dict[str, set[str]] = {}
    for md in {*_declaring.members(), *metadatas}:
        for base, deps in md.info.get(DEPENDENTS_KEY, {}).items():
            out.setdefault(base, set()).update(deps)
    return {k: frozenset(v) for k, v in out.items()}


def _fk_map(metadata: MetaData) -> dict[str, set[str]]:
    cached = _cascade_cache.get(metadata)
    if cached is not None and cached[0] == len(metadata.tables):
        return cached[1]
    rev: dict[str, set[str]] = {}
    for t in metadata.tables.values():
        for fk in t.foreign_keys:
            acts = {(fk.ondelete or "").upper(), (fk.onupdate or "").upper()}
            if acts & {"CASCADE", "SET NULL", "SET DEFAULT"}:
                try:
                    parent = fk.column.table
                except Exception:  # unresolvable FK target: nothing to cascade from
                    continue
                rev.setdefault(tag_of(parent), set()).add(tag_of(t))
    _cascade_cache[metadata] = (len(metadata.tables), rev)
    return rev


def cascade_closure(tags: Iterable[str], metadatas: Iterable[MetaData]) -> frozenset[str]:
    """*tags* plus every table changed by FK ON DELETE/UPDATE actions or declared
    dependencies, transitively."""
    metadatas = list(metadatas)
    maps = [_fk_map(m) for m in metadatas]
    maps.extend(
        m.info[DEPENDENTS_KEY]
        for m in {*_declaring.members(), *metadatas}
        if DEPENDENTS_KEY in m.info
    )
    out = set(tags)
    todo = list(out)
    while todo:
        t = todo.pop()
        for rev in maps:
            got = rev.get(t)
            if got:  # most tables have no dependents: no set is built for them
                for n in got:
                    if n not in out:
                        out.add(n)
                        todo.append(n)
    if ALL_TAG in out:
        return frozenset({ALL_TAG})
    return frozenset(out)
