"""Which tables a statement reads or writes, including FK cascades and raw SQL text."""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData, Table
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.expression import TableClause

from ..tags import ALL_TAG, table_tag

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.sql.elements import ClauseElement

__all__ = [
    "cascade_closure",
    "declare_dependency",
    "dependencies",
    "read_tables",
    "render",
    "rendered_tables",
    "tables_in",
    "tags_of",
    "written_tables_of_sql",
]

log = logging.getLogger("yokedcache_sa")


def _tag_of(t: TableClause) -> str:
    return table_tag(t.name, getattr(t, "schema", None))


def tables_in(element: object) -> frozenset[str]:
    """Tags of every table referenced anywhere inside a Core element (FROM, JOIN,
    subqueries, CTEs, aliases)."""
    out: set[str] = set()
    for el in visitors.iterate(element):  # type: ignore[arg-type]
        if isinstance(el, TableClause):
            out.add(_tag_of(el))
    return frozenset(out)


class _RenderedTables:
    """Mixin for a dialect's statement compiler: records every table it renders as a FROM
    (at any nesting level, ORM expansions included) and whether raw SQL text was rendered."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.yc_tables: set[TableClause] = set()
        self.yc_text = False
        super().__init__(*args, **kw)

    def visit_table(self, table: TableClause, **kw: Any) -> str:
        if kw.get("asfrom") or kw.get("within_tstring"):
            self.yc_tables.add(table)
        return super().visit_table(table, **kw)  # type: ignore[misc, no-any-return]

    def visit_textclause(self, element: Any, **kw: Any) -> str:
        self.yc_text = True
        return super().visit_textclause(element, **kw)  # type: ignore[misc, no-any-return]

    def visit_textual_select(self, element: Any, **kw: Any) -> str:
        self.yc_text = True
        return super().visit_textual_select(element, **kw)  # type: ignore[misc, no-any-return]


_recorders: dict[type[Any], type[Any]] = {}


def _recording_compiler(cls: type[Any]) -> type[Any]:
    sub = _recorders.get(cls)
    if sub is None:
        sub = type(f"YokedCacheRecording{cls.__name__}", (_RenderedTables, cls), {})
        sub = _recorders.setdefault(cls, sub)
    return sub


def rendered_tables(
    statement: ClauseElement, dialect: Dialect
) -> tuple[frozenset[TableClause], bool]:
    """The tables the SQL of *statement* names as FROMs for *dialect*, and whether it
    contains raw SQL text (whose tables cannot be known).

    The statement is compiled once with the dialect's own compiler class, so what is recorded
    is exactly what the database is sent: ORM constructs expanded only at compile time
    (relationship joins inside subqueries or ``exists()``, ``column_property`` subqueries,
    loader criteria, joined inheritance, joined eager loads) included.
    """
    tables, text, _sql = render(statement, dialect)
    return tables, text


def render(statement: ClauseElement, dialect: Dialect) -> tuple[frozenset[TableClause], bool, str]:
    """:func:`rendered_tables` plus the SQL string itself."""
    compiler = _recording_compiler(dialect.statement_compiler)(dialect, statement)
    return frozenset(compiler.yc_tables), compiler.yc_text, compiler.string


def tags_of(tables: Iterable[TableClause]) -> frozenset[str]:
    """The tags of *tables*."""
    return frozenset(_tag_of(t) for t in tables)


def read_tables(statement: ClauseElement, dialect: Dialect) -> frozenset[str] | None:
    """Tags of the tables a SELECT reads as *dialect* renders it; None when raw SQL text
    inside it may read tables nobody can name."""
    tables, text = rendered_tables(statement, dialect)
    return None if text else tags_of(tables)


# -- writes -------------------------------------------------------------------------------

_WRITE_VERB = re.compile(
    r"^\s*(?:/\*.*?\*/\s*)*(INSERT|UPDATE|DELETE|REPLACE|MERGE|TRUNCATE|UPSERT|ALTER|DROP|"
    r"CREATE|RENAME|COPY|LOAD|CALL|EXEC|EXECUTE|DO|GRANT|REVOKE|VACUUM|ANALYZE|SET|BEGIN|"
    r"COMMIT|ROLLBACK|SAVEPOINT|RELEASE|WITH|SELECT|SHOW|EXPLAIN|PRAGMA|DESCRIBE|VALUES)\b",
    re.IGNORECASE | re.DOTALL,
)
_NAME = r"((?:[`\"\[]?[\w$]+[`\"\]]?\.)?[`\"\[]?[\w$]+[`\"\]]?)"
_TARGET = re.compile(
    r"^\s*(?:INSERT\s+(?:(?:LOW_PRIORITY|DELAYED|HIGH_PRIORITY|IGNORE|OR\s+\w+)\s+)*(?:INTO\s+)?"
    r"|REPLACE\s+(?:(?:LOW_PRIORITY|DELAYED)\s+)?(?:INTO\s+)?"
    r"|UPDATE\s+(?:(?:LOW_PRIORITY|IGNORE|OR\s+\w+|ONLY)\s+)*"
    r"|DELETE\s+(?:(?:LOW_PRIORITY|QUICK|IGNORE)\s+)*FROM\s+(?:ONLY\s+)?"
    r"|TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?)" + _NAME + r"\s*(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_READ_ONLY = frozenset(
    {
        "SELECT",
        "SHOW",
        "EXPLAIN",
        "PRAGMA",
        "DESCRIBE",
        "VALUES",
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "ANALYZE",
    }
)


def _unquote(name: str) -> str:
    return ".".join(p.strip('`"[]') for p in name.split("."))


def written_tables_of_sql(sql: str) -> frozenset[str] | None:
    """Tags of the tables a raw SQL string writes.

    Returns an empty set for statements that write nothing, and None when the statement may
    write but its targets cannot be determined with confidence (the caller then invalidates
    everything and logs why).
    """
    m = _WRITE_VERB.match(sql)
    if m is None:
        return None
    verb = m.group(1).upper()
    if verb in _READ_ONLY:
        if verb == "SELECT" and re.search(r"\bINTO\b", sql, re.IGNORECASE):
            return None  # SELECT … INTO creates or writes a table
        return frozenset()
    if verb in (
        "WITH",
        "MERGE",
        "UPSERT",
        "ALTER",
        "DROP",
        "CREATE",
        "RENAME",
        "COPY",
        "LOAD",
        "CALL",
        "EXEC",
        "EXECUTE",
        "DO",
        "GRANT",
        "REVOKE",
        "VACUUM",
    ):
        if verb == "WITH" and not re.search(
            r"\b(INSERT|UPDATE|DELETE|MERGE)\b", sql, re.IGNORECASE
        ):
            return frozenset()
        return None
    body = sql.strip().rstrip(";")
    if ";" in body:
        return None  # several statements in one string
    t = _TARGET.match(body)
    if t is None:
        return None
    name, rest = _unquote(t.group(1)), t.group(2)
    if verb in ("UPDATE", "DELETE") and re.search(
        r"\bJOIN\b|,\s*[\w`\"]",
        rest.split(" SET ")[0] if verb == "UPDATE" else rest.split(" WHERE ")[0],
        re.IGNORECASE,
    ):
        return None  # multi-table UPDATE/DELETE (MySQL): targets unclear
    schema, _, table = name.rpartition(".")
    return frozenset({table_tag(table, schema or None)})


def written_tables_of_statement(statement: object) -> frozenset[str] | None:
    """Tags of the tables a Core/ORM DML statement writes (None if not determinable)."""
    if isinstance(statement, UpdateBase):
        table = getattr(statement, "table", None)
        out: set[str] = set()
        if isinstance(table, TableClause):
            out.add(_tag_of(table))
        entity = getattr(table, "_annotations", {}).get("parententity")
        if entity is not None:
            for t in getattr(entity, "tables", ()):
                out.add(_tag_of(t))
        # MySQL multi-table UPDATE … FROM / extra froms
        for extra in getattr(statement, "_extra_froms", ()) or ():
            out |= tables_in(extra)
        return frozenset(out) if out else None
    if isinstance(statement, TextClause):
        return written_tables_of_sql(statement.text)
    return None


# -- FK cascades and declared dependencies ------------------------------------------------

_cascade_cache: weakref.WeakKeyDictionary[MetaData, tuple[int, dict[str, set[str]]]] = (
    weakref.WeakKeyDictionary()
)
_declared: dict[str, set[str]] = {}


def declare_dependency(table: str, depends_on: Iterable[str]) -> None:
    """Declare that *table* (a view, a trigger-fed table) changes when *depends_on* change.

    A write to any of *depends_on* then also invalidates results that read *table*.

    Example::

        declare_dependency("user_stats_view", ["users", "orders"])
    """
    for base in depends_on:
        _declared.setdefault(table_tag(base), set()).add(table_tag(table))


def dependencies() -> dict[str, frozenset[str]]:
    """The declared dependencies, base table tag -> dependent table tags."""
    return {k: frozenset(v) for k, v in _declared.items()}


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
                rev.setdefault(_tag_of(parent), set()).add(_tag_of(t))
    _cascade_cache[metadata] = (len(metadata.tables), rev)
    return rev


def cascade_closure(tags: Iterable[str], metadatas: Iterable[MetaData]) -> frozenset[str]:
    """*tags* plus every table changed by FK ON DELETE/UPDATE actions or declared
    dependencies, transitively."""
    maps = [_fk_map(m) for m in metadatas]
    out = set(tags)
    todo = list(out)
    while todo:
        t = todo.pop()
        nxt: set[str] = set(_declared.get(t, ()))
        for rev in maps:
            nxt |= rev.get(t, set())
        for n in nxt - out:
            out.add(n)
            todo.append(n)
    if ALL_TAG in out:
        return frozenset({ALL_TAG})
    return frozenset(out)


def metadata_of(table: object) -> MetaData | None:
    """The MetaData a Table belongs to, if any."""
    return table.metadata if isinstance(table, Table) else None
