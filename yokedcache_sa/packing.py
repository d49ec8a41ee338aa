"""Values as msgpack with exact types: the body of an entry, and the bytes of a cache key.

``pack_value`` / ``unpack_value``: msgpack with extension types for datetime, date, time (with
their exact tzinfo: zoneinfo key or fixed offset), timedelta, Decimal, UUID, enum members,
tuples, sets, frozensets, OrderedDict and Counter. Types are matched exactly: a value decodes
to the very type it was encoded from, or it is refused with SerializationError. No pickle, no
import of modules named by an entry: an enum is decoded only if its class is already
imported. A defect in the bytes raises :class:`~yokedcache_sa.errors.CorruptEntryError`.

``pack_key``: the same encoding, never decoded, that also takes subclasses (tagged with their
class) so that distinct values never share a key.

The entry envelope around a body is :mod:`.codec`.
"""

from __future__ import annotations

import datetime as dt
import enum
import sys
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgpack

from .errors import CorruptEntryError, SerializationError

__all__ = ["pack_key", "pack_value", "unpack_value"]

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
_EXT_DATETIME_TZ = 11
_EXT_TIME_TZ = 12
_EXT_ORDEREDDICT = 13
_EXT_COUNTER = 14
_EXT_KEY_TYPED = 15  # in keys only (pack_key), never decoded
_EXT_PG_UUID = 16  # asyncpg's own uuid.UUID subclass, decoded as that class

_ASYNCPG_PROTO: Final = "asyncpg.pgproto.pgproto"
"""The module of asyncpg's UUID class: asyncpg returns ``Uuid`` columns as it."""


_MAX_DEPTH: Final = 500
_SCALARS: Final = frozenset({type(None), bool, int, float, str, bytes})
_SEQUENCES: Final = frozenset({list, tuple, set, frozenset})
_MAPPINGS: Final = frozenset({dict, OrderedDict, Counter})
# msgpack packs these natively as bytes or as a raw extension: they would decode as another
# type (bytes, or whatever our extension codes mean).
_NATIVE_NEAR_MISSES: Final = frozenset({bytearray, memoryview, msgpack.ExtType, msgpack.Timestamp})


def _refuse(obj: object, why: str = "") -> SerializationError:
    cls = type(obj)
    return SerializationError(
        f"cannot cache a value of type {cls.__module__}.{cls.__qualname__}{why}; only exact "
        "dict, list, tuple, set, frozenset, OrderedDict, Counter, str, int, float, bool, None, "
        "bytes, datetime, date, time, timedelta, Decimal, UUID and importable enum "
        "members round-trip exactly (subclasses do not): convert it first, or leave it uncached"
    )


def _check(obj: object, depth: int) -> None:
    # msgpack packs some types natively (bytearray and memoryview as bytes, ExtType as is),
    # where ``default`` never sees them: walk the value once so nothing comes back as a
    # near miss. Every other type is checked (by exact type) in _default.
    if depth > _MAX_DEPTH:
        raise SerializationError(f"value is nested deeper than {_MAX_DEPTH} levels")
    cls = type(obj)
    if cls in _SEQUENCES:
        scalars = _SCALARS
        for item in obj:  # type: ignore[attr-defined]  # cls is one of _SEQUENCES
            if type(item) not in scalars:
                _check(item, depth + 1)
    elif cls in _MAPPINGS:
        scalars = _SCALARS
        for k, v in obj.items():  # type: ignore[attr-defined]  # cls is one of _MAPPINGS
            if type(k) not in scalars:
                _check(k, depth + 1)
            if type(v) not in scalars:
                _check(v, depth + 1)
    elif cls in _NATIVE_NEAR_MISSES:
        raise _refuse(obj)
    elif isinstance(obj, enum.Enum) and type(obj._value_) not in _SCALARS:
        _check(obj._value_, depth + 1)


def _tz_spec(tz: dt.tzinfo, obj: object) -> object:
    """An exact description of *tz*: a zoneinfo key, or a fixed offset and its name."""
    cls = type(tz)
    if cls is dt.timezone:
        args = tz.__getinitargs__()  # type: ignore[attr-defined]  # (offset,) or (offset, name)
        off: dt.timedelta = args[0]
        return [off.days, off.seconds, off.microseconds, args[1] if len(args) > 1 else None]
    if cls is ZoneInfo:
        key = tz.key  # type: ignore[attr-defined]
        # Only a tzinfo that ZoneInfo(key) gives back is rebuilt exactly (not no_cache or
        # from_file instances).
        if key is not None and ZoneInfo(key) is tz:
            return key
    raise _refuse(obj, f" with tzinfo {cls.__module__}.{cls.__qualname__}")


def _plain_tz(tz: dt.tzinfo | None) -> bool:
    # A tzinfo the isoformat text rebuilds exactly: none, or an unnamed fixed offset
    # (fromisoformat turns +00:00 back into the timezone.utc singleton).
    return tz is None or (type(tz) is dt.timezone and len(tz.__getinitargs__()) == 1)  # type: ignore[attr-defined]


def _enc_datetime(obj: dt.datetime) -> msgpack.ExtType:
    tz = obj.tzinfo
    if obj.fold == 0 and _plain_tz(tz):
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    spec = None if tz is None else _tz_spec(tz, obj)
    naive = obj.replace(tzinfo=None, fold=0).isoformat()
    return msgpack.ExtType(_EXT_DATETIME_TZ, _packb([naive, obj.fold, spec]))


def _enc_time(obj: dt.time) -> msgpack.ExtType:
    tz = obj.tzinfo
    if obj.fold == 0 and _plain_tz(tz):
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    spec = None if tz is None else _tz_spec(tz, obj)
    naive = obj.replace(tzinfo=None, fold=0).isoformat()
    return msgpack.ExtType(_EXT_TIME_TZ, _packb([naive, obj.fold, spec]))


def _enc_enum(obj: enum.Enum) -> msgpack.ExtType:
    cls = type(obj)
    module, qualname = cls.__module__, cls.__qualname__
    # Decoding looks the class up by name and calls it with the value: refuse members that
    # would come back as another class or another member (local classes, shadowed names).
    try:
        found = _find_enum(module, qualname)
        same = found is cls and found(obj._value_) is obj
    except (CorruptEntryError, ValueError, TypeError):
        same = False
    if not same:
        raise _refuse(obj, " (its class cannot be found again by module and name)")
    return msgpack.ExtType(_EXT_ENUM, _packb([module, qualname, obj._value_]))


def _pairs(obj: dict[Any, Any]) -> list[list[Any]]:
    return [[k, v] for k, v in obj.items()]


_ENCODERS: Final[dict[type, Callable[[Any], object]]] = {
    dt.datetime: _enc_datetime,
    dt.date: lambda o: msgpack.ExtType(_EXT_DATE, o.isoformat().encode()),
    dt.time: _enc_time,
    dt.timedelta: lambda o: msgpack.ExtType(
        _EXT_TIMEDELTA, _packb([o.days, o.seconds, o.microseconds])
    ),
    Decimal: lambda o: msgpack.ExtType(_EXT_DECIMAL, str(o).encode()),  # str keeps the exponent
    uuid.UUID: lambda o: msgpack.ExtType(_EXT_UUID, o.bytes),
    tuple: lambda o: msgpack.ExtType(_EXT_TUPLE, _packb(list(o))),
    frozenset: lambda o: msgpack.ExtType(_EXT_FROZENSET, _packb(list(o))),
    set: lambda o: msgpack.ExtType(_EXT_SET, _packb(list(o))),
    OrderedDict: lambda o: msgpack.ExtType(_EXT_ORDEREDDICT, _packb(_pairs(o))),
    Counter: lambda o: msgpack.ExtType(_EXT_COUNTER, _packb(_pairs(o))),
}


def _default(obj: object) -> object:
    # Called for every type msgpack does not pack natively under strict_types (exact
    # bool/int/float/str/bytes/list/dict/None). Dispatch is on the exact type: a subclass
    # (a namedtuple, Decimal or str subclass, defaultdict…) has no encoding, because it
    # would decode as its base type.
    enc = _ENCODERS.get(type(obj))
    if enc is not None:
        return enc(obj)
    if isinstance(obj, enum.Enum):
        return _enc_enum(obj)
    if _is_asyncpg_uuid(type(obj)):
        # asyncpg's UUID (a uuid.UUID subclass it returns for every Uuid column) decodes as
        # itself: registered at first sight, so the next value takes the fast path
        _ENCODERS[type(obj)] = _enc_pg_uuid
        return _enc_pg_uuid(obj)
    raise _refuse(obj)


def _is_asyncpg_uuid(cls: type) -> bool:
    return cls.__module__ == _ASYNCPG_PROTO and cls.__qualname__ == "UUID"


def _enc_pg_uuid(obj: Any) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_PG_UUID, obj.bytes)


def _pg_uuid(data: bytes) -> object:
    # Never import: the class exists where asyncpg returned such a value (the entry's key
    # names the asyncpg dialect, so its readers have asyncpg loaded).
    proto = sys.modules.get(_ASYNCPG_PROTO)
    cls = getattr(proto, "UUID", None)
    if cls is None:
        raise CorruptEntryError("an asyncpg UUID, but asyncpg is not imported in this process")
    if len(data) != 16:
        raise CorruptEntryError("bad asyncpg UUID")
    return cls(data)


def _packb(obj: object) -> bytes:
    return msgpack.packb(obj, default=_default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]


def _key_default(obj: object) -> object:
    # Keys are never decoded; they must only be distinct for distinct values. A subclass of
    # a supported type is packed as its base value tagged with its class name, so Name("x")
    # and "x" (or Money(1) and Decimal(1)) give different keys yet stay cacheable.
    cls = type(obj)
    enc = _ENCODERS.get(cls)
    if enc is not None:
        return enc(obj)
    if isinstance(obj, enum.Enum):
        value = [cls.__module__, cls.__qualname__, obj._value_]
        return msgpack.ExtType(_EXT_ENUM, _packb_key(value))
    if _is_asyncpg_uuid(cls):  # as pack_value encodes it, registered or not
        _ENCODERS[cls] = _enc_pg_uuid
        return _enc_pg_uuid(obj)
    for base in cls.__mro__[1:]:
        if base in _KEY_BASES:
            plain = _KEY_BASES[base](obj)
            return msgpack.ExtType(
                _EXT_KEY_TYPED, _packb_key([f"{cls.__module__}.{cls.__qualname__}", plain])
            )
    raise _refuse(obj)


_KEY_BASES: Final[dict[type, Callable[[Any], object]]] = {
    bool: bool,
    int: int,
    float: float,
    str: str,
    bytes: bytes,
    dict: dict,
    list: list,
    tuple: list,
    set: list,
    frozenset: list,
    Decimal: str,
    dt.datetime: lambda o: _enc_datetime(dt.datetime.fromisoformat(o.isoformat())),
    dt.date: lambda o: o.isoformat(),
    uuid.UUID: lambda o: o.bytes,
}


def _packb_key(obj: object) -> bytes:
    return msgpack.packb(obj, default=_key_default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]


def pack_key(value: object) -> bytes:
    """Encode *value* (query parameters, function arguments) as bytes for a cache key.

    Unlike :func:`pack_value` the bytes are never decoded: subclasses of supported types are
    accepted, tagged with their class so that distinct values never share a key.

    Raises:
        SerializationError: the value (or something inside it) has no encoding.
    """
    try:  # _packb_key, inlined: this runs on every cached read
        return msgpack.packb(value, default=_key_default, use_bin_type=True, strict_types=True)  # type: ignore[no-any-return]
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError("value is nested too deeply (or contains itself)") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot use this value in a cache key: {exc}") from exc


def _dec_tz(spec: Any) -> dt.tzinfo | None:
    if spec is None:
        return None
    if type(spec) is str:
        return ZoneInfo(spec)
    days, seconds, micros, name = spec  # a malformed spec raises: the entry is corrupt
    off = dt.timedelta(days=days, seconds=seconds, microseconds=micros)
    return dt.timezone(off) if name is None else dt.timezone(off, name)


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
        if code == _EXT_PG_UUID:
            return _pg_uuid(data)
        if code == _EXT_TUPLE:
            return tuple(_unpackb(data))
        if code == _EXT_SET:
            return set(_unpackb(data))
        if code == _EXT_FROZENSET:
            return frozenset(_unpackb(data))
        if code == _EXT_ENUM:
            module, qualname, value = _unpackb(data)
            return _find_enum(module, qualname)(value)
        if code == _EXT_DATETIME_TZ:
            naive, fold, spec = _unpackb(data)
            return dt.datetime.fromisoformat(naive).replace(tzinfo=_dec_tz(spec), fold=fold)
        if code == _EXT_TIME_TZ:
            naive, fold, spec = _unpackb(data)
            return dt.time.fromisoformat(naive).replace(tzinfo=_dec_tz(spec), fold=fold)
        if code == _EXT_ORDEREDDICT:
            return OrderedDict((k, v) for k, v in _unpackb(data))
        if code == _EXT_COUNTER:
            return Counter({k: v for k, v in _unpackb(data)})
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
        if type(value) not in _SCALARS:
            _check(value, 0)
        return _packb(value)
    except SerializationError:
        raise
    except RecursionError:
        raise SerializationError("value is nested too deeply (or contains itself)") from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(f"cannot cache this value: {exc}") from exc


def unpack_value(data: bytes) -> Any:
    """Decode bytes made by :func:`pack_value`; raise CorruptEntryError on any defect."""
    try:  # _unpackb, inlined: this runs on every hit
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except CorruptEntryError:
        raise
    except Exception as exc:
        raise CorruptEntryError(f"body does not decode: {exc}") from None
