"""What the benchmarks that measure in child processes share: the environment a child runs
with (the services' URLs, the trees to import on ``PYTHONPATH``) and running one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def child_env(
    paths: Sequence[Path] = (ROOT,), extra: dict[str, str] | None = None
) -> dict[str, str]:
    """This process's environment with *paths* first on ``PYTHONPATH`` and ``PG_URL`` /
    ``REDIS_URL`` set (from the test suite's variables, else the loopback defaults)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [*(str(p) for p in paths), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])]
    )
    env.setdefault(
        "PG_URL",
        os.environ.get(
            "YOKEDCACHE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    env.setdefault(
        "REDIS_URL", os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    env.update(extra or {})
    return env


def run_child(
    name: str,
    code: str,
    argv: Sequence[str],
    env: dict[str, str],
    prefix: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run *code* in a new interpreter (behind *prefix*, e.g. valgrind); exit with its
    error output, under the benchmark's *name*, if it fails."""
    cmd = [*prefix, sys.executable, "-c", code, *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{name}: a child failed:\n{done.stderr[-3000:]}")
    return done


def last_json(done: subprocess.CompletedProcess[str]) -> Any:
    """The JSON object a child printed as its last line."""
    return json.loads(done.stdout.strip().splitlines()[-1])
