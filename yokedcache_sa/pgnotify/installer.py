"""Install, inspect and remove the triggers that tell listeners a table changed.

One trigger function (``<schema>.yokedcache_notify()``) and, per table, one statement-level
trigger ``yokedcache_notify_changes``: ``AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE … FOR
EACH STATEMENT``, calling ``pg_notify(<channel>, '<schema>.<table>')``. PostgreSQL delivers a
notification only when its transaction commits, and folds identical ones of one transaction.
A statement on a partition names the partition and every ancestor, so reads of the parent
are invalidated too.

Everything is idempotent and runs in one transaction under an advisory lock: installing twice
changes nothing, ``uninstall`` removes what ``install`` created and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .conninfo import (
    DEFAULT_CHANNEL,
    PgNotifyError,
    Target,
    connect,
    quote_ident,
    split_qualified,
    target_of,
)

__all__ = ["FUNCTION_NAME", "TRIGGER_NAME", "NotifyStatus", "install", "installed", "uninstall"]

TRIGGER_PREFIX = "yokedcache_notify_"
"""Every trigger the installer creates has a name starting with this (the ORM layer's
side-effect check ignores them: they change no rows)."""
TRIGGER_NAME = TRIGGER_PREFIX + "changes"
FUNCTION_NAME = "yokedcache_notify"
_LOCK = "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('yokedcache_notify'))"

# TG_ARGV[0] is the channel. Partitions name their ancestors too: a read of the parent is
# tagged with the parent's name.
_FUNCTION_BODY = """
BEGIN
  IF (SELECT c.relispartition FROM pg_catalog.pg_class c WHERE c.oid = TG_RELID) THEN
    PERFORM pg_catalog.pg_notify(TG_ARGV[0], (
      SELECT pg_catalog.string_agg(pg_catalog.format('%I.%I', n.nspname, c.relname), ',')
      FROM pg_catalog.pg_partition_ancestors(TG_RELID) a
      JOIN pg_catalog.pg_class c ON c.oid = a.relid
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace));
  ELSE
    PERFORM pg_catalog.pg_notify(
      TG_ARGV[0], pg_catalog.format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME));
  END IF;
  RETURN NULL;
END
"""

_FIND_TABLES = (
    "SELECT c.oid, n.nspname, c.relname FROM pg_catalog.pg_class c "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p') AND n.nspname = %s"
)
_TRIGGERS = (
    "SELECT n.nspname, c.relname, t.tgname, pg_catalog.encode(t.tgargs, 'escape'), "
    "pn.nspname, p.proname, t.tgtype "
    "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
    "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace "
    "WHERE NOT t.tgisinternal AND t.tgname LIKE 'yokedcache\\_notify\\_%'"
)
_FUNCTIONS = (
    "SELECT n.nspname FROM pg_catalog.pg_proc p "
    "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
    "WHERE p.proname = %s AND p.pronargs = 0 AND p.prorettype = 'pg_catalog.trigger'::regtype"
)
# AFTER (not BEFORE: bit 1), statement (not row: bit 0), INSERT|DELETE|UPDATE|TRUNCATE
_TGTYPE = 4 | 8 | 16 | 32


@dataclass(frozen=True)
class NotifyStatus:
    """What is installed in one database.

    ``functions``: schema-qualified trigger functions named ``yokedcache_notify``;
    ``tables``: schema-qualified table -> the channel its trigger notifies.
    """

    functions: tuple[str, ...] = ()
    tables: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the CLI's ``--json``)."""
        return {"functions": list(self.functions), "tables": dict(sorted(self.tables.items()))}


def _ident(name: str) -> str:
    plain = name and (name[0].isalpha() or name[0] == "_") and name.isascii()
    if plain and all(ch.islower() or ch.isdigit() or ch == "_" for ch in name):
        return name
    return quote_ident(name)


def _qualified(schema: str, table: str) -> str:
    """``schema.table``, each part quoted when PostgreSQL would need it."""
    return f"{_ident(schema)}.{_ident(table)}"


def _resolve(cur: Any, tables: Iterable[str] | None, schema: str) -> list[tuple[str, str]]:
    """(schema, table) of every table to act on; unknown names raise."""
    if tables is None:
        cur.execute(_FIND_TABLES, (schema,))
        return sorted((nsp, rel) for _oid, nsp, rel in cur.fetchall())
    out: list[tuple[str, str]] = []
    for name in tables:
        cur.execute(
            "SELECT n.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = pg_catalog.to_regclass(%s)",
            (_regclass(name, schema),),
        )
        row = cur.fetchone()
        if row is None:
            raise PgNotifyError(
                f"table {name!r} does not exist (looked in schema {schema!r} unless "
                "qualified); create it first or fix the name"
            )
        if row[2] not in ("r", "p"):
            raise PgNotifyError(
                f"{name!r} is not a table (relkind {row[2]!r}); triggers go on the tables "
                "it reads — a view is invalidated through declare_dependency()"
            )
        out.append((row[0], row[1]))
    return sorted(set(out))


def _regclass(name: str, schema: str) -> str:
    try:
        parts = split_qualified(name)
    except ValueError as exc:
        raise PgNotifyError(f"bad table name {name!r}: {exc}") from exc
    if len(parts) != 1:
        raise PgNotifyError(f"one table per name, got {name!r}")
    nsp, rel = parts[0]
    return f"{quote_ident(nsp or schema)}.{quote_ident(rel)}"


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _schema_of(cur: Any, schema: str | None) -> str:
    if schema is not None:
        return schema
    cur.execute("SELECT pg_catalog.current_schema()")
    row = cur.fetchone()
    if row is None or row[0] is None:
        raise PgNotifyError("no current schema (empty search_path): pass schema=")
    return str(row[0])


def _status(cur: Any) -> NotifyStatus:
    cur.execute(_FUNCTIONS, (FUNCTION_NAME,))
    functions = tuple(sorted(_qualified(r[0], FUNCTION_NAME) for r in cur.fetchall()))
    cur.execute(_TRIGGERS)
    tables: dict[str, str] = {}
    for nsp, rel, _tg, args, _fnsp, fname, _tgtype in cur.fetchall():
        if fname == FUNCTION_NAME:
            tables[_qualified(nsp, rel)] = (args or "").split("\\000")[0]
    return NotifyStatus(functions, tables)


def _scoped(st: NotifyStatus, schema: str | None) -> NotifyStatus:
    if schema is None:
        return st
    prefix = _ident(schema) + "."
    return NotifyStatus(
        tuple(f for f in st.functions if f.startswith(prefix)),
        {t: c for t, c in st.tables.items() if t.startswith(prefix)},
    )


def _run(engine_or_url: Any, connect_args: Mapping[str, Any] | None, fn: Any) -> Any:
    target: Target = target_of(engine_or_url, connect_args)
    conn = connect(target, connect_timeout=10)
    import psycopg

    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_LOCK)
            return fn(cur)
    except psycopg.Error as exc:
        from ..errors import redact_text

        raise PgNotifyError(
            f"PostgreSQL at {target.redacted} refused: {redact_text(str(exc), target.url)}"
        ) from exc
    finally:
        conn.close()


def install(
    engine_or_url: Any,
    tables: Iterable[str] | None = None,
    schema: str | None = None,
    *,
    channel: str = DEFAULT_CHANNEL,
    connect_args: Mapping[str, Any] | None = None,
) -> NotifyStatus:
    """Create the notify function in *schema* and a trigger on each of *tables*.

    Args:
        engine_or_url: an Engine, AsyncEngine or URL of any PostgreSQL driver.
        tables: table names, bare (looked up in *schema*) or ``schema.table``; None means
            every table of *schema*.
        schema: where the function lives and bare names are looked up; default the
            connection's ``current_schema()``.
        channel: the ``NOTIFY`` channel (the listener's ``channel=``).
        connect_args: extra libpq keywords (``password=``, ``sslmode=`` …).

    Returns what is installed afterwards (in *schema* when given). Installing again changes
    nothing; a table already notifying another channel is switched to *channel*.

    Raises:
        PgNotifyError: a table does not exist, or PostgreSQL refused (privileges).

    Example::

        from yokedcache_sa.pgnotify import install
        install(engine, tables=["users", "orders"])
    """
    if not channel:
        raise PgNotifyError("channel must be a non-empty string")
    wanted = list(tables) if tables is not None else None

    def work(cur: Any) -> NotifyStatus:
        sch = _schema_of(cur, schema)
        fn = f"{quote_ident(sch)}.{FUNCTION_NAME}"
        before = _status(cur)
        if _qualified(sch, FUNCTION_NAME) not in before.functions:
            cur.execute(
                f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql "
                f"AS $yc${_FUNCTION_BODY}$yc$"
            )
        cur.execute(
            "SELECT n.nspname, c.relname, pn.nspname, p.proname, "
            "pg_catalog.encode(t.tgargs, 'escape'), t.tgtype "
            "FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
            "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace "
            "WHERE t.tgname = %s",
            (TRIGGER_NAME,),
        )
        current = {(r[0], r[1]): (r[2], r[3], r[4], r[5]) for r in cur.fetchall()}
        for nsp, rel in _resolve(cur, wanted, sch):
            want = (sch, FUNCTION_NAME, f"{channel}\\000", _TGTYPE)
            have = current.get((nsp, rel))
            if have is not None and (have[0], have[1], have[2], have[3] & 0x3F) == want:
                continue
            table = f"{quote_ident(nsp)}.{quote_ident(rel)}"
            if have is not None:
                cur.execute(f"DROP TRIGGER {quote_ident(TRIGGER_NAME)} ON {table}")
            cur.execute(
                f"CREATE TRIGGER {quote_ident(TRIGGER_NAME)} "
                f"AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}({_literal(channel)})"
            )
        return _scoped(_status(cur), schema)

    result: NotifyStatus = _run(engine_or_url, connect_args, work)
    return result


def uninstall(
    engine_or_url: Any,
    tables: Iterable[str] | None = None,
    schema: str | None = None,
    *,
    connect_args: Mapping[str, Any] | None = None,
) -> NotifyStatus:
    """Drop the triggers of *tables*, then every ``yokedcache_notify`` function no trigger
    uses any more.

    With ``tables=None`` every trigger the installer created goes: in *schema* when given
    (and only that schema's function), else in every schema. Uninstalling what is not
    installed changes nothing. Returns what is left (in *schema* when given).

    Raises:
        PgNotifyError: a named table does not exist, or PostgreSQL refused.
    """
    wanted = list(tables) if tables is not None else None

    def work(cur: Any) -> NotifyStatus:
        drop = None if wanted is None else set(_resolve(cur, wanted, _schema_of(cur, schema)))
        cur.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_trigger t "
            "JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_catalog.pg_proc p ON p.oid = t.tgfoid "
            "WHERE t.tgname = %s AND p.proname = %s",
            (TRIGGER_NAME, FUNCTION_NAME),
        )
        for nsp, rel in sorted(cur.fetchall()):
            if (nsp, rel) in drop if drop is not None else schema in (None, nsp):
                cur.execute(
                    f"DROP TRIGGER {quote_ident(TRIGGER_NAME)} "
                    f"ON {quote_ident(nsp)}.{quote_ident(rel)}"
                )
        cur.execute(
            "SELECT n.nspname FROM pg_catalog.pg_proc p "
            "JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.proname = %s AND p.pronargs = 0 "
            "AND p.prorettype = 'pg_catalog.trigger'::regtype "
            "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgfoid = p.oid)",
            (FUNCTION_NAME,),
        )
        for (nsp,) in cur.fetchall():
            if schema in (None, nsp):
                cur.execute(f"DROP FUNCTION {quote_ident(nsp)}.{FUNCTION_NAME}()")
        return _scoped(_status(cur), schema)

    result: NotifyStatus = _run(engine_or_url, connect_args, work)
    return result


def installed(
    engine_or_url: Any,
    tables: Iterable[str] | None = None,
    schema: str | None = None,
    *,
    connect_args: Mapping[str, Any] | None = None,
) -> NotifyStatus:
    """What is installed: the functions, and each table with a trigger and its channel.

    With *tables*, only those tables are reported (a missing one raises); with only
    *schema*, what is in that schema.

    Raises:
        PgNotifyError: a named table does not exist, or PostgreSQL refused.
    """
    wanted = list(tables) if tables is not None else None

    def work(cur: Any) -> NotifyStatus:
        st = _status(cur)
        if wanted is None:
            return _scoped(st, schema)
        keep = {_qualified(n, r) for n, r in _resolve(cur, wanted, _schema_of(cur, schema))}
        return NotifyStatus(st.functions, {k: v for k, v in st.tables.items() if k in keep})

    result: NotifyStatus = _run(engine_or_url, connect_args, work)
    return result
