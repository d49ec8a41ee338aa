"""Turning ORM results into plain cacheable data and back into session-attached objects.

A cached result is ``[rows, objects]``: rows hold scalars and references into ``objects``;
each object is ``[class name, primary key, identity token, {column: value},
{relationship: ref | [refs] | None}, [attributes left to load on access]]``, plus
``[[column, raiseload], ...]`` last when loader options deferred columns — the column values
as the database returned them and the relationships that the query itself loaded eagerly.
Live ORM objects are never pickled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine.result import IteratorResult, Result, SimpleResultMetaData
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.base import object_mapper, state_str

from . import _compat

__all__ = [
    "LoaderContext",
    "ResultShape",
    "loader_context",
    "per_object_strategy",
    "rows_from_entry",
    "rows_to_entry",
]


class NotCacheable(Exception):
    """The result holds something we do not cache (internal)."""


class NotStorable(Exception):
    """This run's result must not be stored, though the statement's may be (internal)."""


@dataclass
class ResultShape:
    """What a process learns about a statement's result the first time it runs it."""

    metadata: SimpleResultMetaData
    attributes: Any
    scalars_source: bool
    require_unique: bool
    mappers: dict[str, Mapper[Any]] = field(default_factory=dict)
    columns: tuple[Any, ...] | None = None  # what the statement that made it selected
    context: Any = None  # for a Core statement: what its consumers read of a result's context

    def build(
        self,
        rows: Sequence[Any],
        statement: Any = None,
        session: Session | None = None,
        is_new: Callable[[object], bool] | None = None,
    ) -> Result[Any]:
        """A result of *rows*; rows target by *statement*'s column objects too (by name and
        by the first statement's objects otherwise). With *session*, fetching a row that
        holds an object new to its identity map (*is_new*) after the session was closed or
        expunged raises SQLAlchemy's error, as an unbuffered ORM result does."""
        metadata = self.metadata
        if statement is not None and self.columns is not None:
            columns = _compat.selected_columns(statement)
            if columns is not None and any(a is not b for a, b in zip(columns, self.columns)):
                metadata = _compat.retarget_metadata(metadata, columns)
        it: Iterator[Any] = iter(rows)
        if session is not None and is_new is not None:
            it = _while_valid(it, session, session.identity_map, is_new, self.scalars_source)
        result: IteratorResult[Any] = IteratorResult(metadata, it)
        _compat.set_result_attributes(result, self.attributes, self.scalars_source)
        if self.require_unique:
            self.demand_unique(result)
        elif self.context is not None:
            result.context = self.context
        return result

    @staticmethod
    def demand_unique(result: Result[Any]) -> None:
        """Make *result* raise SQLAlchemy's error unless ``unique()`` is called on it, and
        tell SQLAlchemy's own loaders (a selectin post load served from the cache) to call it."""
        _compat.demand_unique(result)
        _compat.mark_requires_uniquing(result)


def _while_valid(
    rows: Iterator[Any],
    session: Session,
    imap: Any,
    is_new: Callable[[object], bool],
    scalars: bool,
) -> Iterator[Any]:
    for row in rows:
        if session.identity_map is not imap:  # closed or expunge_all() since the read
            for obj in (row,) if scalars else row:
                if obj is not None and _is_entity(obj) and is_new(obj):
                    raise InvalidRequestError(
                        f"Object {state_str(instance_state(obj))} cannot be converted to "
                        "'persistent' state, as this identity map is no longer valid.  Has "
                        "the owning Session been closed?",
                        code="lkrp",
                    )
        yield row


def _name(mapper: Mapper[Any]) -> str:
    cls = mapper.class_
    return f"{cls.__module__}:{cls.__qualname__}"


def reachable_mappers(roots: Iterable[Mapper[Any]]) -> dict[str, Mapper[Any]]:
    """Every mapper a result rooted at *roots* can contain, by class name."""
    out: dict[str, Mapper[Any]] = {}
    todo = list(roots)
    while todo:
        m = todo.pop()
        for sub in m.self_and_descendants:
            name = _name(sub)
            if name in out:
                continue
            out[name] = sub
            todo.extend(r.mapper for r in sub.relationships)
            todo.extend(sub.iterate_to_root())
    return out


class _Freezer:
    def __init__(self, existing: frozenset[Any] | None = None) -> None:
        self.existing = existing
        self.objects: list[list[Any]] = []
        self.memo: dict[int, int] = {}
        self.mappers: dict[str, Mapper[Any]] = {}

    def ref(self, obj: object) -> int:
        oid = id(obj)
        idx = self.memo.get(oid)
        if idx is not None:
            return idx
        state = instance_state(obj)
        mapper = state.mapper
        if state.key is None:
            raise NotCacheable("an object without identity")
        if state.modified:
            raise NotStorable("an object with changes")
        if self.existing is not None and state.key in self.existing:
            raise NotStorable("an object loaded before, which the query does not refresh")
        idx = len(self.objects)
        self.memo[oid] = idx
        record: list[Any] = [_name(mapper), list(state.key[1]), state.key[2], {}, {}, []]
        if state.expired_attributes:
            # e.g. subclass columns of a polymorphic load: SQLAlchemy loads them on access
            record[5] = sorted(state.expired_attributes)
        if state.callables:
            # columns a defer() / load_only() option left to load (or raise) on access
            loaders = _compat.deferred_column_loaders(state)
            if loaders is None:
                raise NotCacheable("an option installed a per-object relationship loader")
            if loaders:
                record.append(sorted(loaders))
        self.objects.append(record)
        self.mappers[record[0]] = mapper
        dict_ = state.dict
        cols = record[3]
        for prop in mapper.column_attrs:
            k = prop.key
            if k in dict_:
                cols[k] = dict_[k]
        rels = record[4]
        for rel in mapper.relationships:
            k = rel.key
            if k not in dict_:
                continue
            value = dict_[k]
            if value is None:
                rels[k] = None
            elif rel.uselist:
                if not isinstance(value, list):
                    raise NotCacheable(f"collection {k} is not a list")
                rels[k] = [self.ref(v) for v in value]
            else:
                rels[k] = self.ref(value)
        return idx


_is_entity = _compat.is_mapped_instance


def rows_to_entry(
    data: Sequence[Any], scalars_source: bool, existing: frozenset[Any] | None = None
) -> tuple[list[Any], dict[str, Mapper[Any]]]:
    """Return ``([rows, objects, kinds], mappers)`` for rows of an ORM result.

    ``kinds[i]`` is 1 where position *i* holds entities. Raises NotCacheable for results
    holding objects that are not plain data or mapped instances with identity, NotStorable
    for results holding an object with changes or one whose identity key is in *existing*
    (the session had it before the query ran: its attributes may predate the rows).
    """
    fz = _Freezer(existing)
    rows: list[Any] = []
    kinds: list[int] | None = None
    for row in data:
        elems = (row,) if scalars_source else tuple(row)
        if kinds is None:
            kinds = [0] * len(elems)
        out = []
        for i, v in enumerate(elems):
            if v is not None and _is_entity(v):
                if kinds[i] == 2:
                    raise NotCacheable("mixed column")
                kinds[i] = 1
                out.append(fz.ref(v))
            else:
                if kinds[i] == 1 and v is not None:
                    raise NotCacheable("mixed column")
                if v is not None:
                    kinds[i] = kinds[i] or 2
                out.append(v)
        rows.append(out)
    return [rows, fz.objects, [1 if k == 1 else 0 for k in (kinds or [])]], fz.mappers


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


def _stamp_paths(
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


def rows_from_entry(
    payload: Any,
    shape: ResultShape,
    session: Session,
    loader: LoaderContext | None = None,
    added: set[int] | None = None,
) -> list[Any]:
    """Rebuild rows from :func:`rows_to_entry` data, objects attached to *session*.

    Objects already in the identity map are reused and only their unloaded attributes are
    filled (as a normal query does); their pending changes are never overwritten. New objects
    carry *loader*'s propagated options and paths, as SQLAlchemy's loader would stamp them.

    Raises:
        NotCacheable: the payload names a class this statement cannot return.
    """
    rows, objects, kinds = payload
    mappers = shape.mappers
    imap = session.identity_map
    add_to_identity_map = _compat.identity_adder(imap)
    built: list[Any] = [None] * len(objects)
    fresh: list[bool] = [False] * len(objects)
    for i, record in enumerate(objects):
        name, pk, token, cols = record[0], record[1], record[2], record[3]
        mapper = mappers.get(name)
        if mapper is None:
            raise NotCacheable(f"unknown class {name}")
        key = mapper.identity_key_from_primary_key(tuple(pk), identity_token=token)
        obj = imap.get(key)
        if obj is None:
            obj = mapper.class_manager.new_instance()
            state = instance_state(obj)
            state.dict.update(cols)
            state.key = key
            state.identity_token = token
            state.session_id = session.hash_key
            if len(record) > 5:
                if record[5]:
                    state.expired_attributes.update(record[5])
                if len(record) > 6:
                    _compat.install_deferred_column_loaders(state, record[6])
            add_to_identity_map(state, key)
            fresh[i] = True
            if added is not None:
                added.add(id(obj))
        else:
            state = instance_state(obj)
            if object_mapper(obj) is not mapper:
                raise NotCacheable("identity map holds another class for this key")
            unloaded = state.unloaded
            if unloaded:
                todo = [k for k in cols if k in unloaded]
                for k in todo:
                    state.dict[k] = cols[k]
                if todo:
                    _compat.commit_loaded(state, todo)
        built[i] = obj
    for i, record in enumerate(objects):
        rels = record[4]
        if not rels:
            continue
        obj = built[i]
        state = instance_state(obj)
        dict_ = state.dict
        for k, v in rels.items():
            if not fresh[i] and k in dict_:
                continue
            if v is None:
                value: Any = None
            elif isinstance(v, list):
                value = [built[j] for j in v]
            else:
                value = built[v]
            set_committed_value(obj, k, value)
    if loader is not None and any(fresh):
        _stamp_paths(objects, rows, kinds, built, fresh, shape.scalars_source, loader)
    dispatch_load = session.dispatch.loaded_as_persistent
    for i, is_new in enumerate(fresh):
        if is_new:
            state = instance_state(built[i])
            if state.manager.dispatch.load:
                state.manager.dispatch.load(state, None)
            if dispatch_load:
                dispatch_load(session, state)
    if shape.scalars_source:
        return [built[r[0]] if kinds[0] and r[0] is not None else r[0] for r in rows]
    out = []
    for r in rows:
        out.append(tuple(built[v] if kinds[i] and v is not None else v for i, v in enumerate(r)))
    return out
