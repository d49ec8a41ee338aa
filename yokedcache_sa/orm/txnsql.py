"""What a statement does to its database transaction, read from the statement alone: ends
it (transaction control sent as text), is transaction control, may have aborted it when it
failed; and on which databases a read of no rows takes no snapshot."""

from __future__ import annotations

import re
from typing import Any, Final

from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from .pgwrites import pq_aborted

__all__ = [
    "ENDS_TXN",
    "ENDS_TXN_MYSQL",
    "NO_ROWS_NO_VIEW",
    "TXN_CONTROL",
    "ends_transaction",
    "may_abort",
]


ENDS_TXN: Final = re.compile(
    r"(?:^|;)\s*(?:COMMIT|END|BEGIN|START\s+TRANSACTION|ROLLBACK(?!\s+(?:WORK\s+|TRANSACTION\s+)?TO\b))\b",
    re.IGNORECASE,
)
"""SQL that ends the open database transaction (sent as text, not by SQLAlchemy)."""
ENDS_TXN_MYSQL: Final = re.compile(
    r"(?:^|;)\s*(?:(?:UN)?LOCK\s+TABLES?|FLUSH|(?:ANALYZE|OPTIMIZE|REPAIR|CHECK)\s+TABLE)\b",
    re.IGNORECASE,
)
"""Statements that commit implicitly on MariaDB/MySQL (besides DDL, counted as writes)."""


def ends_transaction(conn: Connection, statement: str, context: Any) -> bool:
    """Whether *statement*, sent as text, ends the open database transaction (``COMMIT``,
    ``BEGIN``...; on MariaDB/MySQL also a statement that commits implicitly)."""
    compiled = getattr(context, "compiled", None)
    if compiled is not None and not isinstance(getattr(compiled, "statement", None), TextClause):
        return False
    if ENDS_TXN.search(statement):
        return True
    return conn.dialect.name in NO_ROWS_NO_VIEW and ENDS_TXN_MYSQL.search(statement) is not None


TXN_CONTROL: Final = re.compile(r"\s*(BEGIN|SET|SAVEPOINT|RELEASE|ROLLBACK)\b", re.IGNORECASE)
"""Transaction control and session settings: nothing to recount before them (a ROLLBACK TO
SAVEPOINT runs in a transaction still aborted)."""


NO_ROWS_NO_VIEW: Final = frozenset({"mysql", "mariadb"})
"""Dialects whose snapshot begins at the first read of rows (InnoDB): a SELECT the optimizer
answers without reading any (an impossible WHERE such as an empty ``in_()``, ``LIMIT 0``)
creates no read view."""


def may_abort(conn: Connection, context: Any) -> bool:
    """Whether a failed statement may have left the database transaction aborted: not when
    it failed before it was sent (building it: a bind processor raised), nor, on PostgreSQL
    through a driver that reports libpq's transaction status, when that status is not
    aborted (psycopg refusing a parameter it cannot adapt). Such a transaction goes on, and
    its COMMIT commits what its triggers wrote, which must be counted then."""
    if context.statement is not None and context.execution_context is None:
        return False  # never sent (a failed COMMIT or ROLLBACK has no statement)
    if conn.dialect.name != "postgresql" or context.is_disconnect:
        return True
    return pq_aborted(conn) is not False
