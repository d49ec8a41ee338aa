"""Issue 13, item 3: one DEBUG line per hit, miss, store, refusal and invalidation, with the
key digest, the tables and the time; nothing at DEBUG is built while DEBUG is off."""

from __future__ import annotations

import logging
import re

import pytest
from sqlalchemy import select

from tests.ops.conftest import Player, Stack
from yokedcache_sa import YokedCache
from yokedcache_sa.orm import CachingSession

TIMED = re.compile(r" in \d+\.\d\d ms$")


def _debug(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG and r.name == "yokedcache_sa"
    ]


def test_session_reads_log_miss_store_hit_and_invalidation(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    table = Player.__tablename__
    stmt = select(Player).where(Player.team_id == 1)
    with caplog.at_level(logging.DEBUG, logger="yokedcache_sa"):
        with CachingSession(stack.engine, cache=stack.cache) as s:
            s.scalars(stmt).all()
        with CachingSession(stack.engine, cache=stack.cache) as s:
            s.scalars(stmt).all()
            s.get(Player, 1).name = "z"
            s.commit()
    lines = _debug(caplog)
    miss = [m for m in lines if m.startswith("yokedcache: miss key=q:")]
    stored = [m for m in lines if m.startswith("yokedcache: stored key=q:")]
    hit = [m for m in lines if m.startswith("yokedcache: hit key=q:")]
    inval = [m for m in lines if m.startswith("yokedcache: invalidated tags=")]
    assert len(hit) == 1, lines  # the second read of stmt (the get() is another query)
    key = hit[0].split()[2]
    first = [m for m in stored if key in m]  # the same digest names the entry in each line
    assert len(first) == 1 and any(key in m for m in miss), lines
    assert f"tables={table} " in first[0] and f"tables={table} " in hit[0]
    assert all(TIMED.search(m) for m in miss + stored + hit), lines
    assert any(f"table:{table}" in m for m in inval), lines


def test_refused_store_and_plain_keys(cache: YokedCache, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="yokedcache_sa"):
        snap = cache.observe_sync()
        assert snap is not None
        cache.invalidate_tags_sync(["table:orders"])
        assert not cache.store_sync("k:x", 1, tags=["table:orders"], snapshot=snap)
        cache.set_sync("secret-customer-42", 1)
    lines = _debug(caplog)
    refused = [m for m in lines if "store refused (a tag moved" in m]
    assert len(refused) == 1 and "tables=orders" in refused[0], lines
    assert not any("secret-customer-42" in m for m in lines)  # user keys are hashed
    assert any(m.startswith("yokedcache: stored key=k#") for m in lines), lines


def test_nothing_at_debug_when_debug_is_off(
    cache: YokedCache, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="yokedcache_sa"):
        cache.set_sync("a", 1)
        cache.get_sync("a")
        cache.get_sync("b")
        cache.invalidate_tags_sync(["t"])
    assert [r for r in caplog.records if r.levelno < logging.INFO] == []
