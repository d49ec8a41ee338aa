"""Fuzzing the decoder: any input decodes or raises CorruptEntryError, never anything else."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yokedcache_sa import codec
from yokedcache_sa.errors import CorruptEntryError

SECRET = b"fuzz-secret"
MAX = 1 << 20

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _try_decode(payload: bytes, secret: bytes | None) -> None:
    try:
        entry = codec.decode(payload, key="k", secret=secret, max_bytes=MAX)
    except CorruptEntryError:
        return
    assert isinstance(entry, codec.Entry)
    assert isinstance(entry.epoch, str) and isinstance(entry.seq, int)
    assert all(isinstance(t, str) for t in entry.tags)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.datetimes(),
    st.datetimes(timezones=st.just(dt.UTC)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
hashable = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.uuids(), st.dates())
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
        st.sets(hashable, max_size=4),
        st.frozensets(hashable, max_size=4),
    ),
    max_leaves=12,
)


def _encode(value: Any, secret: bytes | None) -> bytes:
    return codec.encode(
        value,
        key="k",
        epoch="ep",
        seq=3,
        tags=("*", "t"),
        created=1.0,
        secret=secret,
        max_bytes=MAX,
    )


@FUZZ
@given(st.binary(max_size=512), st.sampled_from([None, SECRET]))
def test_arbitrary_bytes(data: bytes, secret: bytes | None) -> None:
    _try_decode(data, secret)


@FUZZ
@given(st.binary(max_size=256), st.sampled_from([None, SECRET]))
def test_arbitrary_bytes_behind_a_valid_prefix(data: bytes, secret: bytes | None) -> None:
    _try_decode(b"YK\x01" + data, secret)
    _try_decode(b"YK\x01\x00" + data, secret)
    _try_decode(b"YK\x01\x00\x00\x00\x00" + bytes([len(data) & 0xFF]) + data, secret)


@FUZZ
@given(st.lists(st.binary(max_size=8), max_size=5))
def test_arbitrary_msgpack_bodies(ext_payloads: list[bytes]) -> None:
    # Every extension code we know (and some we don't) with random payloads.
    for code, blob in enumerate(ext_payloads):
        for ext in (code, code + 1, code + 6, 99):
            body = msgpack.packb([msgpack.ExtType(ext, blob), {"k": msgpack.ExtType(ext, blob)}])
            header = msgpack.packb(["ep", 1, ["*"], 1.0])
            entry = (
                codec._PREFIX.pack(b"YK", codec.FORMAT_VERSION, 0, len(header))
                + codec.key_digest("k")
                + header
                + body
            )
            _try_decode(entry, None)


@FUZZ
@given(
    values,
    st.sampled_from([None, SECRET]),
    st.data(),
)
def test_mutated_valid_entries(value: Any, secret: bytes | None, data: st.DataObject) -> None:
    payload = bytearray(_encode(value, secret))
    # the unmutated entry round-trips
    assert codec.decode(bytes(payload), key="k", secret=secret, max_bytes=MAX).value == value
    kind = data.draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "splice"]))
    n = len(payload)
    if kind == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, n - 1))
            payload[i] ^= data.draw(st.integers(1, 255))
    elif kind == "set":
        i = data.draw(st.integers(0, n - 1))
        payload[i] = data.draw(st.sampled_from([0x00, 0xFF, 0xC1, 0xD4, 0xC7, 0x7F, 0x80]))
    elif kind == "truncate":
        del payload[data.draw(st.integers(0, n - 1)) :]
    elif kind == "insert":
        i = data.draw(st.integers(0, n))
        payload[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete":
        i = data.draw(st.integers(0, n - 1))
        del payload[i : i + data.draw(st.integers(1, 8))]
    else:
        other = _encode(data.draw(values), secret)
        i = data.draw(st.integers(0, n))
        payload = payload[:i] + other[data.draw(st.integers(0, len(other))) :]
    for s in (secret, None, SECRET, b"other"):
        _try_decode(bytes(payload), s)


@FUZZ
@given(values)
def test_signed_entries_reject_any_single_bit_flip(value: Any) -> None:
    payload = _encode(value, SECRET)
    for i in range(0, len(payload), max(1, len(payload) // 16)):
        forged = bytearray(payload)
        forged[i] ^= 0x10
        try:
            codec.decode(bytes(forged), key="k", secret=SECRET, max_bytes=MAX)
        except CorruptEntryError:
            continue
        raise AssertionError(f"a flipped bit at {i} was accepted")


def test_known_tricky_values_round_trip() -> None:
    tricky = [
        Decimal("-0E-7"),
        dt.datetime.min,
        dt.datetime.max.replace(tzinfo=dt.UTC),
        dt.timedelta.min,
        dt.timedelta.max,
        uuid.UUID(int=2**128 - 1),
        (frozenset(), set(), ()),
    ]
    for v in tricky:
        assert codec.decode(_encode(v, None), key="k", secret=None, max_bytes=MAX).value == v
