"""The installer and its CLI on the real PostgreSQL: idempotent, reported, removed; and the
ORM layer's side-effect check ignores its triggers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine

from tests.conftest import PG_URL, require_service
from yokedcache_sa.orm import routines
from yokedcache_sa.pgnotify import PgNotifyError, install, installed, uninstall
from yokedcache_sa.pgnotify.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def schema() -> Iterator[tuple[Engine, str]]:
    """A private schema with tables ``a``, ``b`` and ``"Odd.Name"``; dropped after."""
    require_service("PostgreSQL", PG_URL, 5432)
    name = "ycpni_" + uuid.uuid4().hex[:8]
    engine = create_engine(PG_URL)
    with engine.begin() as c:
        c.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        for t in ("a", "b", '"Odd.Name"'):
            c.exec_driver_sql(f'CREATE TABLE "{name}".{t} (id int)')
    try:
        yield engine, name
    finally:
        with engine.begin() as c:
            c.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        engine.dispose()


def _triggers(engine: Engine, schema: str) -> list[tuple[str, str]]:
    with engine.connect() as c:
        return [
            tuple(r)
            for r in c.exec_driver_sql(
                "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE n.nspname = '{schema}' AND NOT t.tgisinternal ORDER BY 1"
            )
        ]


def _trigger_oids(engine: Engine, schema: str) -> list[int]:
    with engine.connect() as c:
        return sorted(
            r[0]
            for r in c.exec_driver_sql(
                "SELECT t.oid FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}'"
            )
        )


def _functions(engine: Engine, schema: str) -> list[str]:
    with engine.connect() as c:
        return [
            r[0]
            for r in c.exec_driver_sql(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                f"WHERE n.nspname = '{schema}'"
            )
        ]


def test_install_is_idempotent_and_uninstall_removes_everything(
    schema: tuple[Engine, str],
) -> None:
    engine, s = schema
    first = install(engine, schema=s)  # every table of the schema
    assert first.functions == (f"{s}.yokedcache_notify",)
    assert first.tables == {
        f"{s}.a": "yokedcache",
        f"{s}.b": "yokedcache",
        f'{s}."Odd.Name"': "yokedcache",
    }
    trig = _triggers(engine, s)
    oids = _trigger_oids(engine, s)
    assert install(engine, schema=s) == first  # again: nothing changes
    assert _triggers(engine, s) == trig
    assert _trigger_oids(engine, s) == oids  # not dropped and re-created
    assert all(name.startswith("yokedcache_notify_") for _t, name in trig)
    assert len(trig) == 3
    assert installed(engine, schema=s) == first
    assert installed(engine, tables=[f"{s}.a"]).tables == {f"{s}.a": "yokedcache"}
    # one table out; the function stays while others use it
    left = uninstall(engine, tables=["a"], schema=s)
    assert set(left.tables) == {f"{s}.b", f'{s}."Odd.Name"'}
    assert left.functions == first.functions
    gone = uninstall(engine, schema=s)
    assert gone.tables == {} and gone.functions == ()
    assert _triggers(engine, s) == [] and _functions(engine, s) == []
    assert uninstall(engine, schema=s) == gone  # nothing left to remove


def test_install_switches_channel_and_keeps_user_triggers(schema: tuple[Engine, str]) -> None:
    engine, s = schema
    with engine.begin() as c:
        c.exec_driver_sql(
            f'CREATE FUNCTION "{s}".mine() RETURNS trigger LANGUAGE plpgsql '
            "AS $$ BEGIN RETURN NULL; END $$"
        )
        c.exec_driver_sql(
            f'CREATE TRIGGER mine AFTER INSERT ON "{s}".a FOR EACH STATEMENT '
            f'EXECUTE FUNCTION "{s}".mine()'
        )
    install(engine, tables=["a"], schema=s)
    st = install(engine, tables=["a"], schema=s, channel="other")
    assert st.tables == {f"{s}.a": "other"}
    uninstall(engine, schema=s)
    assert _triggers(engine, s) == [("a", "mine")]
    assert sorted(_functions(engine, s)) == ["mine"]


def test_unknown_table_is_an_error_that_changes_nothing(schema: tuple[Engine, str]) -> None:
    engine, s = schema
    with pytest.raises(PgNotifyError, match="does not exist"):
        install(engine, tables=["a", "nope"], schema=s)
    assert _triggers(engine, s) == [] and _functions(engine, s) == []


def test_our_trigger_is_not_a_side_effect(schema: tuple[Engine, str]) -> None:
    """A table with only the notify trigger is not treated as 'writes may change other
    tables' (which would count every write through pg_stat_xact_*); a user trigger is."""
    engine, s = schema
    install(engine, tables=["a", "b"], schema=s)
    with engine.begin() as c:
        c.exec_driver_sql(
            f'CREATE FUNCTION "{s}".mine() RETURNS trigger LANGUAGE plpgsql '
            "AS $$ BEGIN RETURN NULL; END $$"
        )
        c.exec_driver_sql(
            f'CREATE TRIGGER mine AFTER INSERT ON "{s}".b FOR EACH STATEMENT '
            f'EXECUTE FUNCTION "{s}".mine()'
        )
    with engine.connect() as c:
        dbapi = c.connection.dbapi_connection
        assert routines.pg_side_effects(engine, dbapi, [f"table:{s}.a"]) is False
        routines.forget_catalog(engine)
        assert routines.pg_side_effects(engine, dbapi, [f"table:{s}.b"]) is True
    routines.forget_catalog(engine)


def _cli(*args: str, module: str = "yokedcache_sa.pgnotify") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *module.split(), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_cli_json(schema: tuple[Engine, str]) -> None:
    engine, s = schema
    url = PG_URL.replace("postgres@", "postgres:pw-not-shown@")  # trust auth ignores it
    r = _cli("install", "--url", url, "--schema", s, "--table", "a", "--table", "b", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["ok"] and out["tables"] == {f"{s}.a": "yokedcache", f"{s}.b": "yokedcache"}
    assert "pw-not-shown" not in r.stdout + r.stderr
    r = _cli("status", "--url", url, "--schema", s, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["functions"] == [f"{s}.yokedcache_notify"]
    r = _cli("uninstall", "--url", url, "--schema", s, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["tables"] == {}
    assert _triggers(engine, s) == []
    r = _cli("install", "--url", url, "--schema", s, "--table", "missing", "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["ok"] is False
    assert "pw-not-shown" not in r.stdout + r.stderr


def test_the_main_command_line_runs_it_as_pg_notify(schema: tuple[Engine, str]) -> None:
    _engine, s = schema
    main_cli = "yokedcache_sa pg-notify"
    r = _cli("install", "--url", PG_URL, "--schema", s, "--table", "a", "--json", module=main_cli)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["tables"] == {f"{s}.a": "yokedcache"}
    r = _cli("status", "--url", PG_URL, "--schema", s, "--json", module=main_cli)
    assert r.returncode == 0 and json.loads(r.stdout)["functions"] == [f"{s}.yokedcache_notify"]
    r = _cli("uninstall", "--url", PG_URL, "--schema", s, module=main_cli)
    assert r.returncode == 0, r.stderr
    assert _cli("frobnicate", "--url", PG_URL, module=main_cli).returncode == 2


def test_cli_usage_errors() -> None:
    assert main(["frobnicate", "--url", PG_URL]) == 2
    assert main(["status", "--url", "mysql+pymysql://root@127.0.0.1/test"]) == 2
    env = os.environ.pop("YOKEDCACHE_PG_URL", None)
    try:
        assert main(["status"]) == 2
    finally:
        if env is not None:
            os.environ["YOKEDCACHE_PG_URL"] = env


def test_cli_unreachable_is_a_failure() -> None:
    from tests.redis_process import free_port

    url = f"postgresql://postgres:s3cretpw@127.0.0.1:{free_port()}/test"
    r = _cli("status", "--url", url)
    assert r.returncode == 1
    assert "cannot connect" in r.stderr and "s3cretpw" not in r.stderr


def test_a_channel_name_needing_quotes(schema: tuple[Engine, str]) -> None:
    """The channel reaches pg_notify() and LISTEN spelled the same (case, dots, quotes)."""
    import time

    from yokedcache_sa import CacheConfig, YokedCache
    from yokedcache_sa.pgnotify import NotifyListener

    engine, s = schema
    channel = 'Odd.Chan "x"'
    install(engine, tables=["a"], schema=s, channel=channel)
    cache = YokedCache(CacheConfig(key_prefix="ycpnchan" + uuid.uuid4().hex[:6]))
    with NotifyListener(cache, engine, channel=channel, tables=[f"{s}.a"]) as lst:
        assert lst.wait_ready(10)
        with engine.begin() as c:
            c.exec_driver_sql(f'INSERT INTO "{s}".a VALUES (1)')
        deadline = time.monotonic() + 10
        while lst.stats().notifications < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lst.stats().notifications == 1
    uninstall(engine, schema=s)
