"""Issue 13, item 5: the command line, run as a subprocess against real Redis (``--json``
parsed) and the memory backend (per-process: it says so)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, insert

from tests.conftest import REDIS_URL, require_service
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.cli import COMMANDS, main, register_external
from yokedcache_sa.orm import CachingSession

ROOT = Path(__file__).resolve().parents[2]


def cli(*argv: str, env: dict[str, str] | None = None, stdin: str = "") -> tuple[int, Any, str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    p = subprocess.run(
        [sys.executable, "-m", "yokedcache_sa", *argv],
        capture_output=True,
        text=True,
        env=full_env,
        input=stdin,
        timeout=60,
        cwd=ROOT,
    )
    doc = None
    if "--json" in argv and p.stdout.strip():
        doc = json.loads(p.stdout)
    return p.returncode, doc if doc is not None else p.stdout, p.stderr


@pytest.fixture
def redis_cache_env(unique_prefix: str):
    require_service("Redis", REDIS_URL, 6379)
    cache = YokedCache(CacheConfig(redis_url=REDIS_URL, key_prefix=unique_prefix))
    env = {"YOKEDCACHE_REDIS_URL": REDIS_URL, "YOKEDCACHE_KEY_PREFIX": unique_prefix}
    try:
        yield cache, env
    finally:
        cache.clear_sync()
        cache.disconnect_sync()


def test_stats_reports_global_store_state_and_labels_per_process(redis_cache_env) -> None:
    cache, env = redis_cache_env
    cache.set_sync("a", 1, tags=["table:users"])
    cache.set_sync("b", 2, tags=["table:orders"])
    cache.invalidate_tables_sync(["users"])
    writer = cache.new_writer()
    cache.begin_write_sync(["table:orders"], writer)  # a write in progress
    try:
        rc, doc, err = cli("stats", "--json", env=env)
    finally:
        cache.release_sync(["table:orders"], writer)
    assert rc == 0, err
    assert doc["backend"] == "redis" and doc["prefix"] == env["YOKEDCACHE_KEY_PREFIX"]
    state = doc["store_state"]
    assert state["scope"].startswith("global")
    assert state["entries"] == 2
    assert state["versions"]["table:users"] == state["write_sequence"] >= 1
    assert state["marked"] == {"table:orders": 1}
    assert doc["this_process"]["scope"].startswith("counters of this CLI process only")
    assert doc["process"]["pid"] != os.getpid()


def test_invalidate_then_the_entry_is_stale(redis_cache_env) -> None:
    cache, env = redis_cache_env
    cache.set_sync("a", 1, tags=["table:users"])
    cache.set_sync("b", 2, tags=["reports"])
    rc, doc, err = cli("invalidate", "--table", "users", "--json", env=env)
    assert rc == 0, err
    assert doc["invalidated"] == ["table:users"]
    assert cache.get_sync("a") is None and cache.get_sync("b") == 2
    rc, doc, _ = cli("--json", "invalidate", "--tag", "reports", env=env)
    assert rc == 0 and cache.get_sync("b") is None
    rc, _, err = cli("invalidate", env=env)
    assert rc == 2 and "--table" in err


def test_clear_asks_unless_yes(redis_cache_env) -> None:
    cache, env = redis_cache_env
    cache.set_sync("a", 1)
    rc, _, err = cli("clear", env=env, stdin="n\n")
    assert rc == 1 and "aborted" in err
    assert cache.get_sync("a") == 1
    rc, _, err = cli("clear", env=env, stdin="yes\n")
    assert rc == 0, err
    assert cache.get_sync("a") is None
    cache.set_sync("a", 1)
    rc, doc, err = cli("clear", "--yes", "--json", env=env)
    assert rc == 0 and doc["cleared"] is True
    assert cache.get_stats_sync().key_count == 0


def test_health_exit_codes(redis_cache_env) -> None:
    _cache, env = redis_cache_env
    rc, doc, _ = cli("health", "--json", env=env)
    assert rc == 0 and doc["healthy"] is True
    rc, doc, _ = cli("health", "--json", "--redis-url", "redis://127.0.0.1:1/0", env=env)
    assert rc == 1 and doc["healthy"] is False and "did not answer PING" in doc["error"]


def test_usage_errors_exit_2(redis_cache_env) -> None:
    _cache, env = redis_cache_env
    assert cli("no-such-command", env=env)[0] == 2
    rc, _, err = cli("stats", env={**env, "YOKEDCACHE_DEFAULT_TTL": "-3"})
    assert rc == 2 and "YOKEDCACHE_DEFAULT_TTL" in err
    rc, _, err = cli("explain", "nocolon", "--url", "sqlite://", env=env)
    assert rc == 2 and "module:attribute" in err
    rc, _, err = cli("explain", "tests.ops.queries:nothing", "--url", "sqlite://", env=env)
    assert rc == 2 and "no attribute" in err


def test_memory_backend_says_it_is_per_process() -> None:
    rc, doc, err = cli("stats", "--json", env={"YOKEDCACHE_REDIS_URL": ""})
    assert rc == 0, err
    assert doc["backend"] == "memory"
    assert "entries live inside each application process" in doc["note"]
    assert doc["store_state"]["scope"].startswith("entries and bytes: this process only")
    rc, out, _ = cli("stats", env={"YOKEDCACHE_REDIS_URL": ""})
    assert "memory backend" in out


def test_explain_a_statement_from_user_code(redis_cache_env, tmp_path: Path) -> None:
    cache, env = redis_cache_env
    table = "ycops_items_" + uuid.uuid4().hex[:6]
    env = {**env, "YC_OPS_TABLE": table}
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    os.environ["YC_OPS_TABLE"] = table
    try:
        sys.modules.pop("tests.ops.queries", None)
        from tests.ops import queries

        engine = create_engine(url)
        queries.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(insert(queries.items), [{"id": 1, "name": "a"}])
        engine.dispose()
    finally:
        del os.environ["YC_OPS_TABLE"]
    rc, doc, err = cli("explain", "tests.ops.queries:by_id", "--url", url, "--json", env=env)
    assert rc == 0, err
    assert doc["cacheable"] is True and doc["tables"] == [f"table:{table}"]
    assert doc["exists"] is False and doc["key"].startswith("q:")
    rc, doc, err = cli("explain", "tests.ops.queries:named", "--url", url, "--json", env=env)
    assert rc == 0 and doc["cacheable"] is True, err
    rc, out, err = cli("explain", "tests.ops.queries:by_id", "--url", url, env=env)
    assert rc == 0 and "cacheable: True" in out
    # a read in this process stores the entry the CLI process then finds, fresh
    engine = create_engine(url)
    try:
        with CachingSession(engine, cache=cache) as s:
            assert s.execute(queries.by_id).all() == [(1, "a")]
    finally:
        engine.dispose()
    rc, doc, err = cli("explain", "tests.ops.queries:by_id", "--url", url, "--json", env=env)
    assert rc == 0, err
    assert doc["exists"] is True and doc["fresh"] is True, doc


def test_external_subcommand_registry(capsys: pytest.CaptureFixture[str]) -> None:
    register_external("echo-test", "tests.ops.test_cli:_echo_main", "test only")
    try:
        assert main(["echo-test", "--flag", "x"]) == 7
        assert capsys.readouterr().out.strip() == "['--flag', 'x']"
    finally:
        del COMMANDS["echo-test"]


def _echo_main(argv: list[str]) -> int:
    print(argv)
    return 7


def test_admin_router_says_which_process_answered(redis_cache_env) -> None:
    import socket

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from yokedcache_sa import cache_router

    cache, _env = redis_cache_env
    app = FastAPI()
    app.include_router(cache_router(cache))
    with TestClient(app) as client:
        doc = client.get("/cache/stats").json()
    assert doc["process"] == {"pid": os.getpid(), "hostname": socket.gethostname()}
    assert "hits" in doc["per_process"] and "pending_invalidations" in doc["per_process"]
    assert doc["global"] == ["keys"]
    mem = YokedCache(CacheConfig(key_prefix=cache.config.key_prefix + "m"))
    app2 = FastAPI()
    app2.include_router(cache_router(mem))
    with TestClient(app2) as client:
        doc = client.get("/cache/stats").json()
    assert "keys" in doc["per_process"] and doc["global"] == []
