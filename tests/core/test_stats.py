"""The cache's counters (pure logic): per-table hits are counted from the hits' tags when
read, and every so many hits, never twice and never lost."""

from __future__ import annotations

from yokedcache_sa import stats
from yokedcache_sa.stats import Counters


def test_table_hits_count_every_hit_once_whenever_they_are_read() -> None:
    c = Counters()
    users = ("table:users", "row:1")
    both = ("table:users", "table:groups")
    for _ in range(3):
        c.hit(users)
    c.hit(both)
    c.hit(())  # a key/value entry without tags
    assert c.hits == 5
    assert c.table_hits == {"table:users": 4, "table:groups": 1}
    assert c.table_hits == {"table:users": 4, "table:groups": 1}  # read twice: same counts
    n = 2 * stats._FOLD_AT + 1
    for _ in range(n):
        c.hit(users)
    assert len(c._hit_log) < stats._FOLD_AT  # counted as they came, not kept
    snap = c.snapshot(0, "memory", True, 0)
    assert snap.table_hits == {"table:users": 4 + n, "table:groups": 1}
    assert snap.hits == 5 + n
    c.reset()
    assert c.hits == 0 and c.table_hits == {}
