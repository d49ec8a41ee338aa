"""Tags, tag ids and the pure freshness rule of the tag-version protocol.

A *tag* is any string a user or the ORM layer attaches to an entry (``table:users``,
``analytics``). Backends see *tag ids*: the tag itself when it is short and free of the
separator characters, else ``h\\x01`` plus a hash of it, so odd or huge tags are safe in keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from functools import lru_cache
from typing import NamedTuple

from .errors import ArgumentTypeError

__all__ = ["ALL_TAG", "Snapshot", "is_fresh", "table_tag", "tag_id", "tag_ids"]

ALL_TAG = "*"
"""Implicit tag of every entry: bumping it invalidates the whole cache (used when a write's
tables cannot be determined)."""

_MAX_RAW = 120
_FORBIDDEN = frozenset("\n\r\x00\x01")


def table_tag(name: str, schema: str | None = None) -> str:
    """Return the tag of a table: ``table:<name>`` or ``table:<schema>.<name>``."""
    return f"table:{schema}.{name}" if schema else f"table:{name}"


@lru_cache(maxsize=65536)
def tag_id(tag: str) -> str:
    """Return the backend-safe id of *tag* (itself if short and plain, else a hash)."""
    if not isinstance(tag, str):
        raise ArgumentTypeError(f"tags are strings, got {type(tag).__name__}")
    if tag and len(tag) <= _MAX_RAW and tag.isascii() and not (_FORBIDDEN & set(tag)):
        return tag
    return (
        "h\x01" + hashlib.blake2b(tag.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    )


def tag_ids(tags: Iterable[str]) -> tuple[str, ...]:
    """Return the sorted, de-duplicated ids of *tags*, always including :data:`ALL_TAG`."""
    return tuple(sorted({ALL_TAG, *map(tag_id, tags)}))


class Snapshot(NamedTuple):
    """What the store reported about tag versions at one instant.

    ``epoch``: random id of the version space (a new one after versions are lost);
    ``seq``: the global write sequence then; ``max_version``: the highest version among the
    entry's tags (0 = never written); ``marked``: some tag of the entry is being written.
    """

    epoch: str
    seq: int
    max_version: int = 0
    marked: bool = False

    def same_versions(self, other: Snapshot) -> bool:
        """Whether *other* reports the same version state of the entry's tags (same epoch,
        same highest version): nothing was written to them in between."""
        return self.epoch == other.epoch and self.max_version == other.max_version


def is_fresh(entry_epoch: str, entry_seq: int, current: Snapshot, horizon: int | None) -> bool:
    """Decide whether an entry may be served.

    An entry computed after observing write sequence ``entry_seq`` is fresh while none of its
    tags has been written since (``max_version <= entry_seq``), none is being written, and
    the version space is the same. With a *horizon* (the write sequence observed before a
    snapshot-isolated transaction began), the tags must also not have changed after it, so
    the transaction never sees data newer than its own snapshot.
    """
    if current.marked or entry_epoch != current.epoch:
        return False
    if current.max_version > entry_seq:
        return False
    return horizon is None or current.max_version <= horizon
