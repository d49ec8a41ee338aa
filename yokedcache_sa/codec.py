"""Entry format: a versioned, size-limited, optionally HMAC-signed msgpack envelope.

Layout (all integers big-endian)::

    b"YK" | format:u8 | flags:u8 | header_len:u32 | header | body | [mac: 16 bytes]

``header`` is msgpack ``[epoch, seq, tags, created]`` — the tag-version snapshot the value was
computed under (see docs/consistency.md). ``body`` is msgpack with extension types for
datetime, date, time, timedelta, Decimal, UUID, enum members, tuples, sets and frozensets.
No pickle, no import of modules named by an entry: an enum is decoded only if its class is
already imported. Any defect raises :class:`~yokedcache_sa.errors.CorruptEntryError`.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import struct
import sys
import uuid
from decimal import Decimal
from typing import Any, Final, NamedTuple

import msgpack

from .errors import CorruptEntryError, SerializationError

__all__ = [
    "FORMAT_VERSION",
    "Entry",
    "Header",
    "decode",
    "decode_header",
    "encode",
    "pack_value",
    "unpack_value",
]

MAGIC: Final = b"YK"
FORMAT_VERSION: Final = 1
FLAG_SIGNED: Final = 0x01
_PREFIX = struct.Struct(">2sBBI")
MAC_LEN: Final = 16

_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_TIME = 3
_EXT_DECIMAL = 4
_EXT_UUID = 5
_EXT_ENUM = 6
_EXT_TUPLE = 7
_EXT_SET = 8
_EXT_FROZENSET = 9
_EXT_TIMEDELTA = 10


class Entry(NamedTuple):
    """A decoded entry: its value and the tag-version snapshot it was computed under."""

    epoch: str
    seq: int
    tags: tuple[str, ...]
    created: float
    value: Any


def _default(obj: object) -> object:
    # bool/int/float/str/bytes/list/dict/None are native; order of checks matters for
    # subclasses (datetime is a date, IntEnum is an int but is handled natively first).
    if isinstance(obj, enum.Enum):
        cls = type(obj)
        return msgpack.ExtType(_EXT_ENUM, _packb([cls.__module__, cls.__qualname__, obj.value]))
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, dt.time):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    if isinstance(obj, dt.timedelta):
        return msgpack.ExtType(_EXT_TIMEDELTA, _packb([obj.days, obj.seconds, obj.microseconds]))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj)))
    if isinstance(obj, frozenset):
        return msgpack.ExtType(_EXT_FROZENSET, _packb(list(obj)))
    if isinstance(obj, set):
        return msgpack.ExtType(_EXT_SET, _packb(list(obj)))
    # subclasses of native types (defaultdict, str enums handled above…): encode as the base
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj)
    raise SerializationError(
        f"cannot cache a value of type {type(obj).__module__}.{type(obj).__qualname__}; "
        "return plain data (dict, list, str, int, float, bool, None, bytes, datetime, "
        "Decimal, UUID, enum) or convert it first"
    )


def _packb(obj: object) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]


def _ext_hook(code: int, data: bytes) -> object:
    try:
        if code == _EXT_DATETIME:
            return dt.datetime.fromisoformat(data.decode())
        if code == _EXT_DATE:
            return dt.date.fromisoformat(data.decode())
        if code == _EXT_TIME:
            return dt.time.fromisoformat(data.decode())
        if code == _EXT_TIMEDELTA:
            days, seconds, micros = _unpackb(data)
            return dt.timedelta(days=days, seconds=seconds, microseconds=micros)
        if code == _EXT_DECIMAL:
            return Decimal(data.decode())
        if code == _EXT_UUID:
            return uuid.UUID(bytes=data)
        if code == _EXT_TUPLE:
            return tuple(_unpackb(data))
        if code == _EXT_SET:
            return set(_unpackb(data))
        if code == _EXT_FROZENSET:
            return frozenset(_unpackb(data))
        if code == _EXT_ENUM:
            module, qualname, value = _unpackb(data)
            return _find_enum(module, qualname)(value)
    except CorruptEntryError:
        raise
    except Exception as exc:  # any malformed extension payload is corruption
        raise CorruptEntryError(f"bad extension value (type {code}): {exc}") from None
    raise CorruptEntryError(f"unknown extension type {code}")


def _find_enum(module: str, qualname: str) -> type[enum.Enum]:
    # Never import: a forged entry must not be able to trigger module import side effects.
    obj: object = sys.modules.get(module)
    if obj is None:
        raise CorruptEntryError(f"enum module {module!r} is not imported")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, enum.Enum)):
        raise CorruptEntryError(f"{module}.{qualname} is not an enum")
    return obj


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


def pack_value(value: object) -> bytes:
    """Encode *value* as msgpack with yokedcache's extension types.

    Raises:
        SerializationError: the value (or something inside it) has no encoding.
    """
    try:
        return _packb(value)
    except SerializationError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot cache this value: {exc}") from exc


def unpack_value(data: bytes) -> Any:
    """Decode bytes made by :func:`pack_value`; raise CorruptEntryError on any defect."""
    try:
        return _unpackb(data)
    except CorruptEntryError:
        raise
    except Exception as exc:
        raise CorruptEntryError(f"body does not decode: {exc}") from None


def _mac(secret: bytes, data: bytes) -> bytes:
    return hmac.new(secret, data, hashlib.sha256).digest()[:MAC_LEN]


def encode(
    value: object,
    *,
    epoch: str,
    seq: int,
    tags: tuple[str, ...],
    created: float,
    secret: bytes | None,
    max_bytes: int,
) -> bytes:
    """Encode an entry.

    Raises:
        SerializationError: the value cannot be encoded, or the entry exceeds *max_bytes*.
    """
    body = pack_value(value)
    header: bytes = msgpack.packb([epoch, seq, list(tags), created], use_bin_type=True)
    flags = FLAG_SIGNED if secret else 0
    out = _PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(header)) + header + body
    if secret:
        out += _mac(secret, out)
    if len(out) > max_bytes:
        raise SerializationError(
            f"encoded entry is {len(out)} bytes, over max_value_bytes={max_bytes}; "
            "raise CacheConfig.max_value_bytes or cache less"
        )
    return out


class Header(NamedTuple):
    """The verified header of an entry and where its body lies in the payload."""

    epoch: str
    seq: int
    tags: tuple[str, ...]
    created: float
    body_start: int
    body_end: int


def decode_header(payload: bytes, *, secret: bytes | None, max_bytes: int) -> Header:
    """Verify an entry's envelope (size, magic, format, MAC) and decode its header.

    Raises:
        CorruptEntryError: truncated, corrupt, oversized, of another format version, unsigned
            while a secret is configured, or with a MAC that does not verify.
    """
    n = len(payload)
    if n > max_bytes:
        raise CorruptEntryError(f"entry of {n} bytes exceeds max_value_bytes={max_bytes}")
    if n < _PREFIX.size:
        raise CorruptEntryError("entry is truncated")
    magic, version, flags, hlen = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise CorruptEntryError("not a yokedcache entry")
    if version != FORMAT_VERSION:
        raise CorruptEntryError(f"entry format {version}, this library reads {FORMAT_VERSION}")
    end = n
    if secret:
        if not flags & FLAG_SIGNED:
            raise CorruptEntryError("unsigned entry while a signing secret is configured")
        end = n - MAC_LEN
        if end < _PREFIX.size or not hmac.compare_digest(
            payload[end:], _mac(secret, payload[:end])
        ):
            raise CorruptEntryError("entry signature does not verify")
    elif flags & FLAG_SIGNED:
        raise CorruptEntryError("signed entry but no signing secret is configured")
    if flags & ~FLAG_SIGNED:
        raise CorruptEntryError(f"unknown entry flags {flags:#x}")
    hstart = _PREFIX.size
    if hstart + hlen > end:
        raise CorruptEntryError("entry header is truncated")
    try:
        epoch, seq, tags, created = msgpack.unpackb(
            payload[hstart : hstart + hlen], raw=False, use_list=True
        )
    except Exception as exc:
        raise CorruptEntryError(f"entry header does not decode: {exc}") from None
    if not (
        isinstance(epoch, str)
        and isinstance(seq, int)
        and isinstance(tags, list)
        and all(isinstance(t, str) for t in tags)
        and isinstance(created, float | int)
    ):
        raise CorruptEntryError("entry header has wrong field types")
    return Header(epoch, seq, tuple(tags), float(created), hstart + hlen, end)


def decode(payload: bytes, *, secret: bytes | None, max_bytes: int) -> Entry:
    """Decode and verify an entry.

    Raises:
        CorruptEntryError: as :func:`decode_header`, or a body that does not decode.
    """
    h = decode_header(payload, secret=secret, max_bytes=max_bytes)
    value = unpack_value(payload[h.body_start : h.body_end])
    return Entry(h.epoch, h.seq, h.tags, h.created, value)
