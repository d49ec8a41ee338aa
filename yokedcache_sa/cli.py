"""The ``yokedcache-sa`` command (also ``python -m yokedcache_sa``): stats, invalidate, clear,
health and explain, against the cache your settings describe.

Settings come from ``YOKEDCACHE_*`` variables (as :class:`~yokedcache_sa.CacheConfig` reads
them), overridden by ``--redis-url`` and ``--prefix``. Exit codes: 0 ok, 1 failure (store
unreachable, unhealthy, invalidation not delivered, aborted), 2 usage (bad arguments or
settings). ``--json`` prints one JSON document on stdout for scripts.

Subcommands live in a registry: :func:`register` for ones written here, and
:func:`register_external` for a ``main(argv) -> int`` elsewhere (one line each).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .backends.base import StoreState
from .cache import YokedCache
from .config import CacheConfig
from .errors import BackendError, ConfigError, InvalidationError, YokedCacheError

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

OK, FAILURE, USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad argument: exit code 2."""


@dataclass(frozen=True)
class Command:
    """One subcommand: its arguments and what it does.

    ``run(args, out)`` returns the exit code; ``external`` names a ``module:function``
    taking the remaining argv instead (its own parser, its own help).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None] | None = None
    run: Callable[[argparse.Namespace, Output], int] | None = None
    external: str | None = None


COMMANDS: dict[str, Command] = {}


def register(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] | None = None
) -> Callable[[Callable[[argparse.Namespace, Output], int]], Callable[..., int]]:
    """Decorator: add a subcommand whose function takes ``(args, out)`` and returns an exit
    code."""

    def add(fn: Callable[[argparse.Namespace, Output], int]) -> Callable[..., int]:
        COMMANDS[name] = Command(name, help, configure, fn)
        return fn

    return add


def register_external(name: str, target: str, help: str) -> None:
    """Add a subcommand run by ``target`` (``"package.module:main"``, ``main(argv) -> int``).

    Example: ``register_external("pg-notify", "yokedcache_sa.pgnotify.cli:main", "…")``.
    """
    COMMANDS[name] = Command(name, help, external=target)


# -- output --------------------------------------------------------------------------------


def process_info() -> dict[str, Any]:
    """Which process answers: pid and host name."""
    return {"pid": os.getpid(), "hostname": socket.gethostname()}


class Output:
    """Prints a result as JSON (``--json``) or as indented ``name: value`` lines."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json = as_json
        self.stream = stream if stream is not None else sys.stdout

    def emit(self, doc: dict[str, Any]) -> None:
        if self.as_json:
            self.stream.write(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
        else:
            self._lines(doc, 0)

    def _lines(self, doc: dict[str, Any], depth: int) -> None:
        pad = "  " * depth
        for k, v in doc.items():
            if isinstance(v, dict) and v:
                self.stream.write(f"{pad}{k}:\n")
                self._lines(v, depth + 1)
            elif isinstance(v, list | tuple):
                self.stream.write(f"{pad}{k}: {', '.join(map(str, v)) if v else '-'}\n")
            else:
                self.stream.write(f"{pad}{k}: {'-' if v is None or v == {} else v}\n")


def _fail(message: str) -> None:
    sys.stderr.write(f"yokedcache-sa: {message}\n")


# -- settings ------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> CacheConfig:
    overrides: dict[str, Any] = {}
    if args.redis_url is not None:
        overrides["redis_url"] = args.redis_url
    if args.prefix is not None:
        overrides["key_prefix"] = args.prefix
    return CacheConfig(**overrides)


def _cache(args: argparse.Namespace) -> YokedCache:
    return YokedCache(_config(args))


def _where(cache: YokedCache) -> dict[str, Any]:
    backend = cache.backend
    doc: dict[str, Any] = {
        "backend": backend.name,
        "store": getattr(backend, "url_redacted", None) or "process memory",
        "prefix": cache.config.key_prefix,
    }
    if backend.name == "memory":
        shared = bool(getattr(backend, "shared", False))
        doc["note"] = (
            "memory backend: entries live inside each application process; this command "
            "runs in its own process and sees only its own (empty) store. "
            + (
                "The version record is shared by this host's processes using this prefix, "
                "so invalidate and clear reach their entries. "
                if shared
                else "Its version record is private too: invalidate and clear reach nothing. "
            )
            + "Use Redis, or the application's admin router, to see an application's cache."
        )
    return doc


# -- subcommands ---------------------------------------------------------------------------


def _describe(cache: YokedCache) -> StoreState | None:
    describe = getattr(cache.backend, "describe", None)
    return describe() if callable(describe) else None


@register("stats", "entries, tag versions and write marks of the store; this process's counters")
def _stats(args: argparse.Namespace, out: Output) -> int:
    cache = _cache(args)
    try:
        state = _describe(cache)
        s = cache.get_stats_sync()
    except BackendError as exc:
        _fail(str(exc))
        return FAILURE
    finally:
        cache.disconnect_sync()
    doc: dict[str, Any] = {**_where(cache), "process": process_info()}
    if state is not None:
        doc["store_state"] = {
            "scope": (
                "global: every process using this store sees these figures"
                if state.scope == "global"
                else "entries and bytes: this process only (memory backend); epoch and write "
                "sequence: "
                + (
                    "shared by this host's processes"
                    if getattr(cache.backend, "shared", False)
                    else "this process only"
                )
            ),
            "entries": state.entries,
            "bytes": state.bytes,
            "epoch": state.epoch,
            "write_sequence": state.seq,
            "versions": _tables_first(state.versions),
            "being_written": _tables_first(state.marks),
        }
    doc["this_process"] = {
        "scope": (
            "counters of this CLI process only; each application process keeps its own "
            "(see its /cache/stats)"
        ),
        "pending_invalidations": s.pending_invalidations,
        "hits": s.hits,
        "misses": s.misses,
        "errors": s.errors,
        "healthy": s.healthy,
    }
    out.emit(doc)
    return OK


def _tables_first(tags: dict[str, int] | None) -> dict[str, int] | None:
    if tags is None:
        return None
    return dict(sorted(tags.items(), key=lambda kv: (not kv[0].startswith("table:"), kv[0])))


def _invalidate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--table", action="append", default=[], metavar="T", help="table name")
    p.add_argument("--tag", action="append", default=[], metavar="X", help="tag")
    p.add_argument("--all", action="store_true", help="make every entry stale")


@register(
    "invalidate", "make entries reading --table T or carrying --tag X stale", _invalidate_args
)
def _invalidate(args: argparse.Namespace, out: Output) -> int:
    from .tags import ALL_TAG, table_tag

    tags = [table_tag(*_split(t)) for t in args.table] + list(args.tag)
    if args.all:
        tags.append(ALL_TAG)
    if not tags:
        raise UsageError("give at least one --table T, --tag X or --all")
    cache = _cache(args)
    try:
        cache.invalidate_tags_sync(tags)
    except InvalidationError as exc:
        _fail(str(exc))
        return FAILURE
    finally:
        cache.disconnect_sync()
    out.emit({**_where(cache), "invalidated": tags})
    return OK


def _split(name: str) -> tuple[str, str | None]:
    schema, _, table = name.rpartition(".")
    return table, schema or None


def _clear_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


@register("clear", "remove every entry and the version record of this prefix", _clear_args)
def _clear(args: argparse.Namespace, out: Output) -> int:
    cache = _cache(args)
    where = _where(cache)
    if not args.yes:
        sys.stderr.write(
            f"Remove every entry with prefix {where['prefix']!r} from {where['store']}? [y/N] "
        )
        sys.stderr.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            _fail("aborted, nothing removed (pass --yes to skip this question)")
            return FAILURE
    try:
        cache.clear_sync()
    except BackendError as exc:
        _fail(str(exc))
        return FAILURE
    finally:
        cache.disconnect_sync()
    out.emit({**where, "cleared": True})
    return OK


@register("health", "exit 0 when the store answers, 1 otherwise")
def _health(args: argparse.Namespace, out: Output) -> int:
    cache = _cache(args)
    error = None
    try:
        cache.connect_sync()
    except BackendError as exc:
        error = str(exc)
    finally:
        cache.disconnect_sync()
    out.emit({**_where(cache), "healthy": error is None, "error": error})
    return OK if error is None else FAILURE


def _explain_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "target",
        metavar="module:attribute",
        help="a statement, or a callable returning one, in your code (imported from the "
        "current directory)",
    )
    p.add_argument("--url", required=True, help="SQLAlchemy database URL the app uses")
    p.add_argument("--params", help="JSON object of parameters for session.execute")


@register("explain", "what a caching session would do with a statement", _explain_args)
def _explain(args: argparse.Namespace, out: Output) -> int:
    from sqlalchemy import create_engine

    from .orm import CachingSession
    from .orm.explain import explain

    stmt = _import_target(args.target)
    try:
        params = json.loads(args.params) if args.params else None
    except ValueError as exc:
        raise UsageError(f"--params is not JSON: {exc}") from None
    cache = _cache(args)
    try:
        engine = create_engine(args.url)
    except Exception as exc:
        raise UsageError(f"--url: {exc}") from None
    try:
        with CachingSession(engine, cache=cache) as session:
            result = explain(stmt, session=session, params=params)
    finally:
        engine.dispose()
        cache.disconnect_sync()
    out.emit({**_where(cache), **result.as_dict()})
    return OK


register_external(
    "pg-notify",
    "yokedcache_sa.pgnotify.cli:main",
    "install, inspect or remove PostgreSQL change-notification triggers (outside writers)",
)


def _import_target(target: str) -> Any:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{target!r}: expected module:attribute, e.g. myapp.queries:active_users")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"{module_name!r} has no attribute {attr!r}") from None
    if callable(obj) and not hasattr(obj, "_generate_cache_key"):
        obj = obj()
    return obj


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
        _fail(str(exc))
        return USAGE
    except ConfigError as exc:
        _fail(str(exc))
        return USAGE
    except YokedCacheError as exc:
        _fail(str(exc))
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
