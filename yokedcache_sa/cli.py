"""The ``yokedcache-sa`` command (also ``python -m yokedcache_sa``): stats, invalidate, clear,
health and explain, against the cache your settings describe.

Settings come from ``YOKEDCACHE_*`` variables (as :class:`~yokedcache_sa.CacheConfig` reads
them), overridden by ``--redis-url`` and ``--prefix``. Exit codes: 0 ok, 1 failure (store
unreachable, unhealthy, invalidation not delivered, aborted), 2 usage (bad arguments or
settings). ``--json`` prints one JSON document on stdout for scripts.

Subcommands live in a registry (:mod:`.cli_registry`): :func:`register` for ones written in
Python, as the built-in ones in :mod:`.cli_commands`, and :func:`register_external` for a
``main(argv) -> int`` elsewhere (one line each).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from . import cli_commands  # noqa: F401  (importing it registers the built-in subcommands)
from .cli_registry import COMMANDS as COMMANDS
from .cli_registry import FAILURE, USAGE, fail
from .cli_registry import Command as Command
from .cli_registry import Output as Output
from .cli_registry import UsageError as UsageError
from .cli_registry import process_info as process_info
from .cli_registry import register as register
from .cli_registry import register_external as register_external
from .errors import ConfigError, YokedCacheError

__all__ = [
    "COMMANDS",
    "Command",
    "Output",
    "UsageError",
    "main",
    "process_info",
    "register",
    "register_external",
]


# -- entry point ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="yokedcache-sa",
        description="Inspect and manage a yokedcache_sa cache (settings: YOKEDCACHE_* "
        "environment variables, overridden by the options below).",
    )
    _common(p, None)
    # the same options after the subcommand name (they win there)
    common = argparse.ArgumentParser(add_help=False)
    _common(common, argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        if cmd.external is not None:  # listed in --help; main() runs it before parsing
            sub.add_parser(cmd.name, help=cmd.help, add_help=False)
            continue
        sp = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, parents=[common])
        if cmd.configure is not None:
            cmd.configure(sp)
    return p


def _common(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--redis-url", default=default, help="overrides YOKEDCACHE_REDIS_URL")
    p.add_argument("--prefix", default=default, help="key prefix; overrides YOKEDCACHE_KEY_PREFIX")
    p.add_argument(
        "--json",
        action="store_true",
        default=False if default is None else default,
        help="print one JSON document",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    external = _external_at(argv)
    if external is not None:  # its own parser gets everything after its name
        cmd, rest = external
        assert cmd.external is not None
        module_name, _, fn_name = cmd.external.partition(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        return int(fn(rest))
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code) if isinstance(exc.code, int) else USAGE
    cmd = COMMANDS[args.command]
    try:
        assert cmd.run is not None
        return cmd.run(args, Output(args.json))
    except UsageError as exc:
        fail(str(exc))
        return USAGE
    except ConfigError as exc:
        fail(str(exc))
        return USAGE
    except YokedCacheError as exc:
        fail(str(exc))
        return FAILURE


def _external_at(argv: list[str]) -> tuple[Command, list[str]] | None:
    skip = False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in ("--redis-url", "--prefix"):
            skip = True
        elif not token.startswith("-"):
            cmd = COMMANDS.get(token)
            return (cmd, argv[i + 1 :]) if cmd is not None and cmd.external else None
    return None


def run() -> None:
    """Console-script entry point."""
    raise SystemExit(main())
