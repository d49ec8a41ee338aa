"""Statement shapes (what is known per statement structure) and cache keys."""

from __future__ import annotations

import hashlib
import logging
import operator
import threading
import types
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm.interfaces import MapperProperty
from sqlalchemy.sql.selectable import Select

from .. import codec
from ..errors import SerializationError
from ..tags import table_tag
from . import _compat, routines, tracking
from .bindstate import engine_identity, state_change
from .options import Hint
from .results import (
    ResultShape,
    per_object_strategy,
)
from .state import _known_metadata

log = logging.getLogger("yokedcache_sa")


# -- statement shapes (in-process knowledge per statement structure) -----------------------


@dataclass
class _Shape:
    digest: str | None
    tables: frozenset[str]
    why_not: str = ""
    result: ResultShape | None = None
    roots: tuple[Any, ...] = ()
    post_loads: bool = False  # a run executed other ORM statements inside (post loads)

    def __post_init__(self) -> None:
        self.digest_bytes = self.digest.encode() if self.digest is not None else b""


_shapes: OrderedDict[Any, _Shape] = OrderedDict()
_shapes_lock = threading.Lock()
_MAX_SHAPES = 2000
_BIND_ID_KEY = "_yokedcache_bind_id"  # in an engine's __dict__: its engine_identity()
_EFFECTIVE_VALUE = operator.attrgetter("effective_value")  # a bound parameter's value


def _bind_id(bind: Any) -> str:
    engine = bind.engine if isinstance(bind, Connection) else bind
    ident: str | None = engine.__dict__.get(_BIND_ID_KEY)
    if ident is None:
        ident = engine.__dict__[_BIND_ID_KEY] = engine_identity(engine)
    return ident


def _stable(obj: Any, out: list[str]) -> bool:
    """Append a process-independent rendering of a cache-key structure; False if impossible."""
    if isinstance(obj, tuple | list):
        out.append("(")
        for x in obj:
            if not _stable(x, out):
                return False
        out.append(")")
        return True
    mapper = getattr(obj, "class_manager", None)
    if mapper is not None and hasattr(obj, "local_table"):
        cls = obj.class_
        out.append(f"M<{cls.__module__}.{cls.__qualname__}:{obj.local_table}>")
        return True
    if isinstance(obj, MapperProperty):
        cls = obj.parent.class_
        out.append(f"P<{cls.__module__}.{cls.__qualname__}.{obj.key}>,")
        return True
    if isinstance(obj, types.CodeType):
        # lambda statements (SQLAlchemy's lazy loaders use them) key on their code object:
        # the same source yields the same bytecode, names and constants in every process
        out.append(f"C<{obj.co_filename}:{obj.co_firstlineno}:{obj.co_qualname}:")
        out.append(hashlib.blake2b(obj.co_code, digest_size=8).hexdigest())
        out.append(repr(obj.co_names))
        ok = _stable(tuple(obj.co_consts), out)
        out.append(">,")
        return ok
    if isinstance(obj, types.FunctionType | types.BuiltinFunctionType | type):
        qual = getattr(obj, "__qualname__", "")
        if "<" in qual:  # lambdas and locals have no process-independent name
            return False
        out.append(f"F<{obj.__module__}.{qual}>,")
        return True
    r = repr(obj)
    if " at 0x" in r or " object at " in r:
        return False
    out.append(r)
    out.append(",")
    return True


def _make_shape(statement: Any, ck_key: Any, bind: Any, hint: Hint) -> _Shape:
    if not isinstance(statement, Select):
        return _Shape(None, frozenset(), "not a select()")
    try:
        r = tracking.render(statement, bind.dialect)
    except Exception as exc:  # cannot compile for this bind: let SQLAlchemy raise normally
        return _Shape(None, frozenset(), f"does not compile: {exc}")
    if state_change(r.sql) is not None:
        return _Shape(None, frozenset(), "changes connection state (set_config)")
    if r.text and not hint.tables:
        return _Shape(None, frozenset(), "contains text(); pass FromCache(tables=[...])")
    facts = tracking.facts_of_statement(r.core)
    if facts.written is None or facts.written:
        return _Shape(None, frozenset(), "writes (DML inside a CTE or SQL text)")
    tables = tracking.tags_of(r.tables)
    kinds = _function_kinds(facts.functions, bind, None)
    for name, kind in kinds.items():
        if kind is not routines.FunctionKind.READONLY:
            return _Shape(None, frozenset(), f"calls {name}(), not known to be read-only")
        tables = tables | routines.declared_reads(name)
    for t in r.tables:
        md = getattr(t, "metadata", None)
        if isinstance(md, MetaData):
            _known_metadata.add(md)
    tables = tables | {table_tag(*_split(t)) for t in hint.tables}
    if not tables:
        return _Shape(None, frozenset(), "reads no table")
    parts: list[str] = [_bind_id(bind), "|"]
    if not _stable(ck_key, parts):
        return _Shape(None, tables, "structure has no stable key")
    digest = hashlib.blake2b("".join(parts).encode(), digest_size=16).hexdigest()
    return _Shape(digest, frozenset(tables))


def _function_kinds(
    names: Iterable[str], bind: Any, conn: Connection | None
) -> dict[str, routines.FunctionKind]:
    """Kind of each called function: declarations and builtins first, then (PostgreSQL)
    ``pg_proc`` through *conn* (or *bind* if it is a connection); else UNKNOWN.

    Without a connection only what an earlier lookup learnt is used: a statement's first
    run looks its functions up on its own connection (never a second pool connection, which
    could wait on a pool the session exhausts), and a function learnt read-only makes the
    memoised shapes be rebuilt, so the statement is cached from its next run on."""
    out: dict[str, routines.FunctionKind] = {}
    ask: list[str] = []
    for name in names:
        kind = routines.kind_of(name)
        if kind is None:
            ask.append(name)
        else:
            out[name] = kind
    if not ask:
        return out
    engine = bind.engine if isinstance(bind, Connection) else bind
    if getattr(getattr(engine, "dialect", None), "name", "") != "postgresql":
        return out | dict.fromkeys(ask, routines.FunctionKind.UNKNOWN)
    if conn is None and isinstance(bind, Connection):
        conn = bind
    if conn is None:
        return out | {name: routines.pg_known(engine, name) for name in ask}
    try:
        return out | routines.pg_volatility(engine, conn.connection.dbapi_connection, ask)
    except Exception as exc:  # the lookup failed: assume the worst
        log.warning("yokedcache: could not read pg_proc (%s); treating %s as volatile", exc, ask)
        return out | dict.fromkeys(ask, routines.FunctionKind.UNKNOWN)


def _forget_shapes() -> None:
    with _shapes_lock:
        _shapes.clear()


routines.on_declare(_forget_shapes)


def _split(name: str) -> tuple[str, str | None]:
    schema, _, table = name.rpartition(".")
    return table, schema or None


def _shape_for(statement: Any, ck_key: Any, bind: Any, hint: Hint) -> _Shape:
    ident = bind.__dict__.get(_BIND_ID_KEY)  # _bind_id(), inlined for an Engine seen before
    k = (ck_key, ident if ident is not None else _bind_id(bind), hint.tables)
    shape = _shapes.get(k)
    if shape is None:
        why = per_object_strategy(statement)
        new = _Shape(None, frozenset(), why) if why else _make_shape(statement, ck_key, bind, hint)
        with _shapes_lock:
            # concurrent first uses must share one shape: a waiter can only serve the
            # leader's result once the leader has recorded the result shape on it
            shape = _shapes.setdefault(k, new)
            while len(_shapes) > _MAX_SHAPES:
                _shapes.popitem(last=False)
    return shape


def _params(params: Any, ck: Any = None) -> Any:
    """Parameters as key material, process-independent.

    Lazy loaders pass values under anonymous bind names that embed an object id
    (``%(140444463755472 param)s``); those are replaced by the bind's position in the
    statement's cache key, so every process computes the same key for the same load.
    """
    if not params:
        return None
    if ck is not None and any(
        type(k) is not str for k in (params if isinstance(params, dict) else params[0])
    ):
        positions = {bp.key: i for i, bp in enumerate(ck.bindparams)}
        if isinstance(params, dict):
            return {_param_name(k, positions): v for k, v in params.items()}
        return [{_param_name(k, positions): v for k, v in p.items()} for p in params]
    if isinstance(params, dict):
        return dict(params)
    return [dict(p) for p in params]


def _param_name(name: Any, positions: dict[Any, int]) -> Any:
    if type(name) is str:
        return name
    pos = positions.get(name)
    return pos if pos is not None else name


def _key(
    shape: _Shape, ck: Any, ox: ORMExecuteState, lo: Any, tags: list[Any], context: Any
) -> str | None:
    try:
        values = list(map(_EFFECTIVE_VALUE, ck.bindparams))
        # SQLAlchemy 2.1 keeps .params() values on the statement, over the bindparams' own
        stmt_params = getattr(ck, "params", None)
        extra = list(_compat.keyed_load_options(lo))  # a list: the key packer is strict
        eo = ox.execution_options
        raw = codec.pack_key(
            [
                values,
                _params(stmt_params) if stmt_params else None,
                _params(params, ck) if (params := ox.parameters) else None,
                extra,
                eo.get("identity_token"),
                repr(sorted(eo.get("schema_translate_map", {}).items()))
                if eo.get("schema_translate_map")
                else None,
                tags,  # hint/session tags: SQLAlchemy's cache key ignores user options
                context,  # the connection's schema map, the session's vary_on value
            ]
        )
    except (SerializationError, TypeError, AttributeError, InvalidRequestError):
        # InvalidRequestError: a bound value read from an object that cannot give it (a
        # transient or detached object's column); SQLAlchemy raises it as its own
        # StatementError when the statement runs
        return None
    assert shape.digest is not None
    return "q:" + hashlib.blake2b(shape.digest_bytes + raw, digest_size=20).hexdigest()
