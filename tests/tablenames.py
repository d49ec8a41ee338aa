"""Random table names for suites that share databases, with no two tags in one version slot.

Suites give their tables a random prefix or suffix so that runs sharing one PostgreSQL or
MariaDB never clash. The memory backend's shared version record hashes tag ids into
``SLOTS`` slots (``yokedcache_sa/backends/versionfile.py``): two tags in one slot share a
version, so a commit to one table makes entries that read the other stale. That is safe by
design (stale too early, never too late), but a test asserting "a write to items leaves the
users result cached" then fails in the runs whose random names happen to collide — once in
a few thousand runs for two tables, far more often for a suite of a dozen (issue #9). The
names chosen here give every tag a suite's tables can carry (bare and schema-qualified) and
every tag its tests name a slot of its own, so that assumption holds in every run.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable

from yokedcache_sa.backends.versionfile import slot_of
from yokedcache_sa.tags import ALL_TAG, table_tag, tag_id

__all__ = ["NAMED_TAGS", "distinct_slots", "random_token", "tags_of"]

NAMED_TAGS = (
    "a",
    "alice",
    "analytics",
    "b",
    "bob",
    "by",
    "eo",
    "extra",
    "hinted",
    "i",
    "k",
    "k:x",
    "key",
    "name",
    "pad",
    "people",
    "plain",
    "q",
    "report",
    "reports",
    "sess",
    "t",
    "t-x",
    "tags",
    "unrelated",
    "users",
    "users-api",
    "v",
    "x",
)
"""Tags the suites name in ``tags=[...]`` and ``invalidate_tags([...])``."""

DEFAULT_SCHEMAS = ("main", "public", "test")
"""The default schemas of the test databases (SQLite, PostgreSQL, MariaDB's ``test``): a
write tags its tables with them too (``tracking.with_aliases``)."""


def tags_of(table: str) -> list[str]:
    """Every tag a read or a write of *table* may carry."""
    return [table_tag(table), *(table_tag(table, schema) for schema in DEFAULT_SCHEMAS)]


def distinct_slots(tags: Iterable[str]) -> bool:
    """Whether the distinct ids of *tags* fall in pairwise distinct version slots."""
    ids = {tag_id(t) for t in tags}
    return len({slot_of(i) for i in ids}) == len(ids)


def random_token(
    tables: Callable[[str], Iterable[str]], tags: Iterable[str] = (), length: int = 6
) -> str:
    """A random hex token of *length* whose tables (``tables(token)``), with ``*``,
    :data:`NAMED_TAGS` and *tags*, share no version slot."""
    named = [ALL_TAG, *NAMED_TAGS, *tags]
    for _ in range(1000):
        token = uuid.uuid4().hex[:length]
        if distinct_slots([*named, *(t for name in tables(token) for t in tags_of(name))]):
            return token
    raise AssertionError(f"no collision-free names for {list(tables('<token>'))}")
