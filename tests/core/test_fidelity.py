"""Type fidelity of the codec: a value decodes to the very types and values it was encoded
from (recursively), or it is refused with SerializationError — never a near miss."""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections import Counter, OrderedDict, defaultdict, namedtuple
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yokedcache_sa import CacheConfig, YokedCache, codec
from yokedcache_sa.errors import CorruptEntryError, SerializationError
from yokedcache_sa.packing import pack_key, pack_value, unpack_value

BERLIN = ZoneInfo("Europe/Berlin")
Point = namedtuple("Point", "x y")


class Money(Decimal):
    pass


class Ident(int):
    pass


class Name(str):
    pass


class Level(enum.IntEnum):
    LOW = 1


class Kind(enum.StrEnum):
    A = "a"


class Stamp(dt.datetime):
    pass


class OtherTZ(dt.tzinfo):
    def utcoffset(self, d: object) -> dt.timedelta:
        return dt.timedelta(hours=1)

    def dst(self, d: object) -> dt.timedelta:
        return dt.timedelta(0)

    def tzname(self, d: object) -> str:
        return "OTHER"


_CACHES = {
    None: YokedCache(CacheConfig(key_prefix="fidelity")),
    b"s": YokedCache(CacheConfig(key_prefix="fidelity", signing_secret="s")),
}


def roundtrip(value: Any, secret: bytes | None = None) -> Any:
    """Store *value* in a memory cache and read it back (a hit)."""
    cache = _CACHES[secret]
    assert cache.set_sync("k", value)
    out = cache.get_sync("k", default=KeyError)
    assert out is not KeyError
    return out


def assert_exact(a: Any, b: Any) -> None:
    """type(a) is type(b) and a == b, recursively; NaN, -0.0, Decimal exponents, tzinfo
    identity and fold included."""
    assert type(a) is type(b), (a, b)
    if type(a) is float:
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    elif type(a) is Decimal:
        assert a.as_tuple() == b.as_tuple() or (a.is_nan() and b.is_nan() and str(a) == str(b))
    elif type(a) in (dt.datetime, dt.time):
        assert a.tzinfo is b.tzinfo or (
            type(a.tzinfo) is dt.timezone
            and a.tzinfo.__getinitargs__() == b.tzinfo.__getinitargs__()  # type: ignore[attr-defined]
        ), (a.tzinfo, b.tzinfo)
        assert a.fold == b.fold and a.replace(tzinfo=None) == b.replace(tzinfo=None)
    elif type(a) in (list, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_exact(x, y)
    elif type(a) in (dict, OrderedDict, Counter):
        assert list(a) == list(b)
        for k in a:
            assert_exact(a[k], b[k])
    else:
        assert a == b


def test_zoneinfo_tzinfo_is_kept_so_arithmetic_across_dst_is_right() -> None:
    before = dt.datetime(2024, 3, 30, 12, 0, tzinfo=BERLIN)  # the day before summer time
    out = roundtrip(before)
    assert out.tzinfo is BERLIN
    # wall-clock arithmetic in the zone: +1 day is 23 hours later in UTC
    assert (out + dt.timedelta(days=1)).utcoffset() == dt.timedelta(hours=2)
    assert out + dt.timedelta(days=1) == before + dt.timedelta(days=1)


def test_utc_stays_the_utc_singleton_and_offsets_stay_offsets() -> None:
    assert roundtrip(dt.datetime(2024, 1, 1, tzinfo=dt.UTC)).tzinfo is dt.UTC
    fixed = dt.timezone(dt.timedelta(hours=-5))
    out = roundtrip(dt.datetime(2024, 1, 1, tzinfo=fixed))
    assert type(out.tzinfo) is dt.timezone and out.utcoffset() == dt.timedelta(hours=-5)
    named = dt.timezone(dt.timedelta(hours=1), "CET")
    assert roundtrip(dt.datetime(2024, 1, 1, tzinfo=named)).tzname() == "CET"
    assert (
        roundtrip(dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(0), "UTC"))).tzname()
        == "UTC"
    )


def test_fold_of_an_ambiguous_wall_time_is_kept() -> None:
    second = dt.datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=1)  # the repeated hour
    out = roundtrip(second)
    assert out.fold == 1 and out.utcoffset() == dt.timedelta(hours=1)
    assert roundtrip(dt.datetime(2024, 10, 27, 2, 30, fold=1)).fold == 1


EXACT: list[Any] = [
    dt.datetime(2024, 7, 1, 8, 0, tzinfo=BERLIN),
    dt.time(8, 15, tzinfo=BERLIN),
    dt.time(8, 15, tzinfo=dt.UTC),
    dt.time(8, 15, tzinfo=dt.timezone(dt.timedelta(hours=3), "X")),
    dt.timedelta(days=-1, microseconds=3),
    dt.date(2024, 2, 29),
    float("nan"),
    -0.0,
    Decimal("1.10"),
    Decimal("-0.00"),
    Decimal("1E+2"),
    Decimal("sNaN"),
    uuid.UUID(int=7),
    (1, (2, [3])),
    [(1,), [2]],
    b"raw",
    OrderedDict([("b", 1), ("a", OrderedDict(c=2))]),
    Counter({"x": 3, "y": 1}),
    {"nested": [OrderedDict(z=1), Counter(q=2)]},
    Level.LOW,
    Kind.A,
]


@pytest.mark.parametrize("value", EXACT, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("secret", [None, b"s"], ids=["plain", "signed"])
def test_round_trip_is_exact(value: Any, secret: bytes | None) -> None:
    assert_exact(value, roundtrip(value, secret))


REFUSED: list[Any] = [
    Point(1, 2),
    Money("1.10"),
    Ident(5),
    Name("n"),
    defaultdict(list, a=[1]),
    bytearray(b"x"),
    memoryview(b"x"),
    Stamp(2024, 1, 1),
    dt.datetime(2024, 1, 1, tzinfo=OtherTZ()),
    dt.datetime(2024, 1, 1, tzinfo=ZoneInfo.no_cache("Europe/Berlin")),
    dt.time(1, tzinfo=OtherTZ()),
    msgpack.ExtType(1, b"2024-01-01T00:00:00"),
    enum.Enum("Local", "A").A,  # type: ignore[attr-defined]  # a functional-API member  # its class cannot be found again by name
    [1, {"deep": (Point(1, 2),)}],
    {Name("key"): 1},
]


@pytest.mark.parametrize("value", REFUSED, ids=lambda v: type(v).__name__)
def test_values_that_would_come_back_as_another_type_are_refused(value: Any) -> None:
    with pytest.raises(SerializationError):
        codec.pack_value(value)


def test_a_value_that_contains_itself_is_refused() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError):
        codec.pack_value(loop)


# -- property: exact or refused ------------------------------------------------------------

zones = st.sampled_from(
    [None, dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), BERLIN, OtherTZ()]
)
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=10),
    st.binary(max_size=10),
    st.binary(max_size=4).map(bytearray),
    st.datetimes(timezones=zones, allow_imaginary=False),
    st.times(timezones=zones),
    st.dates(),
    st.timedeltas(),
    st.decimals(),
    st.uuids(),
    st.integers(-5, 5).map(Ident),
    st.text(max_size=3).map(Name),
    st.decimals(allow_nan=False, places=2).map(Money),
    st.builds(Point, st.integers(), st.integers()),
    st.sampled_from([Level.LOW, Kind.A]),
)
keys = st.one_of(st.text(max_size=5), st.integers(), st.text(max_size=3).map(Name))
nested = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.dictionaries(keys, inner, max_size=3).map(OrderedDict),
        st.dictionaries(keys, st.integers(), max_size=3).map(Counter),
        st.dictionaries(keys, inner, max_size=3).map(lambda d: defaultdict(list, d)),
        st.frozensets(st.integers(), max_size=3),
        st.sets(st.text(max_size=3), max_size=3),
    ),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nested, st.sampled_from([None, b"s"]))
def test_encode_decode_is_exact_or_refused(value: Any, secret: bytes | None) -> None:
    try:
        out = roundtrip(value, secret)
    except SerializationError:
        return
    if type(value) in (set, frozenset):
        assert type(out) is type(value) and out == value
        return
    assert_exact(value, out)


# -- entries bound to their key --------------------------------------------------------------


@pytest.mark.parametrize("secret", [None, b"s3cret"], ids=["plain", "signed"])
def test_an_entry_decodes_only_under_the_key_it_was_stored_for(secret: bytes | None) -> None:
    payload = codec.encode(
        "alice",
        key="p\x00q:1",
        epoch="e",
        seq=1,
        tags=("*",),
        created=0.0,
        secret=secret,
        max_bytes=1 << 20,
    )
    assert codec.decode(payload, key="p\x00q:1", secret=secret, max_bytes=1 << 20).value == "alice"
    for other in ("p\x00q:2", "other\x00q:1"):
        with pytest.raises(codec.KeyMismatch):
            codec.decode(payload, key=other, secret=secret, max_bytes=1 << 20)


def test_the_mac_covers_the_key_not_only_its_digest() -> None:
    payload = codec.encode(
        "alice",
        key="q:1",
        epoch="e",
        seq=1,
        tags=("*",),
        created=0.0,
        secret=b"s",
        max_bytes=1 << 20,
    )
    # rewrite the digest for another key: the digest now matches, the MAC must not
    forged = payload[:8] + codec.key_digest("q:2") + payload[16:]
    with pytest.raises(CorruptEntryError, match="signature"):
        codec.decode(forged, key="q:2", secret=b"s", max_bytes=1 << 20)


def test_asyncpg_uuid_round_trips_as_itself() -> None:
    """asyncpg returns every ``Uuid`` column as its own uuid.UUID subclass: it comes back as
    that class (was refused: reads with a Uuid column were never cached on asyncpg)."""
    from asyncpg.pgproto import pgproto  # type: ignore[import-untyped]

    value = pgproto.UUID(uuid.uuid4().bytes)
    plain_uuid = uuid.UUID(bytes=value.bytes)
    back = unpack_value(pack_value([value, plain_uuid]))
    assert type(back[0]) is pgproto.UUID and back[0] == value
    assert type(back[1]) is uuid.UUID
    # keys tell them apart, the same way before and after a value was first encoded
    assert pack_key(value) != pack_key(plain_uuid)
    assert pack_key(value) == pack_key(pgproto.UUID(value.bytes))


def test_an_asyncpg_uuid_entry_with_a_bad_payload_is_corrupt() -> None:
    forged = msgpack.packb(msgpack.ExtType(16, b"short"), use_bin_type=True)
    with pytest.raises(CorruptEntryError):
        unpack_value(forged)
