"""The tutorial's code as written, driven with TestClient.

Bound to SQLite + the memory backend (with the tutorial's own override fixture) and to
PostgreSQL + Redis (the tutorial's production cache). Each step counts SQL statements at the
engine, so a check cannot pass by never caching.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, text

from tests.conftest import PG_URL, REDIS_URL, require_service
from yokedcache_sa import CacheConfig, YokedCache

pytestmark = [
    pytest.mark.filterwarnings("ignore::sqlalchemy.exc.MovedIn20Warning"),
    pytest.mark.filterwarnings("ignore:The `dict` method is deprecated"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
]

APP_FILE = Path(__file__).with_name("tutorial_app.py")


def load_tutorial(database_url: str | None) -> ModuleType:
    """Import tutorial_app.py as a fresh module; for another database substitute the URL."""
    source = APP_FILE.read_text()
    if database_url is not None:
        source = source.replace('"sqlite:///./app.db"', repr(database_url)).replace(
            ', connect_args={"check_same_thread": False}', ""
        )
    name = f"tutorial_app_{uuid.uuid4().hex[:8]}"
    module = ModuleType(name)
    module.__file__ = str(APP_FILE)
    sys.modules[name] = module
    exec(compile(source, str(APP_FILE), "exec"), module.__dict__)
    return module


class Counter:
    def __init__(self, engine: Any) -> None:
        self.n = 0
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, *args: Any) -> None:
        self.n += 1

    def delta(self) -> Any:
        start = self.n
        counter = self

        class _D:
            @property
            def value(self) -> int:
                return counter.n - start

        return _D()


@pytest.fixture(params=["sqlite-memory", "postgresql-redis"])
def tutorial(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, TestClient, Counter]]:
    monkeypatch.setenv("YOKEDCACHE_KEY_PREFIX", "tut" + uuid.uuid4().hex[:10])
    if request.param == "sqlite-memory":
        monkeypatch.chdir(tmp_path)  # the tutorial writes ./app.db
        mod = load_tutorial(None)
        # The tutorial's testing section, as written:
        test_cache = YokedCache(CacheConfig())  # memory backend
        mod.app.dependency_overrides[mod.cache] = lambda: test_cache
        client = TestClient(mod.app)
    else:
        require_service("Redis", REDIS_URL, 6379)
        require_service("PostgreSQL", PG_URL, 5432)
        mod = load_tutorial(PG_URL)
        with mod.engine.begin() as conn:
            conn.execute(text("DELETE FROM users"))
        mod.cache.connect_sync()  # what the tutorial's lifespan does
        mod.cache.clear_sync()
        client = TestClient(mod.app)
    counter = Counter(mod.engine)
    try:
        yield mod, client, counter
    finally:
        mod.app.dependency_overrides.clear()
        mod.cache.redirect_to(None)
        if request.param != "sqlite-memory":
            mod.cache.clear_sync()
            with mod.engine.begin() as conn:
                conn.execute(text("DELETE FROM users"))
        mod.cache.disconnect_sync()
        mod.engine.dispose()


def test_tutorial_end_to_end(tutorial: tuple[ModuleType, TestClient, Counter]) -> None:
    _mod, client, counter = tutorial

    r = client.post("/users", json={"name": "Ada", "email": "ada@example.com"})
    assert r.status_code == 200, r.text
    uid = r.json()["id"]
    assert isinstance(uid, int)

    d = counter.delta()
    first = client.get(f"/users/{uid}")
    assert first.status_code == 200
    assert first.json()["name"] == "Ada"
    assert d.value >= 1
    d = counter.delta()
    second = client.get(f"/users/{uid}")
    assert second.json() == first.json()
    assert d.value == 0, "second read must be a cache hit"

    r = client.put(f"/users/{uid}", json={"name": "Ada L."})
    assert r.status_code == 200
    d = counter.delta()
    assert client.get(f"/users/{uid}").json()["name"] == "Ada L.", "stale read after update"
    assert d.value >= 1

    r = client.post("/users", json={"name": "Bob", "email": "bob@example.com"})
    bob = r.json()["id"]
    client.put(f"/users/{bob}", json={"active": False})

    d = counter.delta()
    active = client.get("/users").json()
    everyone = client.get("/users", params={"active_only": False}).json()
    assert [u["name"] for u in active] == ["Ada L."]
    assert sorted(u["name"] for u in everyone) == ["Ada L.", "Bob"]
    assert d.value >= 2
    d = counter.delta()
    assert client.get("/users").json() == active
    assert client.get("/users", params={"active_only": False}).json() == everyone
    assert d.value == 0

    # analytics: cached, then invalidated by a committed write although only tagged
    # "analytics" (its SQL read users), and by /analytics/invalidate
    stats = client.get("/analytics/users").json()
    assert stats == {"total": 2, "active": 1, "inactive": 1}
    d = counter.delta()
    assert client.get("/analytics/users").json() == stats
    assert d.value == 0, "analytics must be cached"
    client.post("/users", json={"name": "Cy", "email": "cy@example.com"})
    assert client.get("/analytics/users").json() == {"total": 3, "active": 2, "inactive": 1}
    d = counter.delta()
    client.get("/analytics/users")
    assert d.value == 0
    assert client.post("/analytics/invalidate").json() == {"ok": True}
    d = counter.delta()
    assert client.get("/analytics/users").json()["total"] == 3
    assert d.value >= 1, "/analytics/invalidate must drop the cached result"

    r = client.delete(f"/users/{uid}")
    assert r.json() == {"ok": True}
    assert client.get(f"/users/{uid}").status_code == 404
    assert client.get(f"/users/{uid}").status_code == 404
    assert client.delete(f"/users/{uid}").status_code == 404

    stats = client.get("/cache/stats").json()
    assert stats["hit_rate"].endswith("%")
    rate = float(stats["hit_rate"].rstrip("%"))
    assert 0.0 < rate <= 100.0
    assert stats["keys"] >= 1
    assert client.get("/cache/health").json() == {"healthy": True}
    assert client.post("/cache/flush/users").json() == {"ok": True}
    d = counter.delta()
    client.get("/users")
    assert d.value >= 1, "flush must drop cached user lists"


def test_override_swaps_the_cache_used_by_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOKEDCACHE_KEY_PREFIX", "tut" + uuid.uuid4().hex[:10])
    mod = load_tutorial(None)
    a = YokedCache(CacheConfig())
    b = YokedCache(CacheConfig())
    client = TestClient(mod.app)
    try:
        mod.app.dependency_overrides[mod.cache] = lambda: a
        uid = client.post("/users", json={"name": "A", "email": "a@x"}).json()["id"]
        client.get(f"/users/{uid}")
        client.get(f"/users/{uid}")
        assert a.get_stats_sync().hits >= 1
        mod.app.dependency_overrides[mod.cache] = lambda: b
        client.get(f"/users/{uid}")
        assert b.get_stats_sync().misses >= 1
        assert b.get_stats_sync().hits == 0
    finally:
        mod.app.dependency_overrides.clear()
        mod.cache.redirect_to(None)
        mod.engine.dispose()
