"""The demo app under ``uvicorn --workers 2`` and ``4``, memory backend and no Redis.

Every request opens a new connection, so consecutive requests land on either worker: a write
served by one worker must be visible on the next read, whichever worker serves it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from integrations.fastapi_app.__main__ import ROOT, free_port, start_server, stop_server
from integrations.fastapi_app.load import run_workload

pytestmark = pytest.mark.slow


class _NewConnectionEachRequest(httpx.Client):
    def __init__(self, *args: Any, **kw: Any) -> None:
        kw["limits"] = httpx.Limits(max_keepalive_connections=0)
        super().__init__(*args, **kw)


def _workers(pid: int) -> int:
    """How many uvicorn worker processes *pid* has started (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    n = 0
    for child in children:
        try:
            n += b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            pass
    return n


@pytest.mark.parametrize("workers", [2, 4])
def test_workers_without_redis_serve_no_stale_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    env["YOKEDCACHE_KEY_PREFIX"] = "demo" + uuid.uuid4().hex[:10]
    env.pop("YOKEDCACHE_REDIS_URL", None)
    env.pop("YOKEDCACHE_MEMORY_SHARED", None)
    # one worker first creates the schema, so that two do not race on CREATE TABLE
    stop_server(start_server(free_port(), env))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "uvicorn", "integrations.fastapi_app.app:app"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 60
        answered = 0
        while _workers(proc.pid) < workers or answered < 20:  # all up, then 20 answers in a row
            assert time.monotonic() < deadline, f"uvicorn did not start {workers} workers"
            assert proc.poll() is None, f"uvicorn exited with {proc.returncode}"
            try:
                with _NewConnectionEachRequest(base_url=base, timeout=2) as c:
                    c.get("/cache/health").raise_for_status()
                answered += 1
            except httpx.HTTPError:
                answered = 0
                time.sleep(0.2)
        monkeypatch.setattr(httpx, "Client", _NewConnectionEachRequest)
        stale, hit_rate = 0, 0.0
        for _ in range(3):
            result = run_workload(base, rounds=150)
            stale += result["stale_reads"]
            hit_rate = max(hit_rate, result["hit_rate"])
        print(f"{workers} workers, no Redis: {stale} stale reads, hit rate {hit_rate:.1%}")
        assert stale == 0
        assert hit_rate > 0
    finally:
        stop_server(proc)
