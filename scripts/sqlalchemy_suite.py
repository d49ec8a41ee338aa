#!/usr/bin/env python
"""Run SQLAlchemy's own ORM test suite twice — plain Session, then CachingSession — and compare.

Usage (from anywhere; uses the SQLAlchemy installed for this interpreter)::

    .venv/bin/python scripts/sqlalchemy_suite.py            # both runs, compare, exit 0/1
    .venv/bin/python scripts/sqlalchemy_suite.py --json     # ... and a JSON summary last
    .venv/bin/python scripts/sqlalchemy_suite.py --reuse    # compare the last reports again
    .venv/bin/python scripts/sqlalchemy_suite.py --classify # behaviour failures by category

The sdist of the installed SQLAlchemy version is downloaded once into
``.cache/sqlalchemy-sdist/`` and unpacked there; its ``test/orm`` runs against SQLite from a
per-mode copy of the tree's test files, with ``python -s`` (so ``test/conftest.py`` does not
put the sdist's ``lib/`` first on ``sys.path``: the installed SQLAlchemy is the one tested).
The swap itself is the pytest plugin ``tests/sqlalchemy_suite/plugin.py``.

A test that passes with a plain Session and fails with the cache is a failure unless it is on
``scripts/sqlalchemy_suite_allow.txt`` (``<test id>  # <reason>``; reasons are about emitted
SQL only). Exit status: 0 none unexpected, 1 unexpected failures, 2 a run could not be made.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter, defaultdict
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = ROOT / ".cache"
SDIST_DIR = CACHE_DIR / "sqlalchemy-sdist"
REPORT_DIR = CACHE_DIR / "sqlalchemy-suite"
ALLOW_FILE = ROOT / "scripts" / "sqlalchemy_suite_allow.txt"
MODES = ("baseline", "cache")

# Where an AssertionError about emitted SQL is raised (SQLAlchemy's statement asserters).
_SQL_ASSERT_FILE = re.compile(r"sqlalchemy/testing/assertsql\.py")
_SQL_ASSERT_HELPERS = re.compile(
    r"sqlalchemy/testing/assertions\.py\", line \d+, in "
    r"(assert_sql_count|assert_multiple_sql_count|assert_sql_execution|assert_statement_count"
    r"|assert_execution|sql_count_)\b"
)
_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)', re.M)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the sdist -----------------------------------------------------------------------------


def sdist_tree(version: str) -> Path:
    """The unpacked sdist of SQLAlchemy *version* (downloaded and unpacked once)."""
    tree = SDIST_DIR / f"sqlalchemy-{version}"
    if (tree / "test" / "orm").is_dir() and (tree / "test" / "conftest.py").is_file():
        return tree
    SDIST_DIR.mkdir(parents=True, exist_ok=True)
    archive = SDIST_DIR / f"sqlalchemy-{version}.tar.gz"
    if not archive.is_file():
        log(f"downloading the SQLAlchemy {version} sdist into {SDIST_DIR}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"sqlalchemy=={version}",
                "-d",
                str(SDIST_DIR),
            ],
            check=True,
        )
    with tarfile.open(archive) as tf:
        tf.extractall(SDIST_DIR, filter="data")
    return tree


# -- running -------------------------------------------------------------------------------

# What a run needs from the sdist: the tests, the pytest/db config, and the plugin files that
# test/conftest.py bootstraps by path. The rest of lib/ is left out, so the installed
# SQLAlchemy is the only one importable.
_RUN_FILES = ("test", "setup.cfg", "pyproject.toml", "lib/sqlalchemy/testing/plugin")


def work_tree(mode: str, tree: Path) -> Path:
    """A private copy of the runnable part of *tree* for *mode*.

    Some tests create SQLite files in the working directory (attached schemas), so two runs
    must not share one; a fresh copy also starts each run without leftover files.
    """
    work = REPORT_DIR / f"tree-{mode}"
    if work.exists():
        shutil.rmtree(work)
    for rel in _RUN_FILES:
        src, dst = tree / rel, work / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.db"))
        else:
            shutil.copy2(src, dst)
    return work


def run_command(mode: str, tree: Path, paths: list[str], extra: list[str]) -> list[str]:
    """The pytest command line of one run (executed with cwd=tree)."""
    return [
        sys.executable,
        "-s",  # no user site: test/conftest.py then leaves the sdist's lib/ off sys.path
        "-m",
        "pytest",
        *paths,
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.sqlalchemy_suite.plugin",
        f"--yc-mode={mode}",
        f"--yc-report={REPORT_DIR / f'{mode}.json'}",
        "--maxfail=0",  # the sdist's addopts stop at 250 failures
        "-q",
        *extra,
    ]


def start_run(mode: str, tree: Path, paths: list[str], extra: list[str]) -> subprocess.Popen[Any]:
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / f"{mode}.json").unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    work = work_tree(mode, tree)
    out = open(REPORT_DIR / f"{mode}.log", "w")  # noqa: SIM115 - closed with the process
    log(f"[{mode}] {' '.join(run_command(mode, work, paths, extra))}  (cwd {work})")
    return subprocess.Popen(
        run_command(mode, work, paths, extra),
        cwd=work,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def run_all(tree: Path, paths: list[str], extra: list[str], parallel: bool) -> dict[str, float]:
    """Run both modes (one after the other, or at once); return wall seconds per mode."""
    seconds: dict[str, float] = {}
    if parallel:
        started = time.monotonic()
        procs = {m: start_run(m, tree, paths, extra) for m in MODES}
        for m, p in procs.items():
            p.wait()
            seconds[m] = round(time.monotonic() - started, 1)
    else:
        for m in MODES:
            started = time.monotonic()
            start_run(m, tree, paths, extra).wait()
            seconds[m] = round(time.monotonic() - started, 1)
    for m in MODES:
        log(f"[{m}] {seconds[m]}s wall, log {REPORT_DIR / f'{m}.log'}")
    return seconds


def load_report(mode: str) -> dict[str, Any]:
    path = REPORT_DIR / f"{mode}.json"
    if not path.is_file():
        raise SystemExit(f"no report {path}: the {mode} run did not finish (see its .log)")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# -- the allow-list ------------------------------------------------------------------------


def load_allow(path: Path) -> dict[str, str]:
    """``{test id: reason}`` from ``<test id>  # <reason>`` lines (``#`` lines are comments)."""
    allow: dict[str, str] = {}
    if not path.is_file():
        return allow
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, sep, reason = line.partition("  # ")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}:{n}: expected '<test id>  # <reason>'")
        allow[test_id.strip()] = reason.strip()
    return allow


# -- classification ------------------------------------------------------------------------


def raised_at(text: str) -> tuple[str, str]:
    """(innermost ``file:function``, first line of the final exception) of a report text."""
    frames = _FRAME.findall(text)
    where = ""
    if frames:
        f, _, fn = frames[-1]
        where = f"{f.split('site-packages/')[-1]}:{fn}"
    exc = ""
    lines = [ln for ln in text.rstrip().splitlines() if ln.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Warning|Exit|Failed)\b", lines[i]):
            exc = lines[i].strip()
            break
    if not exc and lines:
        exc = lines[-1].strip()
    return where, exc


def is_sql_assertion(text: str) -> bool:
    """True if the failure is an AssertionError raised by a statement asserter.

    That is: the final exception is an AssertionError and the innermost frame is in
    ``sqlalchemy/testing/assertsql.py`` (CompiledSQL, CountStatements, AllOf, Conditional...)
    or one of the count helpers of ``sqlalchemy/testing/assertions.py``.
    """
    frames = list(_FRAME.finditer(text))
    if not frames:
        return False
    _, exc = raised_at(text)
    if not exc.startswith("AssertionError"):
        return False
    last = text[frames[-1].start() : frames[-1].end()]
    return bool(_SQL_ASSERT_FILE.search(last) or _SQL_ASSERT_HELPERS.search(last))


def _more_sql(test_id: str, exc: str, text: str) -> bool:
    if not is_sql_assertion(text):
        return False
    m = _COUNT.search(exc)
    return bool(m and int(m.group(2)) > int(m.group(1))) or "Additional SQL" in exc


# Behaviour failure classes, first match wins: (title, predicate(test id, exception, text)).
_ENTITY_REPR = r"^AssertionError: .*\b\w+\(\w+=|^AssertionError: \[\(\(<class"
CATEGORIES: list[tuple[str, Any]] = [
    (
        "emits MORE SQL than a plain Session (extra lazy loads after a cached load)",
        _more_sql,
    ),
    (
        "the cache raises: an exception from inside yokedcache_sa (e.g. a listener given an "
        "execution option value it does not expect)",
        lambda t, e, x: "/yokedcache_sa/" in raised_at(x)[0].join(("/", "")),
    ),
    (
        "wrong data: an attribute the cached load left unloaded (deferred / undefer options, "
        "subclass columns, unpickled state) reads as None instead of being loaded",
        lambda t, e, x: bool(
            re.search(r"None != |assert None ==|\[None(, None)*\] != |a_data=None", e)
        ),
    ),
    (
        "wrong data: polymorphic / with_polymorphic / of_type results differ from the rows "
        "(objects rebuilt from the cache miss subclass attributes or related objects)",
        lambda t, e, x: (
            bool(re.search(_ENTITY_REPR, e) or "Comp object" in e)
            and bool(re.search(r"inheritance/|test_of_type|test_poly", t))
        ),
    ),
    (
        "unique() demanded: results rebuilt from the cache count as joined-eager "
        "where a plain Session's do not",
        lambda t, e, x: "unique() method must be invoked" in e,
    ),
    (
        "load events / @reconstructor run twice per object loaded through the cache",
        lambda t, e, x: bool(
            re.search(r"'load', 'load'|\['go', 'go'\]|'A', 'A', 'B'", e)
            or re.search(r"test_merge\.py::MergeTest::test_\w+_cascade$", t)
        ),
    ),
    (
        "refresh / load-context events differ (an expired-attribute reload is reported as "
        "'load'; load-context warnings not raised)",
        lambda t, e, x: "RefreshTest" in t or "RestoreLoadContextTest" in t,
    ),
    (
        "ORM execute hooks see different calls or options (do_orm_execute, get_bind, "
        "autoflush, the cache's `yokedcache` execution option, eager-loader options)",
        lambda t, e, x: bool(
            re.search(
                r"ORMExecuteTest|BindIntegrationTest|PropagateAttrsTest|"
                r"test_eagerloader_exec_option|ExecutionOptionsTest",
                t,
            )
        ),
    ),
    (
        "the cache's per-session state is visible (session.info, scoped_session attributes)",
        lambda t, e, x: "_yokedcache" in e or "['yokedcache']" in e,
    ),
    (
        "session event sequence differs (extra flush / transaction events)",
        lambda t, e, x: "SessionEventsTest" in t,
    ),
    (
        "raiseload / lazy='raise' fires on objects rebuilt from the cache",
        lambda t, e, x: "is not available due to" in e,
    ),
    (
        "bound values resolved too early: relationship-expression values of transient / "
        "detached / expired objects raise while the statement is keyed",
        lambda t, e, x: "Can't resolve value for column" in e,
    ),
    (
        "instance state differs after a cached load (which attributes are loaded or deferred, "
        "composite attributes, load path, expired-attribute bookkeeping)",
        lambda t, e, x: bool(
            re.search(r"in \{'_sa_instance_state'|^KeyError: '|\(\) != \(<Mapper", e)
        ),
    ),
    (
        "Result API differs (yield_per / unbuffered results, single-entity tuples, "
        "column targeting, select *, warnings about recursion)",
        lambda t, e, x: bool(
            re.search(
                r"yield_per|Callable did not raise|all_mappers|_is_server_side|^KeyError: <|"
                r"Warnings were not seen|A value is required for bind",
                e,
            )
            or re.search(r"OnlyReturnTuplesTest|DeepRecursiveTest", t)
        ),
    ),
]


def category(test_id: str, text: str) -> str:
    """The behaviour failure class of a failed test (see CATEGORIES)."""
    exc = raised_at(text)[1]
    for title, matches in CATEGORIES:
        if matches(test_id, exc, text):
            return str(title)
    return "other"


# -- comparing -----------------------------------------------------------------------------


def compare(base: dict[str, Any], swapped: dict[str, Any], allow: dict[str, str]) -> dict[str, Any]:
    bt, st = base["tests"], swapped["tests"]
    regressions = sorted(
        t
        for t, r in bt.items()
        if r["outcome"] == "passed" and st.get(t, {}).get("outcome") in ("failed", "xpassed")
    )
    missing = sorted(t for t, r in bt.items() if r["outcome"] == "passed" and t not in st)
    allowed = [t for t in regressions if t in allow]
    unexpected = [t for t in regressions if t not in allow]
    newly_passing = sorted(t for t in allow if st.get(t, {}).get("outcome") == "passed")
    stale = sorted(
        t for t in allow if bt.get(t, {}).get("outcome") != "passed" and t not in newly_passing
    )
    return {
        "baseline": dict(Counter(r["outcome"] for r in bt.values())),
        "cache": dict(Counter(r["outcome"] for r in st.values())),
        "regressions": regressions,
        "allowed": allowed,
        "unexpected": unexpected,
        "newly_passing": newly_passing,
        "stale": stale,
        "missing": missing,
    }


def print_report(res: dict[str, Any], swapped: dict[str, Any], limit: int) -> None:
    p = print
    p(f"baseline: {res['baseline']}")
    p(f"cache:    {res['cache']}")
    p(
        f"pass -> fail with the cache: {len(res['regressions'])} "
        f"({len(res['allowed'])} allow-listed, {len(res['unexpected'])} not)"
    )
    st = swapped["tests"]
    for t in res["unexpected"][:limit]:
        exc = raised_at(st[t].get("text", ""))[1]
        p(f"  FAIL {t}\n       {exc[:160]}")
    if len(res["unexpected"]) > limit:
        p(f"  ... {len(res['unexpected']) - limit} more (--limit N, or --classify)")
    if res["newly_passing"]:
        p(f"allow-listed but passing now (remove them): {len(res['newly_passing'])}")
        for t in res["newly_passing"]:
            p(f"  {t}")
    if res["stale"]:
        p(f"allow-listed but not passing in the baseline (stale entries): {len(res['stale'])}")
        for t in res["stale"][:limit]:
            p(f"  {t}")
    if res["missing"]:
        p(f"passed in the baseline, not run with the cache: {len(res['missing'])}")
        for t in res["missing"][:limit]:
            p(f"  {t}")


_COUNT = re.compile(r"desired statement count (\d+) does not match (\d+)")
_FEWER = "All statements are complete, but pending assertion rules remain"


def sql_reason(exc: str) -> str | None:
    """The allow-list reason for an SQL-assertion failure in which the cache emitted *fewer*
    statements than a plain Session (the missing ones were served from the cache); None when
    it emitted more or other SQL (not acceptable by itself: the cache must not add SQL)."""
    m = _COUNT.search(exc)
    if m:
        want, got = int(m.group(1)), int(m.group(2))
        if got < want:
            return (
                f"counts statements (assert_sql_count): expects {want}, the cache emits {got}; "
                "the others are cache hits"
            )
        return None
    if _FEWER in exc:
        return (
            "asserts the statements emitted (assert_sql_execution / CompiledSQL rules); "
            "fewer are emitted, the others are cache hits"
        )
    return None


def check_candidates(res: dict[str, Any], swapped: dict[str, Any], version: str) -> int:
    """Re-run the not allow-listed SQL-assertion failures with the cache and SQLAlchemy's
    statement assertions turned off; print allow-list lines for those that then pass and
    emitted fewer statements, and list the rest."""
    st = swapped["tests"]
    cands = [t for t in res["unexpected"] if is_sql_assertion(st[t].get("text", ""))]
    if not cands:
        print("# no SQL-assertion candidates")
        return 0
    tree = sdist_tree(version)
    work = work_tree("candidates", tree)
    report = REPORT_DIR / "candidates.json"
    only = REPORT_DIR / "candidates.txt"
    only.write_text("".join(f"{t}\n" for t in cands))
    files = sorted({t.split("::")[0] for t in cands})
    cmd = run_command("cache", work, files, ["--yc-sql-asserts=off", f"--yc-only={only}"])
    cmd = [f"--yc-report={report}" if a.startswith("--yc-report=") else a for a in cmd]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with open(REPORT_DIR / "candidates.log", "w") as out:
        subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    again = json.loads(report.read_text())["tests"]
    print(f"# {len(cands)} SQL-assertion failures re-run with statement assertions off")
    rest: list[str] = []
    for t in cands:
        exc = raised_at(st[t].get("text", ""))[1]
        reason = sql_reason(exc)
        if again.get(t, {}).get("outcome") == "passed" and reason:
            print(f"{t}  # {reason}")
        else:
            outcome = again.get(t, {}).get("outcome", "not run")
            rest.append(f"# NOT allowed ({outcome} without SQL assertions): {t}: {exc[:100]}")
    print("\n".join(rest))
    return 0


def print_classes(res: dict[str, Any], swapped: dict[str, Any]) -> None:
    """Behaviour failures (not allow-listed) by category, as a markdown table."""
    st = swapped["tests"]
    groups: dict[str, list[str]] = defaultdict(list)
    for t in res["unexpected"]:
        groups[category(t, st[t].get("text", ""))].append(t)
    print("| category | count | examples (test id — first line of the assertion) |")
    print("|---|---:|---|")
    for cat, tests in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        ex = "<br>".join(f"`{t}` — {raised_at(st[t].get('text', ''))[1][:140]}" for t in tests[:3])
        print(f"| {cat.replace('|', '/')} | {len(tests)} | {ex.replace('|', '/')} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", default=["test/orm"], help="test paths in the sdist")
    ap.add_argument("--json", action="store_true", help="print a JSON summary object last")
    ap.add_argument("--reuse", action="store_true", help="compare the last reports, no run")
    ap.add_argument("--parallel", action="store_true", help="run both modes at once")
    ap.add_argument("--classify", action="store_true", help="print failures by category")
    ap.add_argument(
        "--candidates",
        action="store_true",
        help="re-run SQL-assertion failures with those assertions off; print allow-list lines",
    )
    ap.add_argument("--allow", type=Path, default=ALLOW_FILE, help="allow-list file")
    ap.add_argument("--limit", type=int, default=50, help="failures to list")
    ap.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument")
    ap.add_argument("--report-dir", type=Path, default=None, help="reports directory")
    args = ap.parse_args(argv)
    if args.report_dir is not None:
        global REPORT_DIR
        REPORT_DIR = args.report_dir.resolve()

    version = metadata.version("sqlalchemy")
    seconds: dict[str, float] = {}
    if not args.reuse:
        try:
            tree = sdist_tree(version)
        except (subprocess.CalledProcessError, OSError, tarfile.TarError) as exc:
            log(f"cannot get the SQLAlchemy {version} sdist: {exc}")
            return 2
        seconds = run_all(tree, args.paths, args.pytest_arg, args.parallel)
    try:
        base, swapped = load_report("baseline"), load_report("cache")
    except SystemExit as exc:
        log(str(exc))
        return 2
    for rep in (base, swapped):
        if rep["sqlalchemy"] != version:
            log(f"report {rep['mode']} is for SQLAlchemy {rep['sqlalchemy']}, not {version}")
            return 2
    allow = load_allow(args.allow)
    res = compare(base, swapped, allow)
    if args.candidates:
        return check_candidates(res, swapped, version)
    if args.classify:
        print_classes(res, swapped)
    else:
        print_report(res, swapped, args.limit)
    if args.json:
        summary = {
            "sqlalchemy": version,
            "baseline": res["baseline"],
            "cache": res["cache"],
            "passed": res["cache"].get("passed", 0),
            "failed": res["cache"].get("failed", 0),
            "regressions": len(res["regressions"]),
            "allow_listed": len(res["allowed"]),
            "unexpected": len(res["unexpected"]),
            "newly_passing": len(res["newly_passing"]),
            "stale": len(res["stale"]),
            "seconds": seconds or {m: r["seconds"] for m, r in zip(MODES, (base, swapped))},
            "cpu_seconds": {m: r.get("cpu_seconds") for m, r in zip(MODES, (base, swapped))},
        }
        print(json.dumps(summary))
    return 1 if res["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
