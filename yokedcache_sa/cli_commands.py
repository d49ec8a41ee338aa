"""The built-in subcommands of ``yokedcache-sa``: stats, invalidate, clear, health, explain
(and pg-notify, run by :mod:`yokedcache_sa.pgnotify.cli`).

Importing this module registers them (:mod:`.cli` does); each builds the cache its
settings describe (``YOKEDCACHE_*``, ``--redis-url``, ``--prefix``) and closes it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from .backends.base import StoreState
from .cache import YokedCache
from .cli_registry import (
    FAILURE,
    OK,
    Output,
    UsageError,
    fail,
    process_info,
    register,
    register_external,
)
from .config import CacheConfig
from .errors import BackendError, InvalidationError

__all__: list[str] = []


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
        fail(str(exc))
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
            "marked": _tables_first(state.marks),
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
        fail(str(exc))
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
            fail("aborted, nothing removed (pass --yes to skip this question)")
            return FAILURE
    try:
        cache.clear_sync()
    except BackendError as exc:
        fail(str(exc))
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
    from sqlalchemy.orm import Query
    from sqlalchemy.sql import ClauseElement

    if callable(obj) and not isinstance(obj, (ClauseElement, Query)):  # a factory of one
        obj = obj()
    return obj
