"""pytest plugin for SQLAlchemy's test suite: swaps in CachingSession and records outcomes.

Loaded with ``-p tests.sqlalchemy_suite.plugin`` from the root of an unpacked SQLAlchemy
sdist (see README.md next to this file; ``scripts/sqlalchemy_suite.py`` drives it).

``--yc-mode=cache`` makes every session the suite creates a :class:`CachingSession` over one
memory-backend :class:`YokedCache` (passed as ``cache=``):

- ``sqlalchemy.orm.Session`` is replaced before any test module is imported, which covers
  ``fixture_session()`` (it looks ``orm.Session`` up on each call) and the test modules'
  ``from sqlalchemy.orm import Session``; ``sessionmaker``'s default ``class_`` is replaced too.
- Before each test the cache is emptied and the session listeners are put back: the ORM
  fixtures call ``SessionEvents._clear()`` after tests, which drops class-level listeners,
  and engine events may be cleared too.

``--yc-mode=baseline`` changes nothing. Both modes write ``--yc-report`` (JSON): one record
per test with its outcome and, for failures, the report text. ``--yc-sql-asserts=off`` makes
SQLAlchemy's statement assertions no-ops (to confirm a failure is only about emitted SQL);
``--yc-only=FILE`` runs only the node ids listed in FILE.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest

_results: dict[str, dict[str, Any]] = {}
_mode = "baseline"
_cache: Any = None
_started = time.monotonic()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("yokedcache")
    group.addoption("--yc-mode", choices=("baseline", "cache"), default="baseline")
    group.addoption("--yc-report", default=None, help="write per-test outcomes to this JSON")
    group.addoption("--yc-only", default=None, help="run only the node ids listed in this file")
    group.addoption(
        "--yc-sql-asserts",
        choices=("on", "off"),
        default="on",
        help="off: SQLAsserter.assert_ checks nothing (to confirm a failure is only about SQL)",
    )


def _swap_session_class() -> None:
    import sqlalchemy.orm
    from sqlalchemy.orm import session as orm_session

    from yokedcache_sa import CacheConfig, YokedCache
    from yokedcache_sa.orm import CachingSession

    global _cache
    _cache = YokedCache(CacheConfig())
    cache = _cache

    class SuiteSession(CachingSession):
        """CachingSession over the suite's memory cache (tests construct sessions bare)."""

        def __init__(self, bind: Any = None, **kw: Any) -> None:
            kw.setdefault("cache", cache)
            super().__init__(bind, **kw)

    SuiteSession.__name__ = SuiteSession.__qualname__ = "Session"
    sqlalchemy.orm.Session = SuiteSession  # type: ignore[misc]
    init = orm_session.sessionmaker.__init__
    kwdefaults = dict(init.__kwdefaults__ or {})
    kwdefaults["class_"] = SuiteSession
    init.__kwdefaults__ = kwdefaults


def _reattach_listeners() -> None:
    from sqlalchemy import event

    from yokedcache_sa.orm import CachingSession, watch
    from yokedcache_sa.orm import session as yc_session

    for name, fn in yc_session._SESSION_EVENTS:
        if not event.contains(CachingSession, name, fn):
            event.listen(CachingSession, name, fn)
    # engines get their listeners at a session's first sight of them; the suite may have
    # cleared engine events, so let every engine be seen afresh (installation is idempotent)
    watch.forget_watched()


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    global _mode
    _mode = config.getoption("--yc-mode")
    if _mode == "cache":
        _swap_session_class()
    if config.getoption("--yc-sql-asserts") == "off":
        # Every statement assertion of SQLAlchemy's suite (assert_sql_count, assert_execution,
        # assert_statement_count, sql_execution_asserter + CompiledSQL/AllOf/...) ends here.
        from sqlalchemy.testing import assertsql

        assertsql.SQLAsserter.assert_ = lambda self, *rules: None  # type: ignore[method-assign]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # SQLAlchemy's plugin names backend-specific classes at collection time
    # (``Foo_sqlite+pysqlite_3_40_1``), so such node ids cannot be given on the command line.
    path = config.getoption("--yc-only")
    if not path:
        return
    with open(path) as f:
        wanted = {line.strip() for line in f if line.strip()}
    keep = [i for i in items if i.nodeid in wanted]
    config.hook.pytest_deselected(items=[i for i in items if i.nodeid not in wanted])
    items[:] = keep


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _mode == "cache":
        _cache.clear_sync()
        _reattach_listeners()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    rec = _results.setdefault(report.nodeid, {"outcome": "passed", "when": None})
    if report.when == "call" and hasattr(report, "wasxfail"):
        rec["outcome"] = "xfailed" if report.skipped else "xpassed"
        return
    if report.failed:
        if rec["outcome"] != "failed":  # keep the first failure's text
            rec.update(outcome="failed", when=report.when, text=report.longreprtext[:30000])
    elif report.skipped and rec["outcome"] == "passed":
        rec.update(outcome="skipped", when=report.when)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("--yc-report")
    if not path:
        return
    import sqlalchemy

    out = {
        "mode": _mode,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlalchemy_file": sqlalchemy.__file__,
        "python": sys.version.split()[0],
        "seconds": round(time.monotonic() - _started, 1),
        "cpu_seconds": round(time.process_time(), 1),
        "exitstatus": int(exitstatus),
        "tests": _results,
    }
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(out, f)
    os.replace(tmp, path)
