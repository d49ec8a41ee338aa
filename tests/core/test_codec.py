"""Entry codec: round trips of every type, and every defect read as CorruptEntryError."""

from __future__ import annotations

import datetime as dt
import enum
import struct
import sys
import uuid
from collections import OrderedDict, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

from yokedcache_sa import codec
from yokedcache_sa.errors import CorruptEntryError, SerializationError, YokedCacheError

MAX = 1_048_576
SECRET = b"s3cret-key"


class Color(enum.Enum):
    RED = "red"
    GREEN = 2


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Outer:
    class Inner(enum.Enum):
        A = "a"


def enc(value: Any, *, secret: bytes | None = None, max_bytes: int = MAX, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"epoch": "ep1", "seq": 7, "tags": ("*", "t"), "created": 1.5}
    fields.update(kw)
    return codec.encode(value, key="k", secret=secret, max_bytes=max_bytes, **fields)


def dec(payload: bytes, *, secret: bytes | None = None, max_bytes: int = MAX) -> codec.Entry:
    return codec.decode(payload, key="k", secret=secret, max_bytes=max_bytes)


def roundtrip(value: Any, secret: bytes | None = None) -> Any:
    return dec(enc(value, secret=secret), secret=secret).value


UTC2 = dt.timezone(dt.timedelta(hours=2, minutes=30))

SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    -(2**63),
    2**64 - 1,
    1.25,
    float("inf"),
    "",
    "héllo ✓ \x00 nul",
    b"",
    b"\x00\xffbytes",
    [],
    {},
    [1, "a", None],
    {"a": 1, "b": [1, 2]},
    {1: "int key", 2.5: "float key"},
    dt.datetime(2024, 5, 17, 12, 30, 45, 123456),
    dt.datetime(2024, 5, 17, 12, 30, 45, tzinfo=dt.UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC2),
    dt.date(2024, 2, 29),
    dt.date(1, 1, 1),
    dt.time(0, 0),
    dt.time(23, 59, 59, 999999),
    dt.time(8, 15, tzinfo=UTC2),
    dt.timedelta(0),
    dt.timedelta(days=-3, seconds=5, microseconds=7),
    dt.timedelta(days=999_999_999),
    Decimal("0"),
    Decimal("-0.000"),
    Decimal("123456789012345678901234567890.123456789"),
    Decimal("1E+300"),
    Decimal("Infinity"),
    uuid.UUID(int=0),
    uuid.uuid4(),
    Color.RED,
    Color.GREEN,
    Level.HIGH,
    Outer.Inner.A,
    (),
    (1, "two", (3.0, None)),
    set(),
    {1, 2, "x"},
    frozenset(),
    frozenset({(1, 2), "y"}),
    {
        "when": dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
        "ids": {uuid.UUID(int=5), uuid.UUID(int=6)},
        "rows": [(1, Decimal("1.10"), Color.RED), (2, Decimal("2.20"), Level.LOW)],
        (1, 2): frozenset({dt.date(2020, 1, 2)}),
        "deep": [[[{"k": (dt.timedelta(seconds=1),)}]]],
    },
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("secret", [None, SECRET], ids=["plain", "signed"])
def test_round_trip_preserves_value_and_type(value: Any, secret: bytes | None) -> None:
    out = roundtrip(value, secret)
    assert out == value
    assert type(out) is type(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 5, 17, 12, 0, tzinfo=UTC2),
        dt.time(8, 15, tzinfo=UTC2),
        dt.datetime(2024, 5, 17, 12, 0),
    ],
)
def test_timezone_offset_survives(value: dt.datetime | dt.time) -> None:
    out = roundtrip(value)
    assert out.utcoffset() == value.utcoffset()
    assert (out.tzinfo is None) == (value.tzinfo is None)


def test_nan_decimal_and_float_round_trip() -> None:
    assert roundtrip(Decimal("NaN")).is_nan()
    out = roundtrip(float("nan"))
    assert out != out


def test_enum_members_are_identical_objects() -> None:
    assert roundtrip(Color.RED) is Color.RED
    assert roundtrip(Level.LOW) is Level.LOW
    assert roundtrip(Outer.Inner.A) is Outer.Inner.A


def test_native_subclasses_are_refused_not_coerced_to_their_base() -> None:
    with pytest.raises(SerializationError, match="defaultdict"):
        enc({"d": defaultdict(int, a=1)})
    with pytest.raises(SerializationError, match="bytearray"):
        enc({"b": bytearray(b"x")})
    assert type(roundtrip({"o": OrderedDict(b=2)})["o"]) is OrderedDict


def test_header_fields_round_trip() -> None:
    e = dec(enc("v", epoch="abc", seq=123456789, tags=("*", "table:users"), created=9.0))
    assert (e.epoch, e.seq, e.tags, e.created, e.value) == (
        "abc",
        123456789,
        ("*", "table:users"),
        9.0,
        "v",
    )


# -- unserializable values -------------------------------------------------------------------


class Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [
        Opaque(),
        object(),
        [1, Opaque()],
        {"k": {"deep": (Opaque(),)}},
        2**64,
        -(2**63) - 1,
        {Opaque(): 1},
        lambda: None,
        complex(1, 2),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unserializable_value_raises_serialization_error(value: Any) -> None:
    with pytest.raises(SerializationError) as info:
        enc(value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, YokedCacheError)


def test_serialization_error_names_the_type() -> None:
    with pytest.raises(SerializationError, match="Opaque"):
        codec.pack_value({"x": Opaque()})


def test_oversized_entry_is_refused_on_encode() -> None:
    with pytest.raises(SerializationError, match="max_value_bytes"):
        enc("x" * 1000, max_bytes=500)


# -- defects on decode -----------------------------------------------------------------------


def _reframe(payload: bytes, **changes: int) -> bytes:
    magic, version, flags, hlen = codec._PREFIX.unpack_from(payload)
    vals = {"version": version, "flags": flags, "hlen": hlen} | changes
    head = codec._PREFIX.pack(magic, vals["version"], vals["flags"], vals["hlen"])
    return head + payload[codec._PREFIX.size :]


def _entry_with_body(body: bytes, header: list[Any] | None = None) -> bytes:
    h = bytes(msgpack.packb(header if header is not None else ["ep", 1, ["*"], 1.0]))
    head = codec._PREFIX.pack(codec.MAGIC, codec.FORMAT_VERSION, 0, len(h))
    return head + codec.key_digest("k") + h + body


VALID = enc({"a": [1, 2, 3], "b": "text" * 10})
SIGNED = enc({"a": [1, 2, 3], "b": "text" * 10}, secret=SECRET)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"Y",
        b"YK\x01",
        VALID[:7],
        VALID[: codec._PREFIX.size],
        VALID[: codec._PREFIX.size + 3],
        VALID[:-1],
        VALID[: len(VALID) // 2],
        b"XX" + VALID[2:],
        b"\x80\x04pickle" + VALID,
        b'{"json": true}',
        _reframe(VALID, version=0),
        _reframe(VALID, version=1),  # the format before entries were bound to their key
        _reframe(VALID, version=255),
        _reframe(VALID, flags=0x02),
        _reframe(VALID, flags=0x80),
        _reframe(VALID, hlen=2**32 - 1),
        _reframe(VALID, hlen=len(VALID)),
        _reframe(VALID, hlen=0),
        VALID + b"\xc1",
        _entry_with_body(b"\xc1"),
        _entry_with_body(b"", header=["ep", 1, ["*"], 1.0]),
        _entry_with_body(msgpack.packb(1), header=[1, 1, ["*"], 1.0]),
        _entry_with_body(msgpack.packb(1), header=["ep", "1", ["*"], 1.0]),
        _entry_with_body(msgpack.packb(1), header=["ep", 1, "*", 1.0]),
        _entry_with_body(msgpack.packb(1), header=["ep", 1, [1], 1.0]),
        _entry_with_body(msgpack.packb(1), header=["ep", 1, ["*"], "now"]),
        _entry_with_body(msgpack.packb(1), header=["ep", 1, ["*"]]),
        _entry_with_body(msgpack.packb(1), header={"epoch": "ep"}),  # type: ignore[arg-type]
        _entry_with_body(msgpack.packb(msgpack.ExtType(99, b"?"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(1, b"not a date"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(1, b"\xff\xfe"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(2, b"2024-13-01"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(3, b"25:00"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(4, b"one"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(5, b"short"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(7, b"\xc1"))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(8, msgpack.packb([[1]])))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(9, msgpack.packb(5)))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(10, msgpack.packb([1, 2])))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(10, msgpack.packb([10**12, 0, 0])))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(6, msgpack.packb(["x"])))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(6, msgpack.packb([[1], "Q", 1])))),
        _entry_with_body(
            msgpack.packb(msgpack.ExtType(6, msgpack.packb([__name__, "Color", "purple"])))
        ),
        _entry_with_body(msgpack.packb(msgpack.ExtType(6, msgpack.packb([__name__, "Opaque", 1])))),
        _entry_with_body(msgpack.packb(msgpack.ExtType(6, msgpack.packb(["os", "system", 1])))),
        _entry_with_body(
            msgpack.packb(msgpack.ExtType(6, msgpack.packb([__name__, "Nope.Deeper", 1])))
        ),
        _entry_with_body(msgpack.packb({msgpack.ExtType(8, msgpack.packb([1])): 1})),
    ],
    ids=lambda p: f"n{len(p)}",
)
def test_defective_entry_raises_corrupt_entry_error(payload: bytes) -> None:
    with pytest.raises(CorruptEntryError):
        dec(payload)


def test_oversized_entry_is_refused_on_decode() -> None:
    payload = enc("x" * 2000)
    assert dec(payload, max_bytes=len(payload)).value == "x" * 2000
    with pytest.raises(CorruptEntryError, match="max_value_bytes"):
        dec(payload, max_bytes=len(payload) - 1)


def test_signed_entry_round_trips_with_the_same_secret() -> None:
    assert dec(SIGNED, secret=SECRET).value["a"] == [1, 2, 3]


@pytest.mark.parametrize(
    ("payload", "secret", "match"),
    [
        (VALID, SECRET, "unsigned"),
        (SIGNED, None, "no signing secret"),
        (SIGNED, b"another-secret", "signature"),
        (SIGNED[:-1], SECRET, "signature"),
        (SIGNED[:-16], SECRET, "signature"),
        (SIGNED[:-1] + bytes([SIGNED[-1] ^ 1]), SECRET, "signature"),
        (_reframe(VALID, flags=codec.FLAG_SIGNED), SECRET, "signature"),
    ],
    ids=["unsigned", "signed-no-secret", "other-secret", "short-mac", "no-mac", "bad-mac", "flag"],
)
def test_signature_defects(payload: bytes, secret: bytes | None, match: str) -> None:
    with pytest.raises(CorruptEntryError, match=match):
        dec(payload, secret=secret)


def test_every_single_byte_flip_of_a_signed_entry_is_rejected() -> None:
    for i in range(len(SIGNED)):
        for bit in (0x01, 0x80):
            forged = bytearray(SIGNED)
            forged[i] ^= bit
            with pytest.raises(CorruptEntryError):
                dec(bytes(forged), secret=SECRET)


def test_forged_header_with_recomputed_layout_but_old_mac_is_rejected() -> None:
    # Swap the header for one claiming a later write sequence, keeping the MAC.
    _m, _v, flags, hlen = codec._PREFIX.unpack_from(SIGNED)
    header = msgpack.packb(["ep1", 10**9, ["*"], 1.5])
    body_mac = SIGNED[codec._HEAD + hlen :]
    head = codec._PREFIX.pack(codec.MAGIC, codec.FORMAT_VERSION, flags, len(header))
    forged = head + SIGNED[codec._PREFIX.size : codec._HEAD] + header + body_mac
    with pytest.raises(CorruptEntryError, match="signature"):
        dec(forged, secret=SECRET)


def test_enum_of_a_module_not_imported_is_rejected_without_importing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported.txt"
    name = "yk_side_effect_mod"
    (tmp_path / f"{name}.py").write_text(
        "import enum, pathlib\n"
        f"pathlib.Path({str(marker)!r}).write_text('imported')\n"
        "class E(enum.Enum):\n    A = 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert name not in sys.modules
    forged = _entry_with_body(msgpack.packb(msgpack.ExtType(6, msgpack.packb([name, "E", 1]))))
    with pytest.raises(CorruptEntryError, match="not imported"):
        dec(forged)
    assert name not in sys.modules
    assert not marker.exists()


def test_enum_decoding_does_not_call_arbitrary_classes() -> None:
    # A forged entry naming a callable that is not an enum must not call it.
    calls: list[object] = []

    class Trap:
        def __init__(self, value: object) -> None:
            calls.append(value)

    module = sys.modules[__name__]
    monkey = pytest.MonkeyPatch()
    monkey.setattr(module, "Trap", Trap, raising=False)
    try:
        forged = _entry_with_body(
            msgpack.packb(msgpack.ExtType(6, msgpack.packb([__name__, "Trap", 1])))
        )
        with pytest.raises(CorruptEntryError, match="not an enum"):
            dec(forged)
    finally:
        monkey.undo()
    assert calls == []


def test_prefix_layout_is_stable() -> None:
    # The on-the-wire prefix is part of the format: magic, version, flags, header length.
    assert VALID[:2] == b"YK"
    assert VALID[2] == codec.FORMAT_VERSION == 2
    assert VALID[3] == 0
    assert SIGNED[3] == codec.FLAG_SIGNED
    (hlen,) = struct.unpack(">I", VALID[4:8])
    assert VALID[8:16] == codec.key_digest("k")
    assert 16 + hlen < len(VALID)
