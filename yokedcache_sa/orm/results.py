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
from operator import is_
from typing import Any

from sqlalchemy.engine.result import IteratorResult, Result, SimpleResultMetaData
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.attributes import instance_state, set_committed_value
from sqlalchemy.orm.base import object_mapper, state_str

from . import _compat
from .loading import LoaderContext, loader_context, per_object_strategy, stamp_paths

__all__ = [
    "LoaderContext",
    "ResultShape",
    "loader_context",
    "per_object_strategy",
    "rows_from_entry",
    "rows_to_entry",
]  # the loader context lives in .loading (re-exported here)


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
    # class name -> (mapper, class manager, identity class): filled as entries are rebuilt
    classes: dict[str, tuple[Any, Any, Any]] = field(default_factory=dict)

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
            if columns is not None and not all(map(is_, columns, self.columns)):
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


def _set_relationships(
    objects: list[Any], built: list[Any], states: list[Any], fresh: list[bool]
) -> None:
    """Set the loaded relationships of rebuilt objects (those of objects already in the
    identity map only where not loaded there)."""
    for i, record in enumerate(objects):
        rels = record[4]
        if not rels:
            continue
        obj = built[i]
        dict_ = states[i].dict
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


def rows_from_entry(
    payload: Any,
    shape: ResultShape,
    session: Session,
    loader: LoaderContext | None = None,
    added: list[Any] | None = None,
) -> list[Any]:
    """Rebuild rows from :func:`rows_to_entry` data, objects attached to *session*.

    Objects already in the identity map are reused and only their unloaded attributes are
    filled (as a normal query does); their pending changes are never overwritten. New objects
    carry *loader*'s propagated options and paths, as SQLAlchemy's loader would stamp them.
    *added*, when given, receives ``(built, fresh)``: the objects by entry position and which
    of them are new to the identity map.

    Raises:
        NotCacheable: the payload names a class this statement cannot return.
    """
    rows, objects, kinds = payload
    classes = shape.classes
    imap = session.identity_map
    add_to_identity_map = _compat.identity_adder(imap)
    hash_key = session.hash_key
    n = len(objects)
    built: list[Any] = [None] * n
    states: list[Any] = [None] * n
    fresh: list[bool] = [False] * n
    last_name: str | None = None
    managers: list[Any] = []  # the class managers of the objects in this entry
    mapper: Any = None
    manager: Any = None
    ident: Any = None
    any_rels = False
    for i, record in enumerate(objects):
        if len(record) == 6:  # what rows_to_entry writes unless an option deferred columns
            name, pk, token, cols, rels, expired = record
            loaders = None
        else:
            name, pk, token, cols, rels = record[0], record[1], record[2], record[3], record[4]
            expired = record[5] if len(record) > 5 else None
            loaders = record[6] if len(record) > 6 else None
        if name != last_name:  # most results hold objects of one class
            known = classes.get(name)
            if known is None:
                mapper = shape.mappers.get(name)
                if mapper is None:
                    raise NotCacheable(f"unknown class {name}")
                known = classes[name] = (
                    mapper,
                    mapper.class_manager,
                    _compat.identity_class(mapper),
                )
            mapper, manager, ident = known
            last_name = name
            if manager not in managers:
                managers.append(manager)
        if rels:
            any_rels = True
        key = (ident, tuple(pk), token)  # mapper.identity_key_from_primary_key(pk, token)
        obj = imap.get(key)
        if obj is None:
            obj = manager.new_instance()
            state = instance_state(obj)
            state.dict.update(cols)
            state.key = key
            state.identity_token = token
            state.session_id = hash_key
            if expired:
                state.expired_attributes.update(expired)
            if loaders is not None:
                _compat.install_deferred_column_loaders(state, loaders)
            add_to_identity_map(state, key)
            fresh[i] = True
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
        states[i] = state
    if any_rels:
        _set_relationships(objects, built, states, fresh)
    if loader is not None and any(fresh):
        stamp_paths(objects, rows, kinds, built, fresh, shape.scalars_source, loader)
    dispatch_load = session.dispatch.loaded_as_persistent
    # load events: only when a class of these objects (or the session) has listeners
    if dispatch_load or (
        managers[0].dispatch.load
        if len(managers) == 1  # most entries: one class, no generator
        else any(m.dispatch.load for m in managers)
    ):
        for i, is_new in enumerate(fresh):
            if is_new:
                state = states[i]
                if state.manager.dispatch.load:
                    state.manager.dispatch.load(state, None)
                if dispatch_load:
                    dispatch_load(session, state)
    if added is not None:
        added.append((built, fresh))
    if shape.scalars_source:
        return [built[r[0]] if kinds[0] and r[0] is not None else r[0] for r in rows]
    out = []
    for r in rows:
        out.append(tuple(built[v] if kinds[i] and v is not None else v for i, v in enumerate(r)))
    return out
