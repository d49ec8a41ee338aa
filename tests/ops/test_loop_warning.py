"""Issue 13, item 7: a sync session used on the event loop thread is named once, with the
fix; a sync session in a worker thread (FastAPI's threadpool) is not."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import Engine, select

from tests.ops.conftest import Player
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.logs import loop_check
from yokedcache_sa.orm import CachingSession


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loop_check, "armed", True)


def _loop_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event loop thread" in r.getMessage()]


async def test_sync_session_on_the_loop_warns_once_with_the_fix(
    armed: None, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(CacheConfig(memory_shared=False))
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        with CachingSession(sqlite_engine, cache=cache) as db:
            db.scalars(select(Player).where(Player.id == 1)).all()
            db.scalars(select(Player).where(Player.id == 2)).all()
            with pytest.raises(TypeError):
                await db.execute(select(Player))  # type: ignore[misc]  # the mistake itself
        with CachingSession(sqlite_engine, cache=cache) as db:
            db.scalars(select(Player).where(Player.id == 3)).all()
    found = _loop_warnings(caplog)
    assert len(found) == 1, found
    assert "sync_session_class=CachingSession" in found[0]
    assert "TypeError" in found[0]


async def test_sync_session_in_a_worker_thread_does_not_warn(
    armed: None, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    cache = YokedCache(CacheConfig(memory_shared=False))

    def work() -> None:
        with CachingSession(sqlite_engine, cache=cache) as db:
            db.scalars(select(Player).where(Player.id == 1)).all()
            db.get(Player, 1).name = "x"
            db.commit()

    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        await asyncio.to_thread(work)
    assert _loop_warnings(caplog) == []
    assert loop_check.armed


async def test_async_session_over_caching_session_does_not_warn(
    armed: None, sqlite_engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    cache = YokedCache(CacheConfig(memory_shared=False))
    aengine = create_async_engine(sqlite_engine.url.set(drivername="sqlite+aiosqlite"))
    maker = async_sessionmaker(aengine, sync_session_class=CachingSession, cache=cache)
    try:
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            async with maker() as db:
                (await db.scalars(select(Player))).all()
                (await db.get(Player, 1)).name = "y"
                await db.commit()
        assert _loop_warnings(caplog) == []
    finally:
        await aengine.dispose()
