"""Which tables a statement reads or writes, raw SQL text included (what else a write
changes, through FK cascades and declared dependencies, is in :mod:`.dependents`)."""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import MetaData
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.functions import FunctionElement

from ..tags import table_tag
from . import _compat, sqltext
from .sqltext import Name

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.sql.elements import ClauseElement

__all__ = [
    "Rendered",
    "StatementFacts",
    "facts_of_statement",
    "read_tables",
    "render",
    "rendered_tables",
    "tables_in",
    "tag_of",
    "tags_of",
    "tags_of_names",
    "with_aliases",
    "written_tables_of_sql",
]

log = logging.getLogger("yokedcache_sa")


def tag_of(t: TableClause) -> str:
    return table_tag(t.name, getattr(t, "schema", None))


def tables_in(element: object) -> frozenset[str]:
    """Tags of every table referenced anywhere inside a Core element (FROM, JOIN,
    subqueries, CTEs, aliases)."""
    out: set[str] = set()
    for el in visitors.iterate(element):  # type: ignore[arg-type]
        if isinstance(el, TableClause):
            out.add(tag_of(el))
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
    r = render(statement, dialect)
    return r.tables, r.text


@dataclass(frozen=True)
class Rendered:
    """What compiling a statement once for a dialect tells."""

    tables: frozenset[TableClause]  # every table rendered as a FROM, at any depth
    text: bool  # raw SQL text was rendered (its tables cannot be known)
    sql: str
    core: object  # the Core statement an ORM statement compiled to (else the statement)


def render(statement: ClauseElement, dialect: Dialect) -> Rendered:
    """Compile *statement* once for *dialect*; see :func:`rendered_tables`."""
    compiler = _recording_compiler(dialect.statement_compiler)(dialect, statement)
    core = getattr(getattr(compiler, "compile_state", None), "statement", None)
    return Rendered(
        frozenset(compiler.yc_tables),
        compiler.yc_text,
        compiler.string,
        core if core is not None else statement,
    )


def tags_of(tables: Iterable[TableClause]) -> frozenset[str]:
    """The tags of *tables*."""
    return frozenset(tag_of(t) for t in tables)


def read_tables(statement: ClauseElement, dialect: Dialect) -> frozenset[str] | None:
    """Tags of the tables a SELECT reads as *dialect* renders it; None when raw SQL text
    inside it may read tables nobody can name."""
    tables, text = rendered_tables(statement, dialect)
    return None if text else tags_of(tables)


# -- writes -------------------------------------------------------------------------------


def tags_of_names(names: Iterable[Name]) -> frozenset[str]:
    """Tags a write of *names* (from raw SQL) must bump.

    Over-approximates on purpose: the name as written and lower-cased (PostgreSQL folds
    unquoted names, MariaDB may compare them case-insensitively), and a qualified name also
    as a bare one (its schema or database may be the connection's default).
    """
    out: set[str] = set()
    for n in names:
        for table in {n.table, n.table.lower()}:
            out.add(table_tag(table))
            if n.schema:
                for schema in {n.schema, n.schema.lower()}:
                    out.add(table_tag(table, schema))
    return frozenset(out)


def written_tables_of_sql(sql: str) -> frozenset[str] | None:
    """Tags of the tables a raw SQL string writes.

    Returns an empty set for statements that write nothing, and None when the statement may
    write but its targets cannot be determined with confidence (the caller then invalidates
    everything and logs why). Functions the string calls are not considered here.
    """
    scan = sqltext.scan_sql(sql)
    return None if scan.written is None else tags_of_names(scan.written)


@dataclass(frozen=True)
class StatementFacts:
    """What executing a statement does, as far as its structure and SQL text tell.

    ``written``: tags of the tables it writes (None: may write, targets unknown — ``why``);
    ``functions``: lower-case names of the SQL functions it calls.
    """

    written: frozenset[str] | None
    functions: frozenset[str]
    why: str = ""


def _fragments(statement: object) -> Iterator[str]:
    """SQL text embedded in a Core element: ``text()`` clauses and literal columns."""
    for el in visitors.iterate(statement):  # type: ignore[arg-type]
        if isinstance(el, TextClause):
            yield el.text
        elif isinstance(el, ColumnClause) and el.is_literal:
            yield el.name


def _dml_tables(el: UpdateBase) -> set[str]:
    out: set[str] = set()
    table = getattr(el, "table", None)
    if isinstance(table, TableClause):
        out.add(tag_of(table))
    entity = _compat.table_parent_entity(table)
    if entity is not None:
        for t in getattr(entity, "tables", ()):
            out.add(tag_of(t))
    if not out and table is not None:
        out |= tables_in(table)
    # MySQL multi-table UPDATE … FROM / extra froms
    for extra in _compat.dml_extra_froms(el):
        out |= tables_in(extra)
    return out


def facts_of_statement(statement: object) -> StatementFacts:
    """Writes and function calls of a Core/ORM statement, DML inside CTEs (at any depth)
    and SQL text fragments included."""
    if isinstance(statement, TextClause):
        scan = sqltext.scan_sql(statement.text)
        written = None if scan.written is None else tags_of_names(scan.written)
        return StatementFacts(written, scan.functions, scan.why)
    out: set[str] = set()
    functions: set[str] = set()
    for el in visitors.iterate(statement):  # type: ignore[arg-type]
        if isinstance(el, UpdateBase):
            tables = _dml_tables(el)
            if not tables:
                return StatementFacts(None, frozenset(functions), "DML on an unknown table")
            out |= tables
        elif isinstance(el, FunctionElement):
            name = getattr(el, "name", None) or type(el).__name__
            packages = getattr(el, "packagenames", None) or ()
            functions.add(".".join((*packages, name)).lower())
    for sql in _fragments(statement):
        scan = sqltext.scan_fragment(sql)
        functions |= scan.functions
        if scan.written is None:
            return StatementFacts(None, frozenset(functions), scan.why)
        out |= tags_of_names(scan.written)
    return StatementFacts(frozenset(out), frozenset(functions))


def written_tables_of_statement(statement: object) -> frozenset[str] | None:
    """Tags of the tables a Core/ORM DML statement writes (None if not determinable)."""
    facts = facts_of_statement(statement)
    if facts.written is not None and not facts.written and isinstance(statement, UpdateBase):
        return None
    return facts.written


def with_aliases(
    tags: Iterable[str], default_schema: str | None, metadatas: Iterable[MetaData]
) -> frozenset[str]:
    """*tags* plus the other tags reads of the same tables may carry.

    A table in the connection's default schema is read as ``table:t`` or, through a
    ``Table(..., schema=...)``, as ``table:<schema>.t``: a write of either bumps both. Known
    tables whose names differ only in case are included too (over-invalidation is safe).
    """
    out = set(tags)
    for tag in list(out):
        if not tag.startswith("table:"):
            continue
        name = tag[len("table:") :]
        if default_schema:
            if "." not in name:
                out.add(table_tag(name, default_schema))
            else:
                schema, _, table = name.rpartition(".")
                if schema.lower() == default_schema.lower():
                    out.add(table_tag(table))
    folded = {t.lower() for t in out}
    for md in metadatas:
        for known in _known_tags(md):
            if known.lower() in folded:
                out.add(known)
    return frozenset(out)


_known_tags_cache: weakref.WeakKeyDictionary[MetaData, tuple[int, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def _known_tags(metadata: MetaData) -> frozenset[str]:
    cached = _known_tags_cache.get(metadata)
    if cached is not None and cached[0] == len(metadata.tables):
        return cached[1]
    tags = frozenset(tag_of(t) for t in metadata.tables.values())
    _known_tags_cache[metadata] = (len(metadata.tables), tags)
    return tags
