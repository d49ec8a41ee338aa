"""Pure parts: notification payloads to tags, URLs of any driver to libpq keywords."""

from __future__ import annotations

import pytest

from yokedcache_sa import ConfigError
from yokedcache_sa.pgnotify import tags_of_payload
from yokedcache_sa.pgnotify.conninfo import split_qualified, target_of


@pytest.mark.parametrize(
    ("payload", "tags"),
    [
        ("public.users", {"table:users", "table:public.users"}),
        ('public."Users"', {"table:Users", "table:public.Users"}),
        ('s."a.b"', {"table:a.b", "table:s.a.b"}),
        ('s."say ""hi"""', {'table:say "hi"', 'table:s.say "hi"'}),
        ("users", {"table:users"}),
        ("s.p1,s.parent", {"table:p1", "table:s.p1", "table:parent", "table:s.parent"}),
    ],
)
def test_payload_tags(payload: str, tags: set[str]) -> None:
    assert tags_of_payload(payload) == frozenset(tags)


@pytest.mark.parametrize("bad", ["", ".", "a.b.c", '"open', "a,", "a..b", 'a"b'])
def test_bad_payload_means_everything(bad: str) -> None:
    assert tags_of_payload(bad) is None


def test_split_qualified() -> None:
    assert split_qualified('x."Y"') == [("x", "Y")]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://u:secretpw@db.example:6543/app?ssl=require&prepared_statement_cache_size=0",
        "postgresql+psycopg://u:secretpw@db.example:6543/app?sslmode=require",
        "postgresql+psycopg2://u:secretpw@db.example:6543/app?sslmode=require",
        "postgresql://u:secretpw@db.example:6543/app?sslmode=require",
    ],
)
def test_any_driver_url(url: str) -> None:
    t = target_of(url)
    assert t.kwargs == {
        "host": "db.example",
        "port": 6543,
        "user": "u",
        "password": "secretpw",
        "dbname": "app",
        "sslmode": "require",
    }
    assert "secretpw" not in repr(t) and "secretpw" not in t.redacted


def test_engine_and_connect_args() -> None:
    from sqlalchemy import create_engine

    e = create_engine("postgresql+psycopg://u@h/db")
    assert target_of(e, {"password": "x"}).kwargs["password"] == "x"


def test_other_databases_are_refused() -> None:
    with pytest.raises(ConfigError, match="TTL and invalidate_tables"):
        target_of("mysql+pymysql://root:pw@127.0.0.1/test")
