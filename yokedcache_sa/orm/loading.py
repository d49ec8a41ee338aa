"""What SQLAlchemy's loader stamps on the objects a query loads, and which loader options
cannot be reproduced on objects rebuilt from a cache entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm.attributes import instance_state

from . import _compat

__all__ = ["LoaderContext", "loader_context", "per_object_strategy", "stamp_paths"]


@dataclass(frozen=True)
class LoaderContext:
    """What SQLAlchemy's loader stamps on the objects a query loads: the query's options
    that propagate to later loads, and the path the query ran at (non-root for lazy loads)."""

    options: tuple[Any, ...]
    path: Any  # PathRegistry
    entities: tuple[Any, ...]  # per row position: the entity's path registry, or None


def loader_context(statement: Any) -> LoaderContext | None:
    """The loader context of an ORM *statement*, or None when it propagates no options."""
    with_options = _compat.statement_options(statement)
    if not with_options:
        return None
    options = tuple(o for o in with_options if getattr(o, "propagate_to_loaders", 0))
    if not options:
        return None
    entities: list[Any] = []
    for desc in getattr(statement, "column_descriptions", ()):
        entity = desc.get("entity")
        if entity is not None and desc.get("type") is entity:
            entities.append(_compat.mapper_path(inspect(entity)))
        else:
            entities.append(None)
    return LoaderContext(options, _compat.current_path(statement), tuple(entities))


_STATE_STRATEGIES = frozenset({"raise", "raise_on_sql", "noload"})


def per_object_strategy(statement: Any) -> str | None:
    """Why *statement*'s loader options cannot be reproduced on objects built from a cache
    entry, or None.

    ``raiseload``, ``noload``, ``defer(..., raiseload=True)`` and relationship criteria
    (``lazyload(User.addresses.and_(...))``) make SQLAlchemy's loader install a per-object
    loader on each object it builds; an object rebuilt from cached data would fall back to
    the mapping's default loader, so such statements are not cached.
    """
    for opt in _compat.statement_options(statement):
        elements = getattr(opt, "context", None)
        if elements is None:
            elements = (opt,)
        for el in elements:
            strategy = dict(getattr(el, "strategy", None) or ())
            if strategy.get("lazy") in _STATE_STRATEGIES or strategy.get("raiseload"):
                return "its loader options raise or skip loads on the objects it returns"
            # with_expression() carries its expression in the same slot: only relationship
            # strategies (the "lazy" ones) filter
            if "lazy" in strategy and _compat.loader_extra_criteria(el):
                return "its loader options filter the relationships of the objects it returns"
    return None


def stamp_paths(
    objects: list[Any],
    rows: list[Any],
    kinds: list[int],
    built: list[Any],
    fresh: list[bool],
    scalars: bool,
    loader: LoaderContext,
) -> None:
    """Give fresh objects the load options and paths a database load would have given."""
    paths: list[Any] = [None] * len(objects)
    base = loader.path
    for r in rows:
        elems = r[:1] if scalars else r
        for i, v in enumerate(elems):
            if kinds[i] and v is not None and paths[v] is None:
                entity = loader.entities[i] if i < len(loader.entities) else None
                mapper_path = (
                    entity
                    if entity is not None
                    else _compat.mapper_path(instance_state(built[v]).mapper)
                )
                paths[v] = base + mapper_path if base.path else mapper_path
    todo = [i for i, p in enumerate(paths) if p is not None]
    while todo:
        nxt = []
        for i in todo:
            rels = objects[i][4]
            if not rels:
                continue
            mapper = instance_state(built[i]).mapper
            for k, v in rels.items():
                if v is None:
                    continue
                prop = mapper.relationships[k]
                for j in v if isinstance(v, list) else (v,):
                    if paths[j] is None:
                        child = instance_state(built[j]).mapper
                        paths[j] = paths[i][prop][prop.mapper if child.isa(prop.mapper) else child]
                        nxt.append(j)
        todo = nxt
    for i, is_new in enumerate(fresh):
        if is_new:
            path = paths[i]
            if path is None:
                path = _compat.mapper_path(instance_state(built[i]).mapper)
            _compat.set_loader_state(instance_state(built[i]), loader.options, path)
