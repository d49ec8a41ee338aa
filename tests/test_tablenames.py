"""The suites' random table names never put two of their tags in one version slot (#9)."""

from __future__ import annotations

from tests.integrations import kit
from tests.orm import ormkit
from tests.tablenames import NAMED_TAGS, distinct_slots, random_token, tags_of
from yokedcache_sa.tags import ALL_TAG


def test_the_suffix_that_made_the_flake_is_a_collision() -> None:
    # With this suffix, committing to it_items_* bumped the slot of "analytics": the
    # @cached result tagged "analytics" became a miss after an unrelated write, and
    # test_plain_session_result_invalidated_by_caching_session_write[sqlite-memory-other-tags]
    # failed (1 run in ~4,000 with random suffixes).
    names = ["it_users_c912a701", "it_items_c912a701"]
    assert not distinct_slots([ALL_TAG, "analytics", *(t for n in names for t in tags_of(n))])


def test_random_tokens_avoid_collisions() -> None:
    for _ in range(200):
        token = random_token(lambda t: (f"it_users_{t}", f"it_items_{t}"), length=8)
        assert token != "c912a701"
        names = (f"it_users_{token}", f"it_items_{token}")
        assert distinct_slots([ALL_TAG, *NAMED_TAGS, *(t for n in names for t in tags_of(n))])


def test_the_suites_names_share_no_slot() -> None:
    for metadata in (kit.Base.metadata, ormkit.Base.metadata):
        tags = [t for name in metadata.tables for t in tags_of(name)]
        assert distinct_slots([ALL_TAG, *NAMED_TAGS, *tags]), sorted(metadata.tables)
