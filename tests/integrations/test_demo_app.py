"""The demo app (integrations/fastapi_app) served by uvicorn in a subprocess, over real HTTP.

Bound to a temp SQLite file + the memory backend and to PostgreSQL + Redis (private key
prefix). The server is another process, so hits are read from its admin stats endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from integrations.fastapi_app.__main__ import ROOT, free_port, start_server, stop_server
from integrations.fastapi_app.load import run_workload
from tests.conftest import PG_URL, REDIS_URL, require_service
from yokedcache_sa import CacheConfig, YokedCache


@pytest.fixture(params=["sqlite-memory", "postgresql-redis"])
def server(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.delenv("YOKEDCACHE_REDIS_URL", raising=False)
    env = {"YOKEDCACHE_KEY_PREFIX": "demo" + uuid.uuid4().hex[:10]}
    if request.param == "sqlite-memory":
        env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.db'}"
    else:
        require_service("PostgreSQL", PG_URL, 5432)
        require_service("Redis", REDIS_URL, 6379)
        env["DATABASE_URL"] = PG_URL
        env["YOKEDCACHE_REDIS_URL"] = REDIS_URL
    port = free_port()
    proc = start_server(port, env)
    base = f"http://127.0.0.1:{port}"
    try:
        yield base
    finally:
        stop_server(proc)
        if "YOKEDCACHE_REDIS_URL" in env:  # drop the server's keys
            c = YokedCache(
                CacheConfig(redis_url=REDIS_URL, key_prefix=env["YOKEDCACHE_KEY_PREFIX"])
            )
            c.clear_sync()
            c.disconnect_sync()


def hits(client: httpx.Client) -> int:
    return int(client.get("/admin/cache/stats").json()["hits"])


def test_crud_over_http(server: str) -> None:
    email = f"{uuid.uuid4().hex[:10]}@example.com"
    with httpx.Client(base_url=server, timeout=10) as c:
        assert c.get("/cache/health").json() == {"healthy": True}
        r = c.post("/users", json={"name": "Ada", "email": email})
        assert r.status_code == 201, r.text
        user = r.json()
        uid = user["id"]
        assert user == {"id": uid, "name": "Ada", "email": email, "active": True}

        assert c.get(f"/users/{uid}").json() == user
        h = hits(c)
        assert c.get(f"/users/{uid}").json() == user
        assert hits(c) == h + 1, "the second read must be a cache hit"

        r = c.put(f"/users/{uid}", json={"name": "Ada L."})
        assert r.json() == {**user, "name": "Ada L."}  # PUT returns the updated row
        assert c.get(f"/users/{uid}").json()["name"] == "Ada L.", "stale read after update"
        assert c.get(f"/uncached/users/{uid}").json()["name"] == "Ada L."

        everyone = {"active_only": "false", "limit": "100000"}
        listed = c.get("/users", params=everyone).json()
        assert {**user, "name": "Ada L."} in listed
        assert listed == c.get("/uncached/users", params=everyone).json()
        c.put(f"/users/{uid}", json={"active": False})
        assert uid not in [u["id"] for u in c.get("/users", params={"limit": 100000}).json()]

        before = c.get("/analytics/users").json()
        h = hits(c)
        assert c.get("/analytics/users").json() == before
        assert hits(c) == h + 1, "analytics must be cached"
        other = f"{uuid.uuid4().hex[:10]}@example.com"
        c.post("/users", json={"name": "Bob", "email": other}).raise_for_status()
        after = c.get("/analytics/users").json()
        assert after["total"] == before["total"] + 1, "a write must invalidate analytics"
        assert after["active"] == before["active"] + 1

        assert c.delete(f"/users/{uid}").json() == {"ok": True}
        assert c.get(f"/users/{uid}").status_code == 404
        assert c.get(f"/users/{uid}").status_code == 404
        assert c.delete(f"/users/{uid}").status_code == 404
        assert c.get("/analytics/users").json()["total"] == after["total"] - 1

        stats = c.get("/admin/cache/stats").json()
        assert 0.0 < stats["hit_rate"] < 1.0
        assert c.get("/cache/stats").json()["hit_rate"].endswith("%")


def test_workload_has_no_stale_reads(server: str) -> None:
    result = run_workload(server, rounds=30)
    assert result["stale_reads"] == 0, result
    assert 0.0 < result["hit_rate"] <= 1.0, result


def test_demo_script(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}",
        "YOKEDCACHE_KEY_PREFIX": "demo" + uuid.uuid4().hex[:10],
    }
    env.pop("YOKEDCACHE_REDIS_URL", None)
    # its own process group: on a timeout the uvicorn it started is killed too (killing the
    # script alone left the server running after the test)
    proc = subprocess.Popen(
        ["bash", "scripts/demo.sh", "--rounds", "20"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"scripts/demo.sh did not finish within 120 s:\n{out}\n{err}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out + err
    assert "hit rate" in out
    assert "stale reads          0" in out
