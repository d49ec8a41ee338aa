"""Marks held for a joined external transaction (orm/held.py): the pool's checkin hands
them over without calling the cache (it may run inside the garbage collector), and the next
begin on a watched engine ends them."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text

from yokedcache_sa.orm import held, watch_engine

MARKS = [("cache", ["table:t"], "writer")]


@dataclass
class Held:
    engine: Engine
    finished: list[Any]  # what held._finish was given (bumped and dropped)


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Held]:
    # a file database: a queue pool, one DBAPI connection per checkout
    engine = create_engine(f"sqlite:///{tmp_path / 'held.db'}", pool_size=2)
    watch_engine(engine)
    held._listen_checkin(engine.pool)
    held._listen_checkin(engine.pool)  # once per pool
    finished: list[Any] = []
    monkeypatch.setattr(held, "_finish", finished.append)
    monkeypatch.setattr(held, "_held", [1])
    monkeypatch.setattr(held, "_ended", deque())
    try:
        yield Held(engine, finished)
    finally:
        engine.dispose()


def test_checkin_hands_held_marks_over_and_the_next_begin_ends_them(pool: Held) -> None:
    with pool.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        conn.connection.info[held.HELD_KEY] = MARKS
        conn.commit()  # the owner commits (marks end only after COMMIT), then closes
    # back in the pool: taken off the connection, not yet ended (no cache call, no lock)
    assert pool.finished == []
    assert list(held._ended) == [MARKS]
    with pool.engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1  # begins: ends them
        assert held.HELD_KEY not in conn.connection.info
    assert pool.finished == [MARKS]
    assert not held._ended


def test_marks_of_a_connection_still_checked_out_stay_until_its_transaction_ends(
    pool: Held,
) -> None:
    """A begin on another connection ends what the pool took back, never what a connection
    still checked out holds (its owner's transaction goes on); closing the owner's
    connection rolls its transaction back, which ends them."""
    with pool.engine.connect() as owner:
        owner.execute(text("SELECT 1"))
        owner.connection.info[held.HELD_KEY] = MARKS
        with pool.engine.connect() as other:
            other.execute(text("SELECT 1"))
        assert pool.finished == []  # still the owner's
        assert owner.connection.info[held.HELD_KEY] is MARKS
    assert pool.finished == [MARKS]
    assert not held._ended
