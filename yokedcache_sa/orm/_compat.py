"""The private SQLAlchemy attributes this package relies on, in one place.

Each accessor names what it needs and degrades safely when a SQLAlchemy release no longer has
it; ``tests/orm/test_compat.py`` checks that every one still exists on the installed version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.engine.base import OptionEngine
from sqlalchemy.engine.result import FrozenResult, IteratorResult, Result, SimpleResultMetaData
from sqlalchemy.orm import Mapper, ORMExecuteState, Query, Session
from sqlalchemy.orm import identity as _identity
from sqlalchemy.orm import strategies as _strategies
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.orm.path_registry import PathRegistry
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.base import CompileState
from sqlalchemy.sql.selectable import Select

__all__ = [
    "PRIVATE_ATTRIBUTES",
    "autobegin",
    "begin_connection",
    "bind_reused",
    "copy_result_metadata",
    "current_path",
    "current_transaction",
    "deferred_column_loaders",
    "execute_as_planned",
    "execution_bind_arguments",
    "install_deferred_column_loaders",
    "mark_requires_uniquing",
    "queued_post_loads",
    "retarget_metadata",
    "root_engine",
    "run_later_orm_listeners",
    "selected_columns",
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

#: (owner, attribute) pairs this package uses, here and in the other orm modules; the compat
#: test asserts each exists on the installed SQLAlchemy (CI runs it on the oldest supported).
PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    # statements and their keys (reads.py, explain.py, results.py, engine_events.py)
    (Select, "_generate_cache_key"),
    (Select, "_with_options"),
    (Select, "_for_update_arg"),
    (Select, "_propagate_attrs"),
    (Select, "_order_by_clauses"),  # shadow.py: compare rows in order or as a multiset
    (CompileState, "_get_plugin_class_for_plugin"),
    (Query, "_statement_20"),
    (Query, "_params"),
    (QueryContext.default_load_options, "_lazy_loaded_from"),
    (QueryContext.default_load_options, "_sa_top_level_orm_context"),
    # sessions, results and loading (reads.py, results.py)
    (Session, "_autoflush"),
    (Session, "_is_clean"),
    (FrozenResult, "_attributes"),
    (SimpleResultMetaData, "_for_freeze"),
    (SimpleResultMetaData, "_keys"),
    (SimpleResultMetaData, "_keymap"),
    (SimpleResultMetaData, "_ambiguous_keys"),
    (SimpleResultMetaData, "_create_unique_filters"),
    (Select, "_raw_columns"),
    (FrozenResult, "_source_supports_scalars"),
    (IteratorResult, "_unique_filter_state"),
    (Mapper, "_path_registry"),
    (_IDENTITY_MAP, "_add_unpresent"),
    (InstanceState, "_commit"),
    # used through the accessors below
    (ORMExecuteState, "_remaining_events"),
    (ORMExecuteState, "_starting_event_idx"),
    (ORMExecuteState, "_update_execution_options"),
    (Select, "_compile_options"),
    (InstanceState, "load_path"),
    (InstanceState, "load_options"),
    (InstanceState, "callables"),
    (Session, "_autobegin_t"),
    (Session, "_execute_internal"),
    (Session, "_connection_for_bind"),
    (Session, "_transaction"),
    (OptionEngine, "_proxied"),
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


def run_later_orm_listeners(ox: ORMExecuteState) -> tuple[bool, Result[Any] | None]:
    """Run the ``do_orm_execute`` listeners registered after the caller, now.

    User listeners (global filters through ``with_loader_criteria``, tenant criteria read from
    ``session.info``) usually sit after the cache's class-level listener; they must shape the
    statement before the cache keys or runs it. Returns ``(ran, result)``: *ran* is True when
    there were later listeners — SQLAlchemy will then not run them again only if the caller
    returns a result — and *result* is the first result one of them returned, if any.
    """
    rest = ox._remaining_events()
    if not rest:
        return False, None
    idx = ox._starting_event_idx
    for fn in rest:
        idx += 1
        ox._starting_event_idx = idx  # a listener's own invoke_statement() runs what follows
        listener: Any = fn  # typed as returning None; a listener may return a Result
        out: Result[Any] | None = listener(ox)
        if out:
            return True, out
    return True, None


# read into a query's load options by SQLAlchemy's pre-listener pass (orm_pre_session_exec)
_LOAD_OPTION_NAMES = frozenset({"populate_existing", "autoflush", "yield_per", "identity_token"})


def _given_options(ox: ORMExecuteState) -> Any:
    """The execution options to run *ox*'s statement with: what SQLAlchemy's second
    ``orm_pre_session_exec`` pass would get (the options given plus the listeners' updates).

    ``local_execution_options`` is the result of the first pass. For a post load (selectin,
    subquery, immediate) that pass merges in the top-level query's options: passed on, its
    ``yield_per`` or ``autoflush`` would become the post load's own (SQLAlchemy #13301). The
    loaders give a post load ``sa_top_level_orm_context`` only, so such merged names are
    dropped unless the session or a listener set them.
    """
    options = ox.local_execution_options
    if "sa_top_level_orm_context" not in options or not _LOAD_OPTION_NAMES.intersection(options):
        return options
    own = {**ox.session.execution_options, **ox._update_execution_options}
    return {k: v for k, v in options.items() if k not in _LOAD_OPTION_NAMES or k in own}


def execute_as_planned(ox: ORMExecuteState) -> Result[Any]:
    """Run *ox*'s statement in its session the way SQLAlchemy would have after the
    ``do_orm_execute`` listeners (the later ones have run already).

    ``ORMExecuteState.invoke_statement()`` does the same but adds ``_sa_skip_events=True``
    to the bind arguments, which a user's ``get_bind()`` override would then receive, and
    passes the options of SQLAlchemy's pre-listener pass on (see :func:`_given_options`).
    """
    run = getattr(ox.session, "_execute_internal", None)
    if run is None:
        return ox.invoke_statement()
    result: Result[Any] = run(
        ox.statement,
        ox.parameters,
        execution_options=_given_options(ox),
        bind_arguments=dict(ox.bind_arguments),
        _parent_execute_state=ox,
    )
    return result


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


def autobegin(session: Session) -> None:
    """Begin *session*'s transaction the way its next statement would (no connection yet).

    A result served from the cache must leave the session in the state a database read
    would: in a transaction, so that a later ``rollback()`` expires what was loaded. Raises
    SQLAlchemy's own error when the session was made with ``autobegin=False``.
    """
    begin = getattr(session, "_autobegin_t", None)
    if begin is not None:
        begin()
    elif not session.in_transaction():  # a SQLAlchemy without the private hook
        session.begin()


def current_transaction(session: Session) -> Any:
    """The innermost transaction of *session* (a savepoint's, when one is open), or None.

    ``Session.get_transaction()`` returns the outermost one, which stays active when a flush
    inside a savepoint fails and deactivates only the savepoint's.
    """
    if "_transaction" in session.__dict__:
        return session.__dict__["_transaction"]
    return session.get_nested_transaction() or session.get_transaction()


def root_engine(engine: Engine) -> Engine:
    """The engine *engine* was made from by ``execution_options()`` (itself if none).

    An option engine shares its parent's pool and fires the parent's listeners, also those
    added later; listeners added to the option engine itself fire only for it.
    """
    while True:
        parent = getattr(engine, "_proxied", None)
        if not isinstance(parent, Engine):
            return engine
        engine = parent


def execution_bind_arguments(ox: ORMExecuteState) -> dict[str, Any]:
    """The arguments SQLAlchemy passes to ``Session.get_bind()`` when it runs *ox*'s
    statement after the ``do_orm_execute`` listeners: its second ``orm_pre_session_exec``
    pass takes the clause and mapper from the statement the listeners left."""
    args = dict(ox.bind_arguments)
    if ox.is_orm_statement:
        statement: Any = ox.statement
        args["clause"] = statement
        subject = statement._propagate_attrs.get("plugin_subject")
        if subject:
            args["mapper"] = subject.mapper
    return args


@contextmanager
def bind_reused(
    session: Session, bind_arguments: dict[str, Any], bind: Any, conn: Any = None
) -> Iterator[list[Any]]:
    """Run a statement whose bind the caller resolved already, without resolving it again.

    Within the block, the session's first ``get_bind()`` with *bind_arguments* (the same
    objects) returns *bind* instead of calling the session's ``get_bind`` — an override (a
    router picking a replica) is asked once per statement, as without the cache, and the
    statement runs where its key says. The first ``_connection_for_bind(bind)`` returns *conn*
    when the caller began it already. Yields a list that receives the connection the
    statement ran on.
    """
    d = session.__dict__
    own_get_bind = d.get("get_bind")
    own_conn_for = d.get("_connection_for_bind")
    real_get_bind = session.get_bind
    real_conn_for = session._connection_for_bind
    ran_on: list[Any] = []
    unused = [True]

    def get_bind(*args: Any, **kw: Any) -> Any:
        if (
            unused
            and not args
            and kw.keys() == bind_arguments.keys()
            and all(kw[k] is bind_arguments[k] for k in kw)
        ):
            unused.clear()
            return bind
        return real_get_bind(*args, **kw)

    def connection_for_bind(engine: Any, *args: Any, **kw: Any) -> Any:
        if engine is bind and not ran_on and conn is not None and not args and not kw:
            ran_on.append(conn)
            return conn
        got = real_conn_for(engine, *args, **kw)
        if engine is bind and not ran_on:
            ran_on.append(got)
        return got

    d["get_bind"] = get_bind
    d["_connection_for_bind"] = connection_for_bind
    try:
        yield ran_on
    finally:
        for name, own in (("get_bind", own_get_bind), ("_connection_for_bind", own_conn_for)):
            if own is None:
                d.pop(name, None)
            else:
                d[name] = own


def begin_connection(session: Session, bind: Any) -> Any:
    """The session's connection for *bind* (an engine or connection ``get_bind()`` returned),
    begun as the statement's execution would begin it: without asking ``get_bind()`` again."""
    return session._connection_for_bind(bind)


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


def retarget_metadata(metadata: Any, columns: tuple[Any, ...]) -> Any:
    """*metadata* that also targets each position by *columns* (the same positions selected
    by another statement of the same shape): SQLAlchemy adds the current statement's column
    objects to a cached compilation's result metadata the same way."""
    keys = metadata._keys
    if len(keys) != len(columns):
        return metadata
    by_index = {rec[0]: rec[2] for rec in metadata._keymap.values() if isinstance(rec[0], int)}
    extra = [(*(by_index.get(i) or ()), col) for i, col in enumerate(columns)]
    return SimpleResultMetaData(
        keys,
        extra=extra,
        _create_unique_filters=metadata._create_unique_filters,
        _ambiguous_keys=metadata._ambiguous_keys,
    )
