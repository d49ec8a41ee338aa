"""What a raw SQL string writes and which functions it calls: a small, conservative scanner.

Pure (no SQLAlchemy, no I/O). It never under-reports: a statement it cannot account for is
reported as "unknown" (None) and the caller invalidates everything.

Tokens (:mod:`.sqllex`) are produced under two lexical readings when they could differ
(backslash escapes and ``#`` comments of MySQL/MariaDB vs standard SQL); the results are
merged, so a write hidden from one reading is still seen.
"""

from __future__ import annotations

from dataclasses import dataclass

from .sqllex import Name, Tok, Unparsable, statements, tokens, word

__all__ = ["Parser", "Scan", "scan_fragment", "scan_sql", "scan_tokens"]


@dataclass(frozen=True)
class Scan:
    """What a SQL string does: ``written`` None = may write, targets unknown (``why`` says)."""

    written: frozenset[Name] | None
    functions: frozenset[str]
    why: str = ""


# -- statement structure ------------------------------------------------------------------

_READ_VERBS = frozenset(
    {
        "SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN", "DESCRIBE", "DESC", "PRAGMA",
        "BEGIN", "START", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "ANALYZE",
        "LISTEN", "UNLISTEN", "NOTIFY", "FETCH", "CLOSE", "DECLARE", "CHECKPOINT", "DISCARD",
        "RESET", "LOCK", "UNLOCK", "USE", "XA", "HELP",
    }
)  # fmt: skip
_DML_VERBS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "TRUNCATE"})
_INSERT_MODS = frozenset(
    {"LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "OR", "REPLACE", "ROLLBACK",
     "ABORT", "FAIL"}
)  # fmt: skip
_UPDATE_MODS = frozenset(
    {"LOW_PRIORITY", "IGNORE", "ONLY", "OR", "REPLACE", "ROLLBACK", "ABORT", "FAIL"}
)
_TRUNCATE_TAIL = frozenset({"RESTART", "CONTINUE", "IDENTITY", "RESTRICT"})
_DELETE_MODS = frozenset({"LOW_PRIORITY", "QUICK", "IGNORE"})
_JOIN_WORDS = frozenset({"JOIN", "STRAIGHT_JOIN"})
_REGION_END = frozenset(
    {"WHERE", "SET", "ORDER", "LIMIT", "RETURNING", "ON", "USING", "FROM", "GROUP", "HAVING",
     "WINDOW", "UNION", "EXCEPT", "INTERSECT", "FOR", "OUTPUT"}
)  # fmt: skip
# a word before "(" that is not a function call
_NOT_FUNCTIONS = frozenset(
    {
        "IN", "EXISTS", "ANY", "ALL", "SOME", "VALUES", "AS", "OVER", "FILTER", "WITHIN",
        "USING", "ON", "AND", "OR", "NOT", "WHERE", "SELECT", "FROM", "JOIN", "BY", "IS",
        "WHEN", "THEN", "ELSE", "CASE", "LATERAL", "ROW", "INTO", "TABLE", "CONFLICT", "SET",
        "UPDATE", "DELETE", "INSERT", "WITH", "RECURSIVE", "MATERIALIZED", "UNION",
        "EXCEPT", "INTERSECT", "HAVING", "LIKE", "ILIKE", "BETWEEN", "RETURNING", "KEY",
        "PRIMARY", "UNIQUE", "CHECK", "REFERENCES", "INDEX", "ARRAY", "CAST", "TRY_CAST",
        "CONVERT", "EXTRACT", "POSITION", "SUBSTRING", "TRIM", "OVERLAY", "INTERVAL", "DO",
        "LIMIT", "OFFSET", "FETCH", "WINDOW", "PARTITION", "RANGE", "ROWS", "GROUPS", "TO",
        "OF", "FOR", "DISTINCT", "RETURN", "OVERRIDING", "DEFAULT", "NULLS", "ORDER",
        "GROUP", "CUBE", "ROLLUP", "GROUPING", "SETS", "MATCH", "AGAINST", "COLLATE",
        "ESCAPE", "SIMILAR", "ISNULL", "NOTNULL", "NATURAL", "CROSS", "INNER", "LEFT",
        "RIGHT", "FULL", "OUTER", "STRAIGHT_JOIN", "TABLESAMPLE", "REPEATABLE",
        "ONLY", "UNNEST_ORDINALITY", "ORDINALITY", "MERGE", "MATCHED", "SOURCE", "TARGET",
        # type names in casts
        "VARCHAR", "CHAR", "CHARACTER", "VARYING", "NCHAR", "NVARCHAR", "NUMERIC", "DECIMAL",
        "DEC", "FLOAT", "DOUBLE", "REAL", "PRECISION", "INT", "INTEGER", "BIGINT", "SMALLINT",
        "TINYINT", "MEDIUMINT", "BIT", "BINARY", "VARBINARY", "TIME", "TIMESTAMP",
        "DATETIME", "TEXT", "BLOB", "SIGNED", "UNSIGNED", "ZONE", "WITHOUT", "ENUM",
    }
)  # fmt: skip

# functions called without parentheses
_BARE_FUNCTIONS = frozenset(
    {"CURRENT_TIMESTAMP", "CURRENT_DATE", "CURRENT_TIME", "LOCALTIME", "LOCALTIMESTAMP",
     "CURRENT_USER", "SESSION_USER", "SYSTEM_USER", "CURRENT_ROLE", "UTC_TIMESTAMP",
     "UTC_DATE", "UTC_TIME", "SYSDATE"}
)  # fmt: skip


class Parser:
    """One statement's tokens: the tables it writes, the functions it calls, table names."""

    def __init__(self, toks: list[Tok]) -> None:
        self.t = toks
        self.written: set[Name] = set()
        self.functions: set[str] = set()
        self.used: set[int] = set()  # indexes of INTO words consumed by INSERT/MERGE/REPLACE
        self.calls: dict[int, str] = {}  # index of a word followed by "(" -> function name
        self.targets: set[int] = set()  # indexes of tokens that name a written table

    def at(self, i: int) -> Tok | None:
        return self.t[i] if 0 <= i < len(self.t) else None

    def name(self, i: int) -> tuple[Name, int] | None:
        """Parse ``[schema.]table`` at *i*; return it and the index after it."""
        parts: list[tuple[str, bool]] = []
        while True:
            tok = self.at(i)
            if tok is None:
                return None
            if tok[0] == "w":
                parts.append((tok[1], False))
            elif tok[0] == "q":
                parts.append((tok[1], True))
            elif tok == ("p", "[") and self.at(i + 2) == ("p", "]"):
                inner = self.at(i + 1)
                if inner is None or inner[0] not in "wq":
                    return None
                parts.append((inner[1], True))
                i += 2
            else:
                return None
            i += 1
            if self.at(i) != ("p", ".") or len(parts) == 3:
                break
            i += 1
        if len(parts) == 3:  # database.schema.table (or catalog.schema.table)
            parts = parts[1:]
        quoted = any(q for _, q in parts)
        if len(parts) == 1:
            return Name(parts[0][0], None, quoted), i
        return Name(parts[1][0], parts[0][0], quoted), i

    def target(self, i: int, what: str) -> int:
        got = self.name(i)
        if got is None:
            raise Unparsable(f"cannot read the table {what} writes")
        self.written.add(got[0])
        self.targets.update(range(i, got[1]))
        return got[1]

    def region(self, i: int, stop: frozenset[str]) -> int:
        """Collect the table names of a FROM-like list (after the start, ``,`` and JOIN)
        until a word in *stop* at paren depth 0; return the index of that word."""
        depth, expect = 0, True
        while i < len(self.t):
            tok = self.t[i]
            w = word(tok)
            if depth == 0 and w in stop:
                return i
            if tok == ("p", "("):
                depth += 1
                expect = False
            elif tok == ("p", ")"):
                depth -= 1
            elif depth == 0 and (tok == ("p", ",") or w in _JOIN_WORDS):
                expect = True
            elif depth == 0 and expect and w not in ("ONLY", "LATERAL"):
                got = self.name(i)
                if got is not None:
                    self.written.add(got[0])
                    self.targets.update(range(i, got[1]))
                    i = got[1]
                    expect = False
                    continue
                expect = False
            i += 1
        return i

    def run(self) -> None:
        t = self.t
        for i, tok in enumerate(t):
            w = word(tok)
            prev = word(self.at(i - 1))
            nxt = self.at(i + 1)
            if nxt == ("p", "(") and (tok[0] == "q" or (w and w not in _NOT_FUNCTIONS)):
                if prev != "AS" and not self._cte_columns(i + 1):
                    fname = tok[1] if tok[0] == "q" else tok[1].lower()
                    if self.at(i - 1) == ("p", ".") and word(self.at(i - 2)):
                        fname = f"{t[i - 2][1].lower()}.{fname}"
                    self.calls[i] = fname
            elif w in _BARE_FUNCTIONS:
                self.calls[i] = w.lower()
            if w not in _DML_VERBS:
                continue
            if self.at(i - 1) == ("p", "."):
                continue  # a qualified name (schema.update)
            if w in ("INSERT", "REPLACE"):
                if nxt == ("p", "(") or prev == "OR":
                    continue  # INSERT()/REPLACE() string functions, INSERT OR REPLACE
                if w == "REPLACE" and prev in ("OR", "CREATE"):
                    continue
                j = i + 1
                while word(self.at(j)) in _INSERT_MODS:
                    j += 1
                if word(self.at(j)) == "INTO":
                    self.used.add(j)
                    j += 1
                if prev == "THEN" or word(self.at(j)) in ("VALUES", "DEFAULT", "ROW", "SELECT"):
                    continue  # MERGE … THEN INSERT: the MERGE target is recorded
                if self.at(j) == ("p", "("):
                    continue
                self.target(j, w)
            elif w == "UPDATE":
                if prev in ("FOR", "KEY", "DO", "THEN", "ON", "SHARE"):
                    continue  # FOR UPDATE, ON DUPLICATE KEY UPDATE, DO UPDATE, THEN UPDATE
                j = i + 1
                while word(self.at(j)) in _UPDATE_MODS:
                    j += 1
                if word(self.at(j)) == "SET":
                    raise Unparsable("UPDATE without a table")
                before = len(self.written)
                self.region(j, frozenset({"SET"}))
                if len(self.written) == before:
                    raise Unparsable("cannot read the tables UPDATE writes")
            elif w == "DELETE":
                if prev in ("ON", "THEN"):
                    continue  # ON DELETE CASCADE, MERGE … THEN DELETE
                j = i + 1
                while word(self.at(j)) in _DELETE_MODS:
                    j += 1
                before = len(self.written)
                if word(self.at(j)) == "FROM":
                    k = self.region(j + 1, _REGION_END)
                    if word(self.at(k)) == "USING":
                        self.region(k + 1, _REGION_END - {"USING", "FROM", "ON"} | {"WHERE"})
                else:  # DELETE t1[, t2] FROM refs (MySQL multi-table; t1 may be an alias)
                    k = self.region(j, frozenset({"FROM"}))
                    if word(self.at(k)) != "FROM":
                        raise Unparsable("cannot read the tables DELETE writes")
                    self.region(k + 1, _REGION_END - {"FROM", "ON"} | {"WHERE"})
                if len(self.written) == before:
                    raise Unparsable("cannot read the table DELETE writes")
            elif w == "MERGE":
                j = i + 1
                if word(self.at(j)) == "INTO":
                    self.used.add(j)
                    j += 1
                self.target(j, w)
            elif w == "TRUNCATE":
                if nxt == ("p", "("):
                    continue  # the TRUNCATE() numeric function
                if any(word(x) == "CASCADE" for x in t[i:]):
                    raise Unparsable("TRUNCATE … CASCADE")
                j = i + 1
                if word(self.at(j)) == "TABLE":
                    j += 1
                while True:
                    if word(self.at(j)) == "ONLY":
                        j += 1
                    j = self.target(j, w)
                    if self.at(j) == ("p", "*"):
                        j += 1
                    if self.at(j) != ("p", ","):
                        break
                    j += 1
                if any(word(x) not in _TRUNCATE_TAIL for x in t[j:]):
                    raise Unparsable("TRUNCATE with options this scanner does not know")
        self.functions.update(f for i, f in self.calls.items() if i not in self.targets)
        for i, tok in enumerate(t):
            if word(tok) == "INTO" and i not in self.used:
                raise Unparsable("SELECT … INTO or another INTO this scanner does not know")

    def _cte_columns(self, i: int) -> bool:
        """``name (a, b) AS (`` — a CTE's column list, not a call."""
        depth = 0
        for j in range(i, len(self.t)):
            if self.t[j] == ("p", "("):
                depth += 1
            elif self.t[j] == ("p", ")"):
                depth -= 1
                if depth == 0:
                    after = word(self.at(j + 1))
                    return after == "AS" and (
                        self.at(j + 2) == ("p", "(")
                        or word(self.at(j + 2)) in ("MATERIALIZED", "NOT")
                    )
        return False


def _refreshed(stmt: list[Tok]) -> Name | None:
    """The materialized view ``REFRESH MATERIALIZED VIEW [CONCURRENTLY] v [WITH [NO] DATA]``
    writes (PostgreSQL), or None for any other REFRESH."""
    p = Parser(stmt)
    if word(p.at(1)) != "MATERIALIZED" or word(p.at(2)) != "VIEW":
        return None
    j = 4 if word(p.at(3)) == "CONCURRENTLY" else 3
    got = p.name(j)
    if got is None:
        return None
    tail = [word(x) for x in stmt[got[1] :]]
    if tail not in ([], ["WITH", "DATA"], ["WITH", "NO", "DATA"]):
        return None
    return got[0]


def scan_tokens(toks: list[Tok], fragment: bool) -> Scan:
    """What the statements *toks* write (one piece of a statement if *fragment*)."""
    written: set[Name] = set()
    functions: set[str] = set()
    for stmt in statements(toks) if not fragment else [toks]:
        if not fragment:
            first = word(stmt[0]) if stmt[0][0] == "w" else ""
            if first == "REFRESH":
                refreshed = _refreshed(stmt)
                if refreshed is None:
                    return Scan(None, frozenset(), "a REFRESH this scanner does not know")
                written.add(refreshed)
                continue
            if first not in _READ_VERBS and first not in _DML_VERBS:
                return Scan(None, frozenset(), f"a {first or stmt[0][1]!r} statement")
        p = Parser(stmt)
        try:
            p.run()
        except Unparsable as exc:
            return Scan(None, frozenset(p.functions), str(exc))
        written |= p.written
        functions |= p.functions
    return Scan(frozenset(written), frozenset(functions))


def _scan(sql: str, fragment: bool) -> Scan:
    readings = [False]
    if "\\" in sql or "#" in sql:
        readings.append(True)
    results: list[Scan] = []
    for mysql in readings:
        try:
            toks = tokens(sql, mysql)
        except Unparsable as exc:
            results.append(Scan(None, frozenset(), str(exc)))
            continue
        results.append(scan_tokens(toks, fragment))
    functions = frozenset().union(*(r.functions for r in results))
    for r in results:
        if r.written is None:
            return Scan(None, functions, r.why)
    written: frozenset[Name] = frozenset().union(*(r.written or () for r in results))
    return Scan(written, functions)


def scan_sql(sql: str) -> Scan:
    """Scan one or more complete SQL statements."""
    return _scan(sql, fragment=False)


def scan_fragment(sql: str) -> Scan:
    """Scan a piece of SQL embedded in a larger statement (a ``text()`` column or clause)."""
    return _scan(sql, fragment=True)
