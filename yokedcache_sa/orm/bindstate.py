"""What a database answer depends on besides the statement: the bind and the connection state.

Two pure helpers for the session listeners:

- :func:`engine_identity` renders, once per engine, everything about an engine that can change
  the rows a statement returns: the dialect, the URL (with query and database, without the
  password), the engine's ``schema_translate_map`` and the arguments its pool connects with
  (``connect_args``, a custom ``creator``). When those cannot be rendered the same way in
  every process, the identity is private to this process (correct, just not shared).
- :func:`state_change` tells whether SQL changes connection state that changes answers
  (``SET ...``, ``USE db``, ``set_config(...)``) and for how long: the transaction
  (``SET LOCAL``, ``set_config(..., true)``) or the DBAPI connection.
"""

from __future__ import annotations

import re
import uuid
import weakref
from collections.abc import Mapping
from typing import Any, Final, Literal

from sqlalchemy.engine import Connection, Engine

from . import _compat

__all__ = [
    "TAINT_KEY",
    "UNWATCHED",
    "WATCHED_KEY",
    "StateChange",
    "changes_isolation",
    "connection_taint",
    "connection_variant",
    "engine_identity",
    "state_change",
]

TAINT_KEY: Final = "yokedcache_state_sql"  # in Connection.info: per DBAPI connection
WATCHED_KEY: Final = "yokedcache_watched"  # in Connection.info: seen since it was opened
UNWATCHED: Final = "(a connection checked out before yokedcache watched its engine)"
_PROCESS: Final = uuid.uuid4().hex
_local_ids: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
_SECRET = re.compile(r"pass|secret|token", re.IGNORECASE)


def _render(value: Any) -> str | None:
    """A process-independent rendering of plain data, or None."""
    if isinstance(value, dict):
        value = [[k, value[k]] for k in sorted(value, key=str)]
    if isinstance(value, list | tuple):
        parts = [_render(v) for v in value]
        if any(p is None for p in parts):
            return None
        return "(" + ",".join(p for p in parts if p is not None) + ")"
    if value is None or isinstance(value, str | int | float | bool | bytes):
        return repr(value)
    return None


def _local_id(obj: Any) -> str:
    """An identity private to this process, stable for *obj*'s lifetime."""
    try:
        ident = _local_ids.get(obj)
        if ident is None:
            ident = _local_ids[obj] = f"local:{_PROCESS}:{uuid.uuid4().hex}"
    except TypeError:  # not weak-referenceable
        return f"local:{_PROCESS}:{id(obj)}"
    return ident


def _creator_identity(engine: Engine) -> str:
    pool = engine.pool
    creator: Any = _compat.pool_creator(pool)
    code = getattr(creator, "__code__", None)
    if (
        code is not None
        and getattr(creator, "__module__", "") == "sqlalchemy.engine.create"
        and code.co_name == "connect"
    ):
        # create_engine's own creator: it connects with the URL's arguments plus connect_args
        cells = dict(zip(code.co_freevars, (c.cell_contents for c in creator.__closure__ or ())))
        cargs = cells.get("cargs_tup", cells.get("cargs"))  # 2.1 / 2.0 spellings
        if "cparams" not in cells or cargs is None:
            return _local_id(pool)
        if engine.dialect.dispatch.do_connect:
            return _local_id(pool)  # do_connect listeners may change the arguments
        _, from_url = engine.dialect.create_connect_args(engine.url)
        extra = {
            k: v
            for k, v in dict(cells["cparams"]).items()
            if (k not in from_url or from_url[k] != v) and not _SECRET.search(str(k))
        }
        rendered = _render([list(cargs), extra])
        return rendered if rendered is not None else _local_id(pool)
    # a custom creator: its module-level name is stable, anything else is private
    qual = getattr(creator, "__qualname__", "")
    if qual and "<" not in qual and getattr(creator, "__module__", None):
        return f"F<{creator.__module__}.{qual}>"
    return _local_id(pool)


def _schema_map(options: Any) -> str | None:
    stm = options.get("schema_translate_map")
    if not stm:
        return None
    if not isinstance(stm, Mapping):
        return _local_id(stm)  # not a mapping SQLAlchemy could apply: never shared
    items: list[tuple[Any, Any]] = list(stm.items())
    if None in stm and "_none" in stm and stm["_none"] == stm[None]:
        # SQLAlchemy's compiler adds "_none" (its placeholder for None) to the map it is
        # given, in place: the same map before and after a statement ran
        items = [(k, v) for k, v in items if k != "_none"]
    return repr(sorted(items, key=lambda kv: str(kv[0])))


def _private_database(engine: Engine) -> bool:
    """Whether the URL names a database private to the engine's pool (SQLite in memory):
    two engines with the same such URL hold different data."""
    if engine.dialect.name != "sqlite":
        return False
    db = engine.url.database
    query = {k.lower(): str(v).lower() for k, v in engine.url.query.items()}
    return (
        not db
        or db == ":memory:"
        or query.get("mode") == "memory"
        or (db.startswith("file:") and ":memory:" in db)
    )


def engine_identity(engine: Engine) -> str:
    """Everything about *engine* that can change the rows a statement returns."""
    url = engine.url.render_as_string(hide_password=True)
    stm = _schema_map(engine.get_execution_options())
    ident = f"{engine.dialect.name}|{url}|{stm}|{_creator_identity(engine)}"
    if _private_database(engine):
        # the pool holds the database (option engines share their parent's pool)
        ident += "|" + _local_id(engine.pool)
    return ident


def connection_variant(conn: Connection) -> str | None:
    """The connection's ``schema_translate_map`` when it differs from its engine's."""
    own = conn.get_execution_options().get("schema_translate_map")
    if own == conn.engine.get_execution_options().get("schema_translate_map"):
        return None
    return _schema_map({"schema_translate_map": own}) or "{}"


def connection_taint(conn: Connection) -> str | None:
    """Why *conn*'s state may change answers unseen by the key, or None.

    The state-changing SQL its DBAPI connection ran (``SET ...``), or :data:`UNWATCHED` for a
    connection whose engine got the listeners while it was checked out: what it ran before
    (``SET``, writes, the transaction's first read) is unknown.
    """
    info = conn.info
    taint: str | None = info.get(TAINT_KEY)
    if taint is None and WATCHED_KEY not in info:
        return UNWATCHED
    return taint


# -- SQL that changes connection state ------------------------------------------------------

Scope = Literal["transaction", "connection"]
StateChange = tuple[Scope, str]

_LEAD = r"(?:^|;)\s*(?:(?:/\*.*?\*/|--[^\n]*(?:\n|$))\s*)*"
_SET_STMT = re.compile(_LEAD + r"(SET|USE)\b(\s+LOCAL\b)?", re.IGNORECASE | re.DOTALL)
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
_ARG = r"(?:[^(),']|'[^']*'|\([^()]*\))*"
_SET_CONFIG_LOCAL = re.compile(
    r"\bset_config\s*\(" + _ARG + "," + _ARG + r",\s*true\s*\)", re.IGNORECASE
)


_ISOLATION_SQL = re.compile(
    r"\bISOLATION\s+LEVEL\b|tx_isolation|transaction_isolation|\bCHARACTERISTICS\b",
    re.IGNORECASE,
)


def changes_isolation(sql: str) -> bool:
    """Whether state-changing *sql* (``SET TRANSACTION ISOLATION LEVEL ...``, ``SET SESSION
    CHARACTERISTICS ...``, ``SET tx_isolation``) may change the transaction's isolation: not
    state a ``vary_on`` key can capture, since it changes which snapshot reads see."""
    return _ISOLATION_SQL.search(sql) is not None


def state_change(sql: str, postgresql: bool = True) -> StateChange | None:
    """Whether *sql* changes session state that can change answers, and for how long.

    On PostgreSQL ``SET LOCAL ...`` and ``set_config(..., true)`` (a literal ``true``) last
    for the transaction. Any other ``SET`` (search_path, ROLE, SESSION AUTHORIZATION, MariaDB
    ``@var``, ``SESSION`` and ``LOCAL`` variables), ``USE db`` and ``set_config`` last for
    the DBAPI connection. None when *sql* changes no state.
    """
    scope: Scope | None = None
    for m in _SET_STMT.finditer(sql):
        if m.group(1).upper() == "USE" or not m.group(2) or not postgresql:
            return "connection", sql[m.start(1) : m.start(1) + 120]
        scope = "transaction"
    calls = len(_SET_CONFIG.findall(sql))
    if calls:
        if calls > len(_SET_CONFIG_LOCAL.findall(sql)):
            return "connection", sql[:120]
        scope = "transaction"
    return None if scope is None else (scope, sql[:120])
