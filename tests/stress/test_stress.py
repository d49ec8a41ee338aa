"""Multi-process stress runs (tests/stress/run.py): no stale read, no failed request, and the
cache is actually used — plain, with Redis restarted mid-run, and with Redis paused mid-run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PG_URL, require_redis_server, require_service
from tests.stress import run as stress

RUN = Path(__file__).with_name("run.py")
SECONDS = float(os.environ.get("YC_STRESS_SECONDS", "15"))
PROCESSES = int(os.environ.get("YC_STRESS_PROCESSES", "4"))


def run_stress(*extra: str, seconds: float = SECONDS) -> dict[str, Any]:
    require_service("PostgreSQL", PG_URL, 5432)
    require_redis_server()
    cmd = [
        sys.executable,
        str(RUN),
        "--processes",
        str(PROCESSES),
        "--seconds",
        str(seconds),
        "--pg-url",
        PG_URL,
        "--json",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 150)
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output; stderr: {proc.stderr[-3000:]}"
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"last line is not JSON: {proc.stdout[-3000:]} {proc.stderr[-3000:]}")
    print("\n".join(lines[:-1]))  # the human summary, shown with -s or on failure
    return result


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["plain", "restart", "pause"])
def test_stress(variant: str) -> None:
    r = run_stress("--variant", variant)
    keys = ("seed", "ops_per_s", "hit_rate", "stale_reads", "window_reads", "observations")
    summary = {k: r[k] for k in keys}
    assert r["stale_reads"] == 0, (summary, r["stale_samples"])
    if variant == "plain":  # no outage: every invalidation is delivered before commit() returns
        assert r["pending_writes"] == 0 and r["window_reads"] == 0, summary
    assert r["errors_seen_by_callers"] == 0, r["error_samples"]
    assert r["wrong_results"] == 0, r["wrong_samples"]
    assert r["hit_rate"] > 0, summary
    assert r["writes"] > 0 and r["observations"] > 1000, summary


@pytest.mark.slow
@pytest.mark.slow
def test_stress_memory_backend_across_processes() -> None:
    # no Redis: each worker process has its own entries, the host shares the version record
    r = run_stress("--backend", "memory")
    assert r["backend"] == "memory"
    assert r["stale_reads"] == 0, r["stale_samples"]
    assert r["errors_seen_by_callers"] == 0, r["error_samples"]
    assert r["wrong_results"] == 0, r["wrong_samples"]
    assert r["hit_rate"] > 0.02, r  # the cache is used (entries are per process: fewer hits)
    assert r["observations"] > 0


@pytest.mark.slow
def test_checker_finds_stale_reads_on_the_memory_backend_too() -> None:
    r = run_stress("--backend", "memory", "--no-invalidation", seconds=6)
    assert r["stale_reads"] > 0, r


def test_checker_finds_stale_reads_when_commits_skip_the_cache() -> None:
    """The harness has teeth: with invalidation switched off it must report stale reads."""
    r = run_stress("--variant", "plain", "--no-invalidation", seconds=6)
    assert r["stale_reads"] > 0, r
    assert r["errors_seen_by_callers"] == 0, r["error_samples"]


# -- the checker itself (no services) ----------------------------------------------------------


def _log(writes: list[Any], reads: list[Any], sums: tuple[Any, ...] = ()) -> dict[str, Any]:
    return {"writes": writes, "reads": reads, "sums": list(sums)}


def test_checker_counts_only_reads_started_after_the_commit_returned() -> None:
    writer = _log([("accounts", 1, 2, 10.0), ("accounts", 1, 3, 20.0)], [])
    reader = _log(
        [],
        [
            ("accounts", 1, 1, 9.0),  # before any commit returned: fine
            ("accounts", 1, 1, 15.0),  # v2 returned at 10: stale
            ("accounts", 1, 2, 15.0),  # fine
            ("accounts", 1, 2, 20.0),  # started exactly when v3 returned: not after it
            ("accounts", 1, 2, 20.5),  # stale
            ("accounts", 1, 4, 20.5),  # newer than needed: fine
            ("accounts", 2, 1, 99.0),  # never written: fine
            ("owners", 1, 1, 99.0),  # other table, same id: fine
        ],
    )
    assert stress.check([writer, reader])["stale_reads"] == 2


def test_checker_puts_reads_made_old_only_by_an_undelivered_invalidation_in_the_window() -> None:
    """A write whose process could not deliver its invalidation (pending) may be missed by
    other processes until delivery (docs/consistency.md): such reads are window reads, not
    stale ones; a delivered write after it is a requirement again."""
    writer = _log([("accounts", 1, 2, 10.0, True), ("accounts", 1, 3, 20.0, False)], [])
    reader = _log(
        [],
        [
            ("accounts", 1, 1, 15.0),  # older than the pending v2 only: window
            ("accounts", 1, 2, 21.0),  # v3 was delivered at 20: stale
        ],
    )
    out = stress.check([writer, reader])
    assert (out["stale_reads"], out["window_reads"]) == (1, 1)


def test_checker_sums_and_out_of_order_commit_returns() -> None:
    # v3 of account 2 returned before v2's commit was recorded (both processes raced)
    writes = _log([("accounts", 2, 3, 5.0), ("accounts", 2, 2, 6.0)], [])
    first = stress.ACCOUNTS_PER_OWNER  # owner 1 has accounts 1..5, all at v1 but account 2
    need = first - 1 + 3
    sums = _log([], [("accounts", 2, 2, 7.0)], ((1, need, 7.0), (1, need - 1, 7.0)))
    out = stress.check([writes, sums])
    assert out["stale_reads"] == 2  # the read of v2 and the short sum
