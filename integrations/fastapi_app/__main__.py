"""Main job: serve the demo app with uvicorn, drive a short workload over real HTTP, report.

    python -m integrations.fastapi_app            # serve, exercise, print, exit 0
    python -m integrations.fastapi_app --serve    # ... then keep serving (Ctrl-C stops)

SQLite file + memory backend by default; DATABASE_URL and YOKEDCACHE_REDIS_URL switch to
PostgreSQL and Redis. Exits 1 if any read after a write returned old data.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .load import print_report, run_workload

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start uvicorn serving the demo app on 127.0.0.1:*port*; wait until it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "integrations.fastapi_app.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/cache/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("uvicorn did not answer within 30 s")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--serve", action="store_true", help="keep serving after the workload")
    ap.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    port = args.port or free_port()
    proc = start_server(port)
    try:
        print(
            f"serving the demo app on http://127.0.0.1:{port} "
            f"(database {os.environ.get('DATABASE_URL', 'sqlite:///./yokedcache_demo.db')})"
        )
        result = run_workload(f"http://127.0.0.1:{port}", args.rounds)
        print_report(result)
        if args.serve:
            print("serving; Ctrl-C stops")
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(proc)
    return 0 if result["stale_reads"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
