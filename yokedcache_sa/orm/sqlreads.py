"""What a query reads (a view's definition): tables and functions, from its SQL text.

Pure (no SQLAlchemy, no I/O), conservative like :mod:`.sqlwrites`: a query it cannot read
with confidence, or one that may write, is reported as "cannot tell" (None).
"""

from __future__ import annotations

from dataclasses import dataclass

from .sqllex import Name, Tok, Unparsable, statements, tokens, word
from .sqlwrites import Parser, scan_tokens

__all__ = ["Reads", "scan_reads"]


@dataclass(frozen=True)
class Reads:
    """What a query (a view's definition) reads: ``tables`` None = cannot tell (``why``)."""

    tables: frozenset[Name] | None
    functions: frozenset[str]
    why: str = ""


_FROM_WORDS = frozenset({"FROM", "JOIN", "STRAIGHT_JOIN"})
# words that end a FROM list at their paren level
_FROM_END = frozenset(
    {"WHERE", "GROUP", "HAVING", "ORDER", "LIMIT", "OFFSET", "FETCH", "UNION", "EXCEPT",
     "INTERSECT", "WINDOW", "QUALIFY", "RETURNING", "FOR", "SELECT", "VALUES", "INTO"}
)  # fmt: skip
_NOT_TABLES = frozenset({"LATERAL", "ONLY", "SELECT", "WITH", "VALUES", "TABLE"})


def _definition(toks: list[Tok]) -> list[Tok]:
    """The query of ``CREATE [TEMP] VIEW name [(columns)] AS query``, or *toks* itself."""
    if word(toks[0] if toks else None) != "CREATE":
        return toks
    depth = 0
    seen_view = False
    for i, tok in enumerate(toks):
        if tok == ("p", "("):
            depth += 1
        elif tok == ("p", ")"):
            depth -= 1
        elif depth == 0 and word(tok) == "VIEW":
            seen_view = True
        elif depth == 0 and seen_view and word(tok) == "AS":
            return toks[i + 1 :]
    raise Unparsable("a CREATE statement that is not CREATE VIEW … AS")


def _read_names(toks: list[Tok]) -> set[Name]:
    """Every name in a FROM list or after JOIN, at any depth (subqueries, CTE bodies and
    parenthesised joins included). Over-reports on purpose: a CTE name or an odd ``FROM``
    inside a function call (``EXTRACT(YEAR FROM d)``) only adds a tag nobody writes."""
    p = Parser(toks)
    found: set[Name] = set()
    # per paren level: (inside a FROM list, expecting a table name)
    levels: list[list[bool]] = [[False, False]]
    i = 0
    while i < len(toks):
        tok = toks[i]
        w = word(tok)
        level = levels[-1]
        if tok == ("p", "("):
            # a parenthesised join or a subquery in a FROM list; elsewhere an expression
            levels.append([level[0] and level[1], level[0] and level[1]])
            i += 1
            continue
        if tok == ("p", ")"):
            if len(levels) > 1:
                levels.pop()
            levels[-1][1] = False
            i += 1
            continue
        if w in _FROM_WORDS:
            level[0] = level[1] = True
        elif w in _FROM_END:
            level[0] = level[1] = False
        elif w in ("ON", "USING"):
            level[1] = False
        elif tok == ("p", ",") and level[0]:
            level[1] = True
        elif level[1] and w not in _NOT_TABLES and tok[0] in "wq":
            got = p.name(i)
            if got is not None:
                level[1] = False
                if p.at(got[1]) != ("p", "("):  # name(...) is a table function
                    found.add(got[0])
                i = got[1]
                continue
        i += 1
    return found


def scan_reads(sql: str) -> Reads:
    """The tables and functions a query reads: a SELECT, or ``CREATE VIEW … AS`` one (as
    ``sqlite_master`` keeps it). None when it may write or cannot be read with confidence."""
    tables: set[Name] = set()
    functions: set[str] = set()
    readings = [False]
    if "\\" in sql or "#" in sql:
        readings.append(True)
    for mysql in readings:
        try:
            stmts = statements(tokens(sql, mysql))
            if len(stmts) != 1:
                raise Unparsable(f"{len(stmts)} statements, not one query")
            query = _definition(stmts[0])
        except Unparsable as exc:
            return Reads(None, frozenset(functions), str(exc))
        if not query or word(query[0]) not in ("SELECT", "WITH", "VALUES", "TABLE"):
            return Reads(None, frozenset(functions), "not a query")
        scan = scan_tokens(query, fragment=False)
        functions |= scan.functions
        if scan.written is None or scan.written:
            return Reads(None, frozenset(functions), scan.why or "the query writes")
        if word(query[0]) == "TABLE":
            got = Parser(query).name(1)
            if got is None:
                return Reads(None, frozenset(functions), "TABLE without a name")
            tables.add(got[0])
        tables |= _read_names(query)
    return Reads(frozenset(tables), frozenset(functions))
