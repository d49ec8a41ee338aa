"""Command line for the notification triggers: install, uninstall, status.

::

    python -m yokedcache_sa.pgnotify install   --url postgresql://user@host/db [--table T ...]
    python -m yokedcache_sa.pgnotify status    --url ... [--json]
    python -m yokedcache_sa.pgnotify uninstall --url ... [--table T ...]

Exit codes: 0 done, 1 failed (connection, privileges, unknown table), 2 bad usage. The URL
may also come from ``YOKEDCACHE_PG_URL``; its password never appears in the output.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from ..errors import ConfigError, YokedCacheError, redact_url
from .conninfo import DEFAULT_CHANNEL, target_of
from .installer import NotifyStatus, install, installed, uninstall

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "python -m yokedcache_sa.pgnotify") -> argparse.ArgumentParser:
    """The argument parser (the project's main CLI mounts it as ``pg-notify``)."""
    ap = argparse.ArgumentParser(
        prog=prog,
        description="Install, check or remove the PostgreSQL triggers that notify "
        "yokedcache_sa listeners of writes made outside caching sessions.",
    )
    ap.add_argument("action", choices=["install", "uninstall", "status"])
    ap.add_argument(
        "--url",
        default=os.environ.get("YOKEDCACHE_PG_URL"),
        help="database URL, any PostgreSQL driver (default: $YOKEDCACHE_PG_URL)",
    )
    ap.add_argument(
        "--table",
        action="append",
        dest="tables",
        metavar="T",
        help="table (or schema.table); repeat for more; default: every table of --schema "
        "(install) or every table with a trigger (uninstall, status)",
    )
    ap.add_argument("--schema", help="schema of the function and of bare table names")
    ap.add_argument("--channel", default=DEFAULT_CHANNEL, help="NOTIFY channel (install)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def _show(action: str, url: str, status: NotifyStatus, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {"action": action, "url": redact_url(url), "ok": True, **status.as_dict()},
                sort_keys=True,
            )
        )
        return
    print(f"{action}: {redact_url(url)}")
    print("  function: " + (", ".join(status.functions) or "(none)"))
    if not status.tables:
        print("  tables:   (none)")
    for table, channel in sorted(status.tables.items()):
        print(f"  table:    {table}  -> channel {channel!r}")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 failure, 2 usage)."""
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else 2
    if not args.url:
        ap.print_usage(sys.stderr)
        print("error: give --url or set YOKEDCACHE_PG_URL", file=sys.stderr)
        return 2
    try:
        target_of(args.url)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kw: dict[str, Any] = {"tables": args.tables, "schema": args.schema}
    try:
        if args.action == "install":
            status = install(args.url, channel=args.channel, **kw)
        elif args.action == "uninstall":
            status = uninstall(args.url, **kw)
        else:
            status = installed(args.url, **kw)
    except YokedCacheError as exc:
        if args.json:
            print(
                json.dumps(
                    {
                        "action": args.action,
                        "url": redact_url(args.url),
                        "ok": False,
                        "error": str(exc),
                    },
                    sort_keys=True,
                )
            )
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    _show(args.action, args.url, status, args.json)
    return 0
