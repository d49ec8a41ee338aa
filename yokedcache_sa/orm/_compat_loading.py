"""SQLAlchemy's loading internals: what freezing a result and rebuilding it from cached rows
touches (result attributes, the unique() demand, the identity map, loader state).

Part of :mod:`._compat`, which re-exports every name here and lists these attributes in its
``PRIVATE_ATTRIBUTES`` too; kept apart as the one concept of the ORM's result internals.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.engine.result import FrozenResult, IteratorResult, Result, SimpleResultMetaData
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Mapper, ORMExecuteState
from sqlalchemy.orm import identity as _identity
from sqlalchemy.orm import strategies as _strategies
from sqlalchemy.orm import strategy_options as _strategy_options
from sqlalchemy.orm.base import DEFAULT_MANAGER_ATTR
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.orm.path_registry import PathRegistry
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.selectable import Select

__all__ = [
    "CORE_RESULT_CONTEXT",
    "PRIVATE_ATTRIBUTES",
    "commit_loaded",
    "copy_result_metadata",
    "current_path",
    "deferred_column_loaders",
    "demand_unique",
    "detached_metadata",
    "identity_adder",
    "identity_class",
    "install_deferred_column_loaders",
    "is_mapped_instance",
    "loader_extra_criteria",
    "mapper_path",
    "mark_requires_uniquing",
    "queued_post_loads",
    "result_attributes",
    "result_mappers",
    "retarget_metadata",
    "selected_columns",
    "set_loader_state",
    "set_result_attributes",
    "supports_scalars",
    "take_unique_demand",
]

# the identity map's class: WeakInstanceDict on SQLAlchemy 2.0, _WeakInstanceDict on 2.1
_MAP_CLASSES = ("_WeakInstanceDict", "WeakInstanceDict")  # by name: each is absent somewhere
_IDENTITY_MAP: type = next(getattr(_identity, n) for n in _MAP_CLASSES if hasattr(_identity, n))


# the per-object loader of a column deferred by an option: LoadDeferredColumns on SQLAlchemy
# 2.0, _LoadDeferredColumns on 2.1
_DEFERRED_CLASSES = ("_LoadDeferredColumns", "LoadDeferredColumns")
_DEFERRED_LOADER: type = next(
    getattr(_strategies, n) for n in _DEFERRED_CLASSES if hasattr(_strategies, n)
)


# one element of a loader option (a path and its strategy)
_LOAD_ELEMENT: type = _strategy_options._LoadElement

#: (owner, attribute) pairs used here (see :data:`._compat.PRIVATE_ATTRIBUTES`).
PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    (_LOAD_ELEMENT, "_extra_criteria"),
    (FrozenResult, "_attributes"),
    (FrozenResult, "_source_supports_scalars"),
    (IteratorResult, "_attributes"),
    (IteratorResult, "_source_supports_scalars"),
    (IteratorResult, "_unique_filter_state"),
    (SimpleResultMetaData, "_create_unique_filters"),
    (SimpleResultMetaData, "_for_freeze"),
    (Result, "_yield_per"),
    (Mapper, "_path_registry"),
    (Mapper, "_identity_class"),
    (QueryContext.default_load_options, "_sa_top_level_orm_context"),
    (SimpleResultMetaData, "_keys"),
    (SimpleResultMetaData, "_keymap"),
    (SimpleResultMetaData, "_ambiguous_keys"),
    (Select, "_raw_columns"),
    (_IDENTITY_MAP, "_add_unpresent"),
    (InstanceState, "_commit"),
    (Select, "_compile_options"),
    (InstanceState, "load_path"),
    (InstanceState, "load_options"),
    (InstanceState, "callables"),
    (ClauseElement, "_is_star"),
    (DefaultExecutionContext, "_is_server_side"),  # what _CoreResultContext stands in for
)


def current_path(statement: Any) -> PathRegistry:
    """The loader path a statement runs under (non-root for lazy and eager loads)."""
    opts = getattr(statement, "_compile_options", None)
    path = getattr(opts, "_current_path", None)
    return path if isinstance(path, PathRegistry) else PathRegistry.root


def set_loader_state(state: InstanceState[Any], options: tuple[Any, ...], path: Any) -> None:
    """Stamp what SQLAlchemy's loader stamps on a newly loaded object: the propagated
    loader options of the query and the path it was loaded at (later lazy loads and
    deferred-column loads apply those options along that path)."""
    state.load_options = options
    state.load_path = path


def deferred_column_loaders(state: InstanceState[Any]) -> list[list[Any]] | None:
    """The per-object loaders of columns a ``defer()`` / ``load_only()`` option left unloaded
    on *state*, as ``[[key, raiseload], ...]``; None when *state* holds another kind of
    per-object loader (a relationship loader an option installed), which cannot be rebuilt.
    """
    out: list[list[Any]] = []
    dict_ = state.dict
    for key, fn in state.callables.items():
        if key in dict_:
            continue
        if type(fn) is not _DEFERRED_LOADER:
            return None
        loader: Any = fn
        out.append([key, bool(loader.raiseload)])
    return out


def install_deferred_column_loaders(state: InstanceState[Any], loaders: list[list[Any]]) -> None:
    """Put back on a new object the loaders :func:`deferred_column_loaders` described, so its
    deferred columns load (or raise) on access as SQLAlchemy's loader would have set up."""
    state.callables = {key: _DEFERRED_LOADER(key, raiseload) for key, raiseload in loaders}


class _UniquingContext:
    """What SQLAlchemy's selectin loader reads of an ORM result's ``context``."""

    __slots__ = ()
    requires_uniquing = True


_UNIQUING_CONTEXT = _UniquingContext()


class _CoreResultContext:
    """What SQLAlchemy's ORM loader reads of a Core result's ``context`` (the execution
    context of a ``CursorResult``) when it builds objects from that result's rows
    (``Query.instances()``): a result rebuilt from the cache is buffered, not server-side."""

    __slots__ = ()
    _is_server_side = False
    requires_uniquing = False


CORE_RESULT_CONTEXT: Any = _CoreResultContext()
"""The ``context`` of a result rebuilt from the cache for a Core statement (a plain
Session's is a ``CursorResult``'s execution context; an ORM result's is the ORM's own)."""


_READS_REQUIRES_UNIQUING: bool = "requires_uniquing" in (
    *getattr(QueryContext, "__slots__", ()),
    *dir(QueryContext),
)
"""Whether the installed SQLAlchemy's loaders read ``QueryContext.requires_uniquing``
(later 2.0 releases and 2.1; 2.0.30 has no such attribute and never reads it)."""


def mark_requires_uniquing(result: Result[Any]) -> None:
    """Mark a result built from the cache as SQLAlchemy marks one with joined eager
    collections: its selectin loader calls ``unique()`` when ``result.context`` says
    ``requires_uniquing`` and otherwise reads raw rows (which a demanded result refuses).
    A no-op where SQLAlchemy has no such flag."""
    if _READS_REQUIRES_UNIQUING:
        result.context = _UNIQUING_CONTEXT  # type: ignore[attr-defined]


def take_unique_demand(result: Result[Any]) -> bool:
    """Remove the ``unique()`` demand SQLAlchemy puts on a result with joined eager loads
    of collections (a filter that raises on the first row fetched without ``unique()``), so
    that *result* can be frozen whole; return whether there was one."""
    demanded = getattr(result, "_unique_filter_state", None) is not None
    if demanded:
        result._unique_filter_state = None
    return demanded


def result_attributes(result: Result[Any] | FrozenResult[Any]) -> Any:
    """The attributes a result carries for its consumers (SQLAlchemy's ORM puts the
    filtered entities and loader state there)."""
    return result._attributes


def supports_scalars(result: Result[Any] | FrozenResult[Any]) -> bool:
    """Whether each row of *result* is one entity / value (``scalars()`` semantics)."""
    return bool(result._source_supports_scalars)


def set_result_attributes(result: Result[Any], attributes: Any, scalars: bool) -> None:
    """Give a result built from cached rows what :func:`result_attributes` and
    :func:`supports_scalars` read of the original."""
    result._attributes = attributes
    result._source_supports_scalars = scalars


def _require_unique(obj: object) -> None:
    raise InvalidRequestError(
        "The unique() method must be invoked on this Result, "
        "as it contains results that include joined eager loads "
        "against collections"
    )


def demand_unique(result: Result[Any]) -> None:
    """Make *result* raise SQLAlchemy's error unless ``unique()`` is called on it (the
    demand :func:`take_unique_demand` takes off a result from the database)."""
    result._unique_filter_state = (set(), _require_unique)


def detached_metadata(metadata: Any, result: Any) -> Any:
    """*metadata* without what ties it to the run that made it.

    SQLAlchemy's ORM metadata makes its ``unique()`` filters with a closure over the loading
    context, which holds the caller's Session and so the connection: the filters are made
    once, here, and kept instead (for metadata that outlives the run).
    """
    make = getattr(metadata, "_create_unique_filters", None)
    if make is None:
        return metadata
    made = tuple(make(result))

    def filters(for_result: Any) -> list[Any]:
        if for_result._yield_per:  # SQLAlchemy's ORM filters refuse it the same way
            raise InvalidRequestError(
                "Can't use the ORM yield_per feature in conjunction with unique()"
            )
        return list(made)

    # _for_freeze() keeps the column objects rows are targeted by (row._mapping[User.name]);
    # copy.copy() goes through the pickle state, which keeps the names only
    detached = metadata._for_freeze()
    detached._create_unique_filters = filters
    return detached


def is_mapped_instance(value: object) -> bool:
    """Whether *value* is an instance of a mapped class."""
    return hasattr(type(value), DEFAULT_MANAGER_ATTR)


def mapper_path(mapper: Mapper[Any]) -> PathRegistry:
    """The loader path of *mapper* at the root (where a query's entities load)."""
    return mapper._path_registry


def loader_extra_criteria(element: Any) -> Any:
    """The criteria a loader option element adds to its relationship (``.and_(...)``), or
    None."""
    return getattr(element, "_extra_criteria", None)


def identity_class(mapper: Mapper[Any]) -> type:
    """The first element of the identity-map keys of *mapper*'s objects: what
    ``Mapper.identity_key_from_primary_key(pk, identity_token=t)`` returns is
    ``(identity_class(mapper), tuple(pk), t)`` (asked once per mapper and result)."""
    cls: type = mapper._identity_class
    return cls


def identity_adder(identity_map: Any) -> Callable[[InstanceState[Any], Any], None]:
    """The function that puts a newly built object's state into *identity_map* under a key
    known to be absent, as SQLAlchemy's loader does: ``add(state, key)`` (fetched once per
    result, called per object)."""
    add: Callable[[InstanceState[Any], Any], None] = identity_map._add_unpresent
    return add


def commit_loaded(state: InstanceState[Any], keys: list[str]) -> None:
    """Mark the attributes *keys* of *state* as loaded from the database (no change)."""
    state._commit(state.dict, keys)


def queued_post_loads(ox: ORMExecuteState) -> dict[Any, int] | None:
    """For a post load (selectin, subquery, immediate): the post loads its top-level query
    has queued, by path, with the number of objects each will load; None for other reads.

    SQLAlchemy's loader queues a nested post load on the top-level query while it builds the
    objects of a post load's rows, and the top-level query runs the queue afterwards: a post
    load whose rows queue more cannot be served from the cache (nothing would queue them).
    """
    top = getattr(ox.load_options, "_sa_top_level_orm_context", None)
    paths = getattr(top, "post_load_paths", None)
    if not isinstance(paths, dict):
        return None
    return {path: len(getattr(pl, "states", ())) for path, pl in paths.items()}


def copy_result_metadata(metadata: Any) -> Any:
    """A copy of a result's metadata that still targets columns by the objects they were
    selected as (``row._mapping[User.name]``); ``copy.copy()`` goes through its pickle state,
    which keeps the names only."""
    return metadata._for_freeze()


def selected_columns(statement: Any) -> tuple[Any, ...] | None:
    """What a ``select()`` selects, one element per result position for ORM selects (the
    entity or column as given); None for other statements."""
    raw = getattr(statement, "_raw_columns", None)
    return tuple(raw) if isinstance(raw, list) else None


def result_mappers(ox: ORMExecuteState) -> tuple[Mapper[Any], ...]:
    """The mappers of the entities in *ox*'s result rows (``ORMExecuteState.all_mappers``).

    ``select("*")`` (or ``literal_column("*")``, ``text("*")``) from a mapped class: the ORM
    allows nothing next to the ``*``, so its rows hold column values only, and SQLAlchemy's
    ``column_descriptions`` (hence ``all_mappers``) raises for it: ``*`` is told by the
    flag SQLAlchemy's ORM compiler reads for the same decision."""
    raw = getattr(ox.statement, "_raw_columns", None)
    if isinstance(raw, list) and len(raw) == 1 and getattr(raw[0], "_is_star", False):
        return ()
    return tuple(ox.all_mappers)


def retarget_metadata(metadata: Any, columns: tuple[Any, ...]) -> Any:
    """*metadata* that also targets each position by *columns* (the same positions selected
    by another statement of the same shape): SQLAlchemy adds the current statement's column
    objects to a cached compilation's result metadata the same way."""
    keys = metadata._keys
    if len(keys) != len(columns):
        return metadata
    by_index = {rec[0]: rec[2] for rec in metadata._keymap.values() if isinstance(rec[0], int)}
    extra = [(*(by_index.get(i) or ()), col) for i, col in enumerate(columns)]
    kw: dict[str, Any] = {}
    if hasattr(metadata, "_create_unique_filters"):  # SQLAlchemy 2.1
        kw["_create_unique_filters"] = metadata._create_unique_filters
        kw["_ambiguous_keys"] = metadata._ambiguous_keys
    elif getattr(metadata, "_unique_filters", None) is not None:  # 2.0
        kw["_unique_filters"] = metadata._unique_filters
    return SimpleResultMetaData(keys, extra=extra, **kw)
