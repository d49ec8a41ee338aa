"""The private SQLAlchemy attributes this package relies on, in one place.

Each accessor names what it needs and degrades safely when a SQLAlchemy release no longer has
it; ``tests/orm/test_compat.py`` checks that every one still exists on the installed version,
and that no other module of the package reads or writes a private name it does not define.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from operator import attrgetter
from typing import Any, Final

from sqlalchemy.engine.result import Result
from sqlalchemy.orm import ORMExecuteState, Query, Session
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.sql.base import CompileState
from sqlalchemy.sql.dml import Delete
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.selectable import Select

from . import _compat_binds, _compat_loading
from ._compat_binds import (
    begin_connection,
    bind_reused,
    execution_bind_arguments,
    on_connect_isolation_level,
    pool_creator,
    recycle_connections,
    root_engine,
    simple_bind,
)
from ._compat_loading import (
    CORE_RESULT_CONTEXT,
    commit_loaded,
    copy_result_metadata,
    current_path,
    deferred_column_loaders,
    demand_unique,
    detached_metadata,
    identity_adder,
    identity_class,
    install_deferred_column_loaders,
    is_mapped_instance,
    loader_extra_criteria,
    mapper_path,
    mark_requires_uniquing,
    queued_post_loads,
    result_attributes,
    result_mappers,
    retarget_metadata,
    selected_columns,
    set_loader_state,
    set_result_attributes,
    supports_scalars,
    take_unique_demand,
)

__all__ = [
    "CORE_RESULT_CONTEXT",
    "KEYED_LOAD_OPTIONS",
    "LOAD_OPTIONS_KEY",
    "PRIVATE_ATTRIBUTES",
    "autobegin",
    "autoflush_before_query",
    "begin_connection",
    "bind_reused",
    "cache_key",
    "commit_loaded",
    "copy_result_metadata",
    "current_path",
    "current_transaction",
    "deferred_column_loaders",
    "demand_unique",
    "detached_metadata",
    "dml_extra_froms",
    "execute_as_planned",
    "execution_bind_arguments",
    "existing_and_yield_per",
    "for_update_clause",
    "has_cache_key",
    "has_pending_changes",
    "identity_adder",
    "identity_class",
    "install_deferred_column_loaders",
    "is_mapped_instance",
    "keyed_load_options",
    "loader_extra_criteria",
    "mapper_path",
    "mark_requires_uniquing",
    "on_connect_isolation_level",
    "options_of",
    "order_by_clauses",
    "orm_compile_state_class",
    "pool_creator",
    "query_statement_and_params",
    "queued_post_loads",
    "recycle_connections",
    "result_attributes",
    "result_mappers",
    "retarget_metadata",
    "root_engine",
    "run_later_orm_listeners",
    "selected_columns",
    "set_loader_state",
    "set_result_attributes",
    "simple_bind",
    "start_listeners_at",
    "statement_options",
    "supports_scalars",
    "table_parent_entity",
    "take_unique_demand",
    "without_lazy_load_origin",
]


LOAD_OPTIONS_KEY: Final = "_sa_orm_load_options"
"""The execution option under which SQLAlchemy passes a query's ORM load options."""

KEYED_LOAD_OPTIONS: Final = ("_only_return_tuples", "_legacy_uniquing", "_invoke_all_eagers")
"""Load options that change the rows of a result, hence part of its cache key."""

_LOAD_OPTIONS = QueryContext.default_load_options

SINCE_2_1: Final = frozenset({"_extra_froms", "_create_unique_filters", "_ambiguous_keys"})
"""Private names of :data:`PRIVATE_ATTRIBUTES` that SQLAlchemy 2.0 lacks; their accessors
fall back to 2.0's behaviour (the compat test checks them on 2.1 and later only)."""

#: (owner, attribute) pairs this package uses, all through the accessors of this module and
#: of :mod:`._compat_loading` (whose names it re-exports); the compat test asserts each exists
#: on the installed SQLAlchemy (CI runs it on the oldest supported). Nothing outside these two
#: modules reads or writes a private SQLAlchemy name.
PRIVATE_ATTRIBUTES: tuple[tuple[type, str], ...] = (
    # statements and their keys
    (Select, "_generate_cache_key"),
    (Select, "_with_options"),
    (Select, "_memoized_select_entities"),
    (Select, "_for_update_arg"),
    (Select, "_propagate_attrs"),
    (Select, "_order_by_clauses"),  # shadow reads compare rows in order or as a multiset
    (CompileState, "_get_plugin_class_for_plugin"),
    (Query, "_statement_20"),
    (Query, "_params"),
    (Delete, "_extra_froms"),
    (TableClause, "_annotations"),
    # load options
    (_LOAD_OPTIONS, "_lazy_loaded_from"),
    (_LOAD_OPTIONS, "_populate_existing"),
    (_LOAD_OPTIONS, "_yield_per"),
    (_LOAD_OPTIONS, "_autoflush"),
    *((_LOAD_OPTIONS, name) for name in KEYED_LOAD_OPTIONS),
    # sessions
    (Session, "_autoflush"),
    (Session, "_is_clean"),
    # used through the accessors below
    (ORMExecuteState, "_remaining_events"),
    (ORMExecuteState, "_starting_event_idx"),
    (ORMExecuteState, "_update_execution_options"),
    (Session, "_autobegin_t"),
    (Session, "_execute_internal"),
    (Session, "_connection_for_bind"),
    (Session, "_transaction"),
    *_compat_loading.PRIVATE_ATTRIBUTES,  # results and loading
    *_compat_binds.PRIVATE_ATTRIBUTES,  # binds: engines, pools, a statement's bind
)


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
    # Session.execution_options and ORMExecuteState._update_execution_options: 2.1 on
    own = {
        **(getattr(ox.session, "execution_options", None) or {}),
        **(getattr(ox, "_update_execution_options", None) or {}),
    }
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


# -- statements -----------------------------------------------------------------------------


def has_cache_key(obj: object) -> bool:
    """Whether *obj* is a statement SQLAlchemy can key (rather than a callable making one)."""
    return hasattr(obj, "_generate_cache_key")


def cache_key(statement: Any) -> Any:
    """SQLAlchemy's in-memory ``CacheKey`` of *statement*, or None when it has none (an
    element that is not cacheable)."""
    return statement._generate_cache_key()


def for_update_clause(statement: Any) -> Any:
    """The ``FOR UPDATE`` / ``FOR SHARE`` clause of a SELECT, or None (not a locking read)."""
    return getattr(statement, "_for_update_arg", None)


def options_of(ox: ORMExecuteState, statement: Any) -> tuple[Sequence[Any], Any, tuple[Any, ...]]:
    """``(ox.user_defined_options, ox.load_options, statement_options(statement))`` of *ox*
    running *statement*, read without the properties' work: the user options only built
    when the statement may carry any (options of its own, or of the entities it had before
    ``with_only_columns()``), the load options (SQLAlchemy's defaults when none were given)
    only of a SELECT, else None."""
    with_options: tuple[Any, ...] = getattr(statement, "_with_options", ())
    user: Sequence[Any] = (
        ox.user_defined_options
        if with_options or getattr(statement, "_memoized_select_entities", None)
        else ()
    )
    if not statement.is_select:
        return user, None, with_options
    return user, ox.execution_options.get(LOAD_OPTIONS_KEY, _LOAD_OPTIONS), with_options


def statement_options(statement: Any) -> tuple[Any, ...]:
    """The options given to ``statement.options(...)`` (loader options among them)."""
    opts: tuple[Any, ...] = getattr(statement, "_with_options", ())
    return opts


def order_by_clauses(statement: Any) -> tuple[Any, ...]:
    """The ORDER BY clauses of a SELECT (empty when it has none)."""
    clauses: tuple[Any, ...] = getattr(statement, "_order_by_clauses", ())
    return clauses


def orm_compile_state_class(statement: Any) -> Any:
    """The ORM compile state class ``Session.execute`` uses for *statement*, or None for a
    statement without ORM entities (a Core statement)."""
    if statement._propagate_attrs.get("compile_state_plugin", None) == "orm":
        return CompileState._get_plugin_class_for_plugin(statement, "orm")
    return None


def query_statement_and_params(query: Query[Any]) -> tuple[Any, dict[str, Any]]:
    """The 2.0-style statement of a legacy ``Query`` and the parameters ``params()`` gave."""
    return query._statement_20(), dict(query._params)


def dml_extra_froms(statement: Any) -> tuple[Any, ...]:
    """The extra tables of a multi-table UPDATE / DELETE (``… FROM`` / MySQL's forms)."""
    froms: tuple[Any, ...] = getattr(statement, "_extra_froms", ()) or ()
    return froms


def table_parent_entity(table: Any) -> Any:
    """The mapped entity an ORM statement's table was annotated with, or None."""
    return getattr(table, "_annotations", {}).get("parententity")


# -- load options ---------------------------------------------------------------------------


keyed_load_options: Final[Callable[[Any], tuple[Any, ...]]] = attrgetter(*KEYED_LOAD_OPTIONS)
"""The values of :data:`KEYED_LOAD_OPTIONS` in a query's load options (a tuple)."""

existing_and_yield_per: Final[Callable[[Any], tuple[Any, Any]]] = attrgetter(
    "_populate_existing", "_yield_per"
)
"""``(populate_existing, yield_per)`` of a query's load options, one C-level call."""


def without_lazy_load_origin(execution_options: dict[str, Any]) -> dict[str, Any]:
    """*execution_options* for running a lazy load's statement on its own: its load options
    no longer name the object it was loaded from (that object is in another session)."""
    eo = dict(execution_options)
    lo = eo.get(LOAD_OPTIONS_KEY)
    if lo is not None and getattr(lo, "_lazy_loaded_from", None) is not None:
        eo[LOAD_OPTIONS_KEY] = lo + {"_lazy_loaded_from": None}
    return eo


# -- sessions and listeners -----------------------------------------------------------------


def has_pending_changes(session: Session) -> bool:
    """Whether *session* has changes a flush would send (new, dirty or deleted objects)."""
    return not session._is_clean()


def autoflush_before_query(session: Session, load_options: Any) -> None:
    """Flush *session*'s pending changes if the query it is about to answer would
    autoflush (the session autoflushes, the query does not say ``autoflush=False``)."""
    if session.autoflush and getattr(load_options, "_autoflush", True) and not session._is_clean():
        session._autoflush()


def start_listeners_at(ox: ORMExecuteState, index: int) -> None:
    """Make *ox* run the ``do_orm_execute`` listeners after position *index* next (what
    :func:`run_later_orm_listeners` runs), as if the one at *index* were running."""
    ox._starting_event_idx = index
