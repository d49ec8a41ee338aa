"""Type fidelity through a CachingSession: a hit returns the database's values with their
exact types, or the result is not cached (every read queries the database) — never a near
miss. Also: an entry copied under another query's key is never served for that query."""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, OrderedDict, defaultdict, namedtuple
from collections.abc import Iterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import (
    DateTime,
    Engine,
    Integer,
    PickleType,
    String,
    TypeDecorator,
    create_engine,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

from tests.orm.ormkit import P, SQLCounter, User, root_conftest
from yokedcache_sa import CacheConfig, YokedCache
from yokedcache_sa.orm import CachingSession

_root = root_conftest()
Point = namedtuple("Point", "x y")


class Money(Decimal):
    pass


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class PointType(TypeDecorator[Point]):
    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else f"{value[0]},{value[1]}"

    def process_result_value(self, value: Any, dialect: Any) -> Point | None:
        return None if value is None else Point(*map(int, value.split(",")))


class MoneyType(TypeDecorator[Money]):
    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Any) -> Money | None:
        return None if value is None else Money(value)


class LevelType(TypeDecorator[Level]):
    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> int | None:
        return None if value is None else int(value)

    def process_result_value(self, value: Any, dialect: Any) -> Level | None:
        return None if value is None else Level(value)


class Base(DeclarativeBase):
    pass


class Typed(Base):
    __tablename__ = P + "typed"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    point: Mapped[Any] = mapped_column(PointType, nullable=True)
    money: Mapped[Any] = mapped_column(MoneyType, nullable=True)
    level: Mapped[Any] = mapped_column(LevelType, nullable=True)
    blob: Mapped[Any] = mapped_column(PickleType, nullable=True)


BERLIN = ZoneInfo("Europe/Berlin")


def _engine(kind: str, tmp_path: Any) -> Iterator[Engine]:
    if kind == "sqlite":
        eng = create_engine(f"sqlite:///{tmp_path / 'types.db'}")
    else:
        _root.require_service("PostgreSQL", _root.PG_URL, 5432)
        # psycopg returns datetimes in the session TimeZone as ZoneInfo-aware values
        eng = create_engine(_root.PG_URL, connect_args={"options": "-c TimeZone=Europe/Berlin"})
    Base.metadata.drop_all(eng)
    Base.metadata.create_all(eng)
    try:
        yield eng
    finally:
        Base.metadata.drop_all(eng)
        eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Engine]:
    yield from _engine(request.param, tmp_path)


@pytest.fixture
def pg_engine(tmp_path: Any) -> Iterator[Engine]:
    yield from _engine("postgresql", tmp_path)


def _insert(engine: Engine, **cols: Any) -> None:
    with sessionmaker(engine)() as s, s.begin():
        s.add(Typed(id=1, **cols))


def _read(engine: Engine, cache: YokedCache, column: str) -> tuple[Any, int]:
    counter = SQLCounter(engine)
    try:
        with sessionmaker(engine, class_=CachingSession, cache=cache)() as s:
            return counter.run(
                lambda: s.scalar(select(getattr(Typed, column)).where(Typed.id == 1))
            )
    finally:
        counter.remove()


def test_zoneinfo_datetime_from_postgresql_keeps_its_zone(
    pg_engine: Engine, cache: YokedCache
) -> None:
    engine = pg_engine
    _insert(engine, at=dt.datetime(2024, 3, 30, 12, 0, tzinfo=BERLIN))
    truth, n = _read(engine, cache, "at")
    assert n == 1 and truth.tzinfo is BERLIN
    hit, n = _read(engine, cache, "at")
    assert n == 0, "expected a hit"
    assert hit.tzinfo is truth.tzinfo
    # the day after, across the switch to summer time: the same instant as the database's
    assert hit + dt.timedelta(days=1) == truth + dt.timedelta(days=1)
    assert (hit + dt.timedelta(days=1)).utcoffset() == dt.timedelta(hours=2)


CACHED: dict[str, tuple[str, Any]] = {
    "int-enum": ("level", Level.HIGH),
    "ordered-dict": ("blob", OrderedDict([("b", 1), ("a", 2)])),
    "counter": ("blob", Counter({"x": 2})),
    "tuple-in-pickle": ("blob", {"t": (1, 2), "l": [1, 2]}),
    "nan-and-decimal": ("blob", [float("nan"), -0.0, Decimal("1.10")]),
}
UNCACHED: dict[str, tuple[str, Any]] = {
    "namedtuple": ("point", Point(1, 2)),
    "decimal-subclass": ("money", Money("9.90")),
    "defaultdict": ("blob", defaultdict(list, a=[1])),
    "bytearray": ("blob", bytearray(b"xy")),
}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


@pytest.mark.parametrize("case", CACHED)
def test_hits_return_the_exact_types(engine: Engine, cache: YokedCache, case: str) -> None:
    column, value = CACHED[case]
    _insert(engine, **{column: value})
    truth, n = _read(engine, cache, column)
    assert n == 1
    hit, n = _read(engine, cache, column)
    assert n == 0, "expected a hit"
    assert _same(hit, truth) and _same(hit, value)


@pytest.mark.parametrize("case", UNCACHED)
def test_values_without_an_exact_encoding_are_read_from_the_database(
    engine: Engine, cache: YokedCache, case: str
) -> None:
    column, value = UNCACHED[case]
    _insert(engine, **{column: value})
    for _ in range(2):
        got, n = _read(engine, cache, column)
        assert n == 1, "a value that cannot round-trip exactly must not be served from cache"
        assert _same(got, value)
    if column == "point":
        assert got.x == 1


# -- an entry copied under another query's key ---------------------------------------------


def _keys(cache: YokedCache) -> set[str]:
    b: Any = cache.backend
    if b.name == "memory":
        return set(b._entries)
    n = len(b.entry_key(""))
    return {k.decode()[n:] for k in b.client.scan_iter(match=b.entry_key("*"))}


def _copy(cache: YokedCache, src: str, dst: str) -> None:
    b: Any = cache.backend
    if b.name == "memory":
        b._entries[dst] = b._entries[src]
    else:
        b.client.set(b.entry_key(dst), b.client.get(b.entry_key(src)))


@pytest.mark.parametrize("secret", [None, "s3cret"], ids=["plain", "signed"])
def test_alices_entry_under_bobs_key_is_not_served_for_bob(env: Any, secret: str | None) -> None:
    cfg = env.cache.config
    url = cfg.redis_url.get_secret_value() if cfg.redis_url else None
    cache = YokedCache(
        CacheConfig(redis_url=url, key_prefix=cfg.key_prefix, signing_secret=secret),
        backend=env.cache.backend,
    )
    Session = sessionmaker(env.engine, class_=CachingSession, cache=cache)

    def name_of(uid: int) -> str:
        with Session() as s:
            return s.scalars(select(User).where(User.id == uid)).one().name

    assert name_of(1) == "alice"
    k1 = _keys(cache)
    assert name_of(2) == "bob"
    (k2,) = _keys(cache) - k1
    (k1_,) = k1
    _copy(cache, k1_, k2)
    got, n = env.sql.run(lambda: name_of(2))
    assert got == "bob" and n == 1
    assert cache.get_stats_sync().errors == 1
