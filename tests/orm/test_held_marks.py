"""Marks held for a joined external transaction (orm/held.py): the pool's checkin ends them,
and a failure there never breaks the connection's return to the pool."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text

from yokedcache_sa.orm import held


def test_a_failure_ending_held_marks_at_checkin_is_logged_not_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine("sqlite://")
    try:
        held._listen_checkin(engine.pool)
        held._listen_checkin(engine.pool)  # once per pool
        calls: list[object] = []

        def broken(info: dict[str, object]) -> None:
            calls.append(info.pop(held.HELD_KEY))  # taken, as _end takes them, then fails
            raise RuntimeError("store exploded")

        monkeypatch.setattr(held, "_end", broken)
        monkeypatch.setattr(held, "_held", [1])
        with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                conn.connection.info[held.HELD_KEY] = [("cache", ["table:t"], "writer")]
            # the connection went back to the pool, and the pool still hands it out
            with engine.connect() as conn:
                assert conn.execute(text("SELECT 1")).scalar() == 1
        assert len(calls) == 1
        assert "could not end marks held" in caplog.text
    finally:
        engine.dispose()
