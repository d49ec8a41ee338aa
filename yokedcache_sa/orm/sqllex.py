"""SQL text as tokens, under one lexical reading: the lexer of the raw-SQL scanner.

Pure (no SQLAlchemy, no I/O). A reading is standard SQL, or MySQL/MariaDB's (backslash
escapes in every string, ``#`` comments); :mod:`.sqlwrites` and :mod:`.sqlreads` scan under
both when they could differ. Text the lexer cannot account for raises :class:`Unparsable`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Name", "Tok", "Unparsable", "statements", "tokens", "word"]


@dataclass(frozen=True)
class Name:
    """A (possibly qualified) table name as written: ``quoted`` parts keep their case."""

    table: str
    schema: str | None = None
    quoted: bool = False


class Unparsable(Exception):
    """The text is outside what the scanner reads with confidence (the message says where)."""


# kinds: w = word, q = quoted identifier, s = string, p = punctuation, x = parameter/number
Tok = tuple[str, str]

_WORD = re.compile(r"[A-Za-z_\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*")
_NUM = re.compile(r"\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+")
_PARAM = re.compile(r"%\(\w+\)s|%s|\?|:\w+|\$\d+")
_DOLLAR = re.compile(r"\$([A-Za-z_]\w*)?\$")


def tokens(sql: str, mysql: bool) -> list[Tok]:
    """The tokens of *sql* under the MySQL reading (*mysql*) or the standard one."""
    out: list[Tok] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i) or (mysql and c == "#"):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            if sql.startswith(("/*!", "/*M!"), i):
                raise Unparsable("a MySQL executable comment")
            depth, j = 1, i + 2
            while depth:
                if j >= n:
                    raise Unparsable("an unterminated comment")
                if sql.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                elif not mysql and sql.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                else:
                    j += 1
            i = j
        elif c in "'\"`":
            backslash = mysql or (
                c == "'" and i > 0 and sql[i - 1] in "eE" and (i < 2 or not sql[i - 2].isalnum())
            )
            j = i + 1
            buf: list[str] = []
            while True:
                if j >= n:
                    raise Unparsable("an unterminated quote")
                ch = sql[j]
                if backslash and ch == "\\" and c != "`":
                    buf.append(sql[j : j + 2])
                    j += 2
                elif ch == c:
                    if j + 1 < n and sql[j + 1] == c:
                        buf.append(c)
                        j += 2
                    else:
                        j += 1
                        break
                else:
                    buf.append(ch)
                    j += 1
            if c == "'":
                out.append(("s", ""))
            else:
                out.append(("q", "".join(buf)))
            i = j
        elif c == "$" and not mysql and (m := _DOLLAR.match(sql, i)):
            end = sql.find(m.group(0), m.end())
            if end < 0:
                raise Unparsable("an unterminated dollar quote")
            out.append(("s", ""))
            i = end + len(m.group(0))
        elif (m := _PARAM.match(sql, i)) and (c != ":" or not sql.startswith("::", i)):
            out.append(("x", m.group(0)))
            i = m.end()
        elif m := _WORD.match(sql, i):
            out.append(("w", m.group(0)))
            i = m.end()
        elif m := _NUM.match(sql, i):
            out.append(("x", m.group(0)))
            i = m.end()
        elif sql.startswith("::", i):
            out.append(("p", "::"))
            i += 2
        else:
            out.append(("p", c))
            i += 1
    return out


def word(tok: Tok | None) -> str:
    """The upper-cased text of a word token; "" for any other token or None."""
    return tok[1].upper() if tok is not None and tok[0] == "w" else ""


def statements(toks: list[Tok]) -> list[list[Tok]]:
    """*toks* split at ``;`` (empty statements dropped)."""
    out: list[list[Tok]] = [[]]
    for tok in toks:
        if tok == ("p", ";"):
            out.append([])
        else:
            out[-1].append(tok)
    return [s for s in out if s]
