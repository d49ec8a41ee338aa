"""Which tables a statement reads or writes, including FK cascades and raw SQL text."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import MetaData, Table
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.expression import TableClause
from sqlalchemy.sql.functions import FunctionElement

from ..tags import ALL_TAG, table_tag
from . import _compat, sqltext
from .sqltext import Name

if TYPE_CHECKING:
    from sqlalchemy.engine.interfaces import Dialect
    from sqlalchemy.sql.elements import ClauseElement

__all__ = [
    "MetadataSet",
    "Rendered",
    "StatementFacts",
    "cascade_closure",
    "declare_dependency",
    "dependencies",
    "facts_of_statement",
    "read_tables",
    "render",
    "rendered_tables",
    "tables_in",
    "tags_of",
    "tags_of_names",
    "with_aliases",
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
    return frozenset(_tag_of(t) for t in tables)


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
        out.add(_tag_of(table))
    entity = _compat.table_parent_entity(table)
    if entity is not None:
        for t in getattr(entity, "tables", ()):
            out.add(_tag_of(t))
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
    tags = frozenset(_tag_of(t) for t in metadata.tables.values())
    _known_tags_cache[metadata] = (len(metadata.tables), tags)
    return tags


class MetadataSet:
    """MetaData objects held weakly; :meth:`members` is one cheap call (the write path asks
    for them at every statement, where iterating a ``WeakSet`` costs five calls)."""

    __slots__ = ("_lock", "_refs", "_set")

    def __init__(self, items: Iterable[MetaData] = ()) -> None:
        self._lock = threading.Lock()
        self._set: weakref.WeakSet[MetaData] = weakref.WeakSet(items)
        self._refs: tuple[weakref.ref[MetaData], ...] = tuple(map(weakref.ref, self._set))

    def add(self, md: MetaData) -> None:
        if md in self._set:
            return
        with self._lock:
            self._set.add(md)
            self._refs = tuple(map(weakref.ref, self._set))  # the dead ones dropped too

    def members(self) -> list[MetaData]:
        """The live members, in no particular order."""
        return [m for r in self._refs if (m := r()) is not None]

    def __contains__(self, md: object) -> bool:
        return md in self._set

    def __iter__(self) -> Iterator[MetaData]:
        return iter(self.members())

    def __len__(self) -> int:
        return len(self.members())


# -- FK cascades and declared dependencies ------------------------------------------------

_cascade_cache: weakref.WeakKeyDictionary[MetaData, tuple[int, dict[str, set[str]]]] = (
    weakref.WeakKeyDictionary()
)
DEPENDENTS_KEY: Final = "yokedcache_dependents"  # in MetaData.info: base tag -> dependent tags
# declarations naming no MetaData and no Table (the two-argument string form): they hold for
# every metadata, as before declarations moved to MetaData.info
_UNATTACHED: Final = MetaData(info={DEPENDENTS_KEY: {}})
# which MetaData hold declarations (an index, weakly: the declarations are their info's),
# so that a process that writes before it has read a table of them still applies them
_declaring = MetadataSet([_UNATTACHED])


def declare_dependency(
    table: str | Table, depends_on: Iterable[str | Table], *, metadata: MetaData | None = None
) -> None:
    """Declare that *table* (a view, a trigger-fed table) changes when *depends_on* change.

    A write to any of *depends_on* then also invalidates results that read *table*.

    The declaration is kept in ``metadata.info["yokedcache_dependents"]``: of *metadata*,
    else of the MetaData of the first :class:`~sqlalchemy.Table` among the arguments. With
    names only and no *metadata* it holds for every MetaData in the process.

    Example::

        declare_dependency("user_stats_view", ["users", "orders"], metadata=Base.metadata)
        declare_dependency(audit_log, [orders])  # Table objects: their MetaData

    Changed in 0.2: takes Table objects and ``metadata=``; kept on ``MetaData.info``.
    """
    bases = list(depends_on)
    if metadata is None:
        metadata = next((t.metadata for t in (table, *bases) if isinstance(t, Table)), _UNATTACHED)
    declared: dict[str, set[str]] = metadata.info.setdefault(DEPENDENTS_KEY, {})
    _declaring.add(metadata)
    dependent = _tag_of(table) if isinstance(table, Table) else table_tag(table)
    for base in bases:
        base_tag = _tag_of(base) if isinstance(base, Table) else table_tag(base)
        declared.setdefault(base_tag, set()).add(dependent)


def dependencies(metadatas: Iterable[MetaData] = ()) -> dict[str, frozenset[str]]:
    """The declared dependencies of *metadatas* and the unattached ones, base table tag ->
    dependent table tags."""
    out: dict[str, set[str]] = {}
    for md in {*_declaring.members(), *metadatas}:
        for base, deps in md.info.get(DEPENDENTS_KEY, {}).items():
            out.setdefault(base, set()).update(deps)
    return {k: frozenset(v) for k, v in out.items()}


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
    metadatas = list(metadatas)
    maps = [_fk_map(m) for m in metadatas]
    maps.extend(
        m.info[DEPENDENTS_KEY]
        for m in {*_declaring.members(), *metadatas}
        if DEPENDENTS_KEY in m.info
    )
    out = set(tags)
    todo = list(out)
    while todo:
        t = todo.pop()
        nxt: set[str] = set()
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
