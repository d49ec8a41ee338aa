"""Entry format: a versioned, size-limited, optionally HMAC-signed msgpack envelope.

Layout (all integers big-endian)::

    b"YK" | format:u8 | flags:u8 | header_len:u32 | key digest: 8 bytes | header | body
          | [mac: 16 bytes]

The key digest is a blake2b of the entry's full key (key prefix included): an entry copied
under another key is refused (:class:`KeyMismatch`). With a signing secret the MAC covers the
full key too, so a copy cannot be made to verify. ``header`` is msgpack ``[epoch, seq, tags,
created]`` — the tag-version snapshot the value was computed under (see docs/consistency.md).
``body`` is the value packed by :func:`~.packing.pack_value` (msgpack with exact types; no
pickle). Any defect raises :class:`~yokedcache_sa.errors.CorruptEntryError`.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any, Final, NamedTuple

import msgpack

from .errors import CorruptEntryError, SerializationError
from .packing import pack_key, pack_value, unpack_value

__all__ = [
    "FORMAT_VERSION",
    "Entry",
    "Header",
    "KeyMismatch",
    "decode",
    "decode_header",
    "encode",
    "key_digest",
    "pack_key",
    "pack_value",
    "unpack_value",
]

MAGIC: Final = b"YK"
FORMAT_VERSION: Final = 2
"""2 added the key digest and the key under the MAC; entries of format 1 are misses."""
FLAG_SIGNED: Final = 0x01
_PREFIX = struct.Struct(">2sBBI")
DIGEST_LEN: Final = 8
_HEAD: Final = _PREFIX.size + DIGEST_LEN
MAC_LEN: Final = 16


class KeyMismatch(CorruptEntryError):
    """The entry was stored for another key (copied, or swapped in the store)."""


def key_digest(key: str) -> bytes:
    """The short digest of a full entry key stored in (and checked against) its entry."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=DIGEST_LEN).digest()


class Entry(NamedTuple):
    """A decoded entry: its value and the tag-version snapshot it was computed under."""

    epoch: str
    seq: int
    tags: tuple[str, ...]
    created: float
    value: Any


def _mac(secret: bytes, key: str, data: bytes | memoryview) -> bytes:
    kb = key.encode("utf-8", "surrogatepass")
    msg = b"".join((len(kb).to_bytes(4, "big"), kb, data))
    return hmac.digest(secret, msg, "sha256")[:MAC_LEN]


def encode(
    value: object,
    *,
    key: str,
    epoch: str,
    seq: int,
    tags: tuple[str, ...],
    created: float,
    secret: bytes | None,
    max_bytes: int,
) -> bytes:
    """Encode an entry for the full key *key* (the cache's key prefix included).

    Raises:
        SerializationError: the value cannot be encoded, or the entry exceeds *max_bytes*.
    """
    body = pack_value(value)
    header: bytes = msgpack.packb([epoch, seq, list(tags), created], use_bin_type=True)
    flags = FLAG_SIGNED if secret else 0
    out = b"".join(
        (_PREFIX.pack(MAGIC, FORMAT_VERSION, flags, len(header)), key_digest(key), header, body)
    )
    if secret:
        out += _mac(secret, key, out)
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


def decode_header(payload: bytes, *, key: str, secret: bytes | None, max_bytes: int) -> Header:
    """Verify an entry's envelope (size, magic, format, key, MAC) and decode its header.

    Raises:
        KeyMismatch: the entry was stored for another key than *key*.
        CorruptEntryError: truncated, corrupt, oversized, of another format version, unsigned
            while a secret is configured, or with a MAC that does not verify.
    """
    n = len(payload)
    if n > max_bytes:
        raise CorruptEntryError(f"entry of {n} bytes exceeds max_value_bytes={max_bytes}")
    if n < _HEAD:
        raise CorruptEntryError("entry is truncated")
    magic, version, flags, hlen = _PREFIX.unpack_from(payload)
    if magic != MAGIC:
        raise CorruptEntryError("not a yokedcache entry")
    if version != FORMAT_VERSION:
        raise CorruptEntryError(f"entry format {version}, this library reads {FORMAT_VERSION}")
    if payload[_PREFIX.size : _HEAD] != key_digest(key):
        raise KeyMismatch("entry was stored under another key")
    end = n
    if secret:
        if not flags & FLAG_SIGNED:
            raise CorruptEntryError("unsigned entry while a signing secret is configured")
        end = n - MAC_LEN
        if end < _HEAD or not hmac.compare_digest(
            payload[end:], _mac(secret, key, memoryview(payload)[:end])
        ):
            raise CorruptEntryError("entry signature does not verify")
    elif flags & FLAG_SIGNED:
        raise CorruptEntryError("signed entry but no signing secret is configured")
    if flags & ~FLAG_SIGNED:
        raise CorruptEntryError(f"unknown entry flags {flags:#x}")
    hstart = _HEAD
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


def decode(payload: bytes, *, key: str, secret: bytes | None, max_bytes: int) -> Entry:
    """Decode and verify an entry stored under the full key *key*.

    Raises:
        CorruptEntryError: as :func:`decode_header`, or a body that does not decode.
    """
    h = decode_header(payload, key=key, secret=secret, max_bytes=max_bytes)
    value = unpack_value(payload[h.body_start : h.body_end])
    return Entry(h.epoch, h.seq, h.tags, h.created, value)
