"""What the listener invalidates: the tags of a notification, of a batch, of a gap.

A notification's payload names the tables a commit changed (``schema.table[,…]``, sent by
the triggers of :mod:`.installer`); a payload that is not a table list, or a gap in the
notifications (a reconnect), invalidates more rather than less. :mod:`.listener` calls these.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from ..tags import table_tag
from .conninfo import PgNotifyError, quote_ident
from .conninfo import split_qualified as _split
from .installer import TRIGGER_NAME

__all__ = ["batch_tags", "gap_tags", "tags_of_payload", "watched_tags"]

log = logging.getLogger("yokedcache_sa")

_NOTIFYING = (
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_trigger t "
    "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE t.tgname = %s AND pg_catalog.encode(t.tgargs, 'escape') = %s"
)
_RESOLVE = (
    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = pg_catalog.to_regclass(%s)"
)


def tags_of_payload(payload: str) -> frozenset[str] | None:
    """The tags a notification for ``schema.table[,schema.table…]`` must invalidate.

    Both ``table:<schema>.<table>`` and ``table:<table>``: a read through a ``Table`` without
    ``schema=`` is tagged with the bare name, whatever schema the search path resolved it to.
    None for a payload that is not a table list (the caller invalidates everything).
    """
    try:
        names = _split(payload)
    except ValueError:
        return None
    out: set[str] = set()
    for schema, table in names:
        out.add(table_tag(table))
        if schema:
            out.add(table_tag(table, schema))
    return frozenset(out)


def watched_tags(tables: Iterable[str] | None) -> frozenset[str] | None:
    """The tags of the watched *tables* (None: watching everything).

    Raises:
        PgNotifyError: a name is not ``table`` or ``schema.table``.
    """
    if tables is None:
        return None
    tags: set[str] = set()
    for name in tables:
        got = tags_of_payload(name)
        if got is None:
            raise PgNotifyError(f"bad table name {name!r}: use table or schema.table")
        tags |= got
    return frozenset(tags)


def batch_tags(payloads: Sequence[str], channel: str) -> frozenset[str] | None:
    """The tags of a batch of notifications on *channel*; None (everything) if one payload
    is not a table list (logged)."""
    tags: set[str] = set()
    for p in payloads:
        got = tags_of_payload(p)
        if got is None:
            log.warning(
                "yokedcache: notification %.100r on %r is not a table list; "
                "invalidating the whole cache",
                p,
                channel,
            )
            return None
        tags |= got
    return frozenset(tags)


def gap_tags(
    conn: Any, channel: str, tables: Sequence[str] | None, watched: frozenset[str] | None
) -> frozenset[str] | None:
    """What a gap in the notifications invalidates: the *watched* tags, plus every table
    whose trigger notifies *channel* and the schema of each bare name in *tables* as *conn*
    resolves it; None (everything) when watching all or when the catalog cannot be read."""
    if watched is None:
        return None
    tags = set(watched)
    try:
        rows = conn.execute(_NOTIFYING, (TRIGGER_NAME, f"{channel}\\000")).fetchall()
        for name in tables or ():
            if "." not in name and '"' not in name:
                rows += conn.execute(_RESOLVE, (quote_ident(name),)).fetchall()
    except Exception as exc:  # fail closed
        log.warning("yokedcache: cannot list the notifying tables (%s)", exc)
        return None
    for nsp, rel in rows:
        tags |= {table_tag(rel), table_tag(rel, nsp)}
    return frozenset(tags)
