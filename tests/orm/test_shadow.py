"""Sampled shadow reads (issue 13 item 6): a corrupted entry written straight into the store
(correct framing, signed with the cache's secret) is detected and counted; a commit between
the hit and the shadow read is not a mismatch; unsampled transactions are left alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import select, update
from sqlalchemy.orm import sessionmaker

from tests.orm.ormkit import Address, Env, User
from yokedcache_sa import CacheConfig, YokedCache, codec
from yokedcache_sa.metrics import prometheus
from yokedcache_sa.orm import CachingSession, shadow

pytestmark = pytest.mark.parametrize("db", ["sqlite", "postgresql", "mariadb"], indirect=True)


def read(s: Any) -> Any:
    return s.scalars(select(User).where(User.id == 3)).all()


def entry_keys(cache: YokedCache) -> list[str]:
    b: Any = cache.backend
    if b.name == "memory":
        return list(b._entries)
    n = len(b.entry_key(""))
    return [k.decode()[n:] for k in b.client.scan_iter(match=b.entry_key("q:*"))]


def forge(cache: YokedCache, key: str, change: Any) -> None:
    """Rewrite the entry at *key* straight in the store: same header, framing and MAC
    (made with the cache's secret), with *change* applied to the frozen rows."""
    b: Any = cache.backend
    frame = b""
    if b.name == "memory":
        raw = b._entries[key][1]
    else:  # Redis keeps "epoch:seq\n*\ntags\0" in front of the entry
        frame, _, raw = b.client.get(b.entry_key(key)).partition(b"\0")
        frame += b"\0"
    scope = cache._key_scope + key
    h = codec.decode_header(raw, key=scope, secret=cache._secret, max_bytes=cache._max_bytes)
    value = codec.unpack_value(raw[h.body_start : h.body_end])
    change(value)
    new = codec.encode(
        value,
        key=scope,
        epoch=h.epoch,
        seq=h.seq,
        tags=h.tags,
        created=h.created,
        secret=cache._secret,
        max_bytes=cache._max_bytes,
    )
    if b.name == "memory":
        e = b._entries[key]
        b._entries[key] = (e[0], new, *e[2:])
    else:
        b.client.set(b.entry_key(key), frame + new, keepttl=True)


def hit(cache: YokedCache, fn: Any) -> Any:
    """Call *fn*, assert it was served from *cache* (counted hits; the SQL counter would
    also see the background shadow read), return its result."""
    before = cache.get_stats_sync().hits
    out = fn()
    assert cache.get_stats_sync().hits == before + 1, "expected a cache hit"
    return out


def rename(value: Any) -> None:
    rows, objects, _kinds = value
    objects[rows[0][0]][3]["name"] = "mallory"


@pytest.fixture
def shadowed(
    env: Env,
) -> Iterator[tuple[YokedCache, sessionmaker[CachingSession], CollectorRegistry]]:
    cfg = env.cache.config
    url = cfg.redis_url.get_secret_value() if cfg.redis_url else None
    cache = YokedCache(
        CacheConfig(
            redis_url=url,
            key_prefix=cfg.key_prefix,
            shadow_read_rate=1.0,
            signing_secret="shadow-test-secret",
        ),
        backend=env.cache.backend,
    )
    registry = CollectorRegistry()
    prometheus.instrument(cache, registry)
    yield cache, sessionmaker(env.engine, class_=CachingSession, cache=cache), registry
    assert shadow.wait_idle()


def outcomes(registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.labels["outcome"]: s.value
        for m in registry.collect()
        for s in m.samples
        if s.name == "yokedcache_shadow_reads_total"
    }


def test_corrupted_entry_is_detected_and_counted(
    env: Env, shadowed: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache, Session, registry = shadowed
    with Session() as s:
        assert [u.name for u in read(s)] == ["carol"]  # miss: stored
    (key,) = entry_keys(cache)
    forge(cache, key, rename)
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        with Session() as s:
            served = hit(cache, lambda: [u.name for u in read(s)])
        assert served == ["mallory"]  # the forged entry was accepted and served
        assert shadow.wait_idle()
    assert outcomes(registry) == {"mismatch": 1.0}
    assert (
        registry.get_sample_value(
            "yokedcache_shadow_mismatches_total", {"table": User.__tablename__}
        )
        == 1.0
    )
    (line,) = [r for r in caplog.records if "shadow read mismatch" in r.getMessage()]
    assert line.levelno == logging.WARNING
    assert key[:26] in line.getMessage() and User.__tablename__ in line.getMessage()
    assert "carol" not in line.getMessage() and "mallory" not in line.getMessage()


def test_a_correct_entry_matches(env: Env, shadowed: Any, caplog: pytest.LogCaptureFixture) -> None:
    cache, Session, registry = shadowed
    unordered = lambda s: s.scalars(select(User).where(User.id < 4)).all()  # noqa: E731
    with Session() as s:
        read(s)
        unordered(s)
    with caplog.at_level(logging.WARNING, logger="yokedcache_sa"):
        with Session() as s:
            hit(cache, lambda: read(s))
            hit(cache, lambda: unordered(s))
        assert shadow.wait_idle()
    assert outcomes(registry) == {"match": 2.0}
    assert not [r for r in caplog.records if "mismatch" in r.getMessage()]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[shadow.ShadowJob]:
    """Shadow jobs kept instead of queued, to run them at a chosen moment."""
    jobs: list[shadow.ShadowJob] = []
    monkeypatch.setattr(shadow, "submit", jobs.append)
    return jobs


def test_a_commit_between_hit_and_shadow_read_is_not_a_mismatch(
    env: Env, shadowed: Any, captured: list[shadow.ShadowJob]
) -> None:
    cache, Session, registry = shadowed
    with Session() as s:
        read(s)
    with Session() as s:
        assert [u.name for u in hit(cache, lambda: read(s))] == ["carol"]
    (job,) = captured
    with Session() as s:  # a legitimate write, committed after the hit
        s.execute(update(User).where(User.id == 3).values(name="caroline"))
        s.commit()
    assert shadow.run(job) == "skipped"
    assert outcomes(registry) == {"skipped": 1.0}


def test_a_write_in_progress_during_the_shadow_read_is_not_a_mismatch(
    env: Env, shadowed: Any, captured: list[shadow.ShadowJob]
) -> None:
    cache, Session, _registry = shadowed
    with Session() as s:
        read(s)
    with Session() as s:
        hit(cache, lambda: read(s))
    (job,) = captured
    with env.engine.begin() as conn:  # the database changed ...
        conn.execute(update(User).where(User.id == 3).values(name="caroline"))
    writer = cache.new_writer()
    cache.begin_write_sync([f"table:{User.__tablename__}"], writer)  # ... and is being written
    try:
        assert shadow.run(job) == "skipped"
    finally:
        cache.end_write_sync([f"table:{User.__tablename__}"], writer)


def test_an_outside_write_without_invalidation_is_a_mismatch(
    env: Env, shadowed: Any, captured: list[shadow.ShadowJob]
) -> None:
    cache, Session, _registry = shadowed
    with Session() as s:
        read(s)
    with Session() as s:
        hit(cache, lambda: read(s))
    (job,) = captured
    with env.engine.begin() as conn:  # raw SQL on a plain connection: nobody invalidates
        conn.execute(update(User).where(User.id == 3).values(name="caroline"))
    assert shadow.run(job) == "mismatch"


def test_written_transactions_and_rate_zero_are_not_sampled(
    env: Env, shadowed: Any, captured: list[shadow.ShadowJob]
) -> None:
    cache, Session, _registry = shadowed
    with Session() as s:
        read(s)
    with Session() as s:
        s.add(Address(id=999, user_id=1, email="x@example.com"))
        s.flush()
        hit(cache, lambda: read(s))  # a hit (User not written) in a transaction that wrote
        s.rollback()
    assert captured == []
    other = lambda s: s.scalars(select(User).where(User.id == 2)).all()  # noqa: E731
    with env.Session() as s:  # env.cache: shadow_read_rate=0 (and no signing secret)
        other(s)
    with env.Session() as s:
        hit(env.cache, lambda: other(s))
    assert captured == []


async def test_async_session_hit_is_shadowed(env: Env, shadowed: Any) -> None:
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from tests.orm.conftest import async_url

    cache, _, registry = shadowed
    iso = "READ COMMITTED" if env.db.name == "mariadb" else None  # as the db fixture's
    engine = create_async_engine(async_url(env.db), isolation_level=iso)
    try:
        S = async_sessionmaker(engine, sync_session_class=CachingSession, cache=cache)
        async with S() as s:
            await s.scalars(select(User).where(User.id == 3))  # miss: stored
        (key,) = entry_keys(cache)
        forge(cache, key, rename)
        async with S() as s:
            names = [u.name for u in (await s.scalars(select(User).where(User.id == 3))).all()]
        assert names == ["mallory"]
        assert shadow.wait_idle()
        assert outcomes(registry) == {"mismatch": 1.0}
    finally:
        await engine.dispose()
