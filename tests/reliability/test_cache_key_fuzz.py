"""Property: the ORM cache key of a statement identifies the query exactly.

Random data and random small queries (filter value, order, limit, offset) run through a
CachingSession on SQLite: two executions share a cache key iff they are the same query, and
every result — fresh or served from the cache — equals the uncached result.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, Select, create_engine, delete, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import StaticPool

from tests.reliability.relkit import Base, CountingBackend, Post, User
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.backends.memory import MemoryBackend
from yokedcache_sa.orm import CachingSession

names = st.text(alphabet="ab\u00e9\n ", max_size=3)
Spec = tuple[str, Any, str, int | None, int | None]


@st.composite
def query_family(draw: st.DrawFn) -> list[Spec]:
    """Queries of one statement structure that differ in their values (filter, limit,
    offset) — the pairs most likely to collide if a value were left out of the key."""
    kind = draw(st.sampled_from(["name_eq", "version_ge", "id_in", "posts_of"]))
    order = draw(st.sampled_from(["id", "-id", "name,id", "-version,id"]))
    has_limit, has_offset = draw(st.booleans()), draw(st.booleans())
    n = draw(st.integers(1, 4))
    return [
        (
            kind,
            draw(st.one_of(names, st.integers(-1, 4))),
            order,
            draw(st.integers(0, 4)) if has_limit else None,
            draw(st.integers(0, 3)) if has_offset else None,
        )
        for _ in range(n)
    ]


specs = st.lists(query_family(), min_size=1, max_size=3).map(lambda fs: [q for f in fs for q in f])
rows = st.lists(st.tuples(names, st.integers(0, 3)), min_size=0, max_size=6)


def build(spec: Spec) -> Any:
    kind, value, order, limit, offset = spec
    stmt: Select[*tuple[Any, ...]]
    if kind == "posts_of":
        stmt = select(Post.title).join(User, Post.user_id == User.id)
    else:
        stmt = select(User.id, User.name, User.version)
    if kind == "name_eq":
        stmt = stmt.where(User.name == str(value))
    elif kind == "version_ge":
        stmt = stmt.where(User.version >= (value if isinstance(value, int) else len(value)))
    elif kind == "id_in":
        n = value if isinstance(value, int) else len(value)
        stmt = stmt.where(User.id.in_(list(range(1, max(n, 0) + 1))))
    else:
        stmt = stmt.where(User.name == str(value))
    cols = {"id": User.id, "name": User.name, "version": User.version}
    for part in order.split(","):
        col = cols[part.lstrip("-")]
        stmt = stmt.order_by(col.desc() if part.startswith("-") else col)
    if kind == "posts_of":
        stmt = stmt.order_by(Post.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    if offset is not None:
        stmt = stmt.offset(offset)
    return stmt


def canonical(spec: Spec) -> Spec:
    """Specs that build the very same statement compare equal."""
    kind, value, order, limit, offset = spec
    if kind in ("version_ge", "id_in"):
        value = value if isinstance(value, int) else len(value)
        if kind == "id_in":
            value = max(value, 0)
    else:
        value = str(value)
    return (kind, value, order, limit, offset)


@pytest.fixture(scope="module")
def sqlite() -> Iterator[Engine]:
    engine = create_engine("sqlite://", poolclass=StaticPool)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=rows, queries=specs, order=st.randoms())
def test_cache_keys_identify_queries(
    sqlite: Engine, data: list[tuple[str, int]], queries: list[Spec], order: Any
) -> None:
    with sqlite.begin() as conn:
        conn.execute(delete(Post))
        conn.execute(delete(User))
        if data:
            conn.execute(
                insert(User),
                [{"id": i + 1, "name": n, "version": v} for i, (n, v) in enumerate(data)],
            )
            conn.execute(
                insert(Post),
                [{"id": 100 + i, "user_id": i + 1, "title": f"p{i}"} for i in range(len(data))],
            )
    recorder = KeyRecorder(MemoryBackend())
    cache = YokedCache(CacheConfig(key_prefix="fuzz"), backend=recorder)

    def run(spec: Spec) -> tuple[list[Any], str]:
        recorder.keys.clear()
        with CachingSession(sqlite, cache=cache) as s:
            got = [tuple(r) for r in s.execute(build(spec))]
        assert recorder.keys, "the query was not looked up"
        with Session(sqlite) as s:
            want = [tuple(r) for r in s.execute(build(spec))]
        assert got == want, spec
        return got, recorder.keys[0]

    schedule = list(queries) + list(queries)
    order.shuffle(schedule)
    keys: dict[Spec, set[str]] = {}
    for spec in schedule:
        _rows, key = run(spec)
        keys.setdefault(canonical(spec), set()).add(key)
    for spec, ks in keys.items():
        assert len(ks) == 1, f"one query, several keys: {spec}"
    owners: dict[str, Spec] = {}
    for spec, ks in keys.items():
        (k,) = ks
        assert owners.setdefault(k, spec) == spec, f"{spec} and {owners[k]} share a key"
    assert cache.get_stats_sync().hits >= len(keys)  # every query ran twice: once served


class KeyRecorder(CountingBackend):
    """The memory backend, recording the keys looked up (first lookup of each execute)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.keys: list[str] = []

    def fetch(self, key: str, *args: Any, **kw: Any) -> Any:
        self.keys.append(key)
        return self.inner.fetch(key, *args, **kw)
