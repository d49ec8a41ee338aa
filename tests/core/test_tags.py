"""Tag ids and the pure freshness rule."""

from __future__ import annotations

import itertools

import pytest

from yokedcache_sa.tags import ALL_TAG, Snapshot, is_fresh, table_tag, tag_id, tag_ids

SEPARATORS = "\n\r\x00\x01"


@pytest.mark.parametrize(
    "tag", ["users", "table:users", "table:public.users", "a b", "*", "x" * 120]
)
def test_short_plain_tags_are_their_own_id(tag: str) -> None:
    assert tag_id(tag) == tag


@pytest.mark.parametrize(
    "tag",
    [
        "",
        "x" * 121,
        "y" * 1_000_000,
        "héllo",
        "表:ユーザー",
        "emoji 🙂",
        "\ud800 lone surrogate",
        "line\nbreak",
        "carriage\rreturn",
        "nul\x00byte",
        "soh\x01byte",
        "h\x01" + "0" * 32,
    ],
    ids=lambda t: f"len{len(t)}-{t[:6].encode('unicode_escape').decode()}",
)
def test_odd_or_huge_tags_get_a_safe_hashed_id(tag: str) -> None:
    tid = tag_id(tag)
    assert tid != tag
    assert tid.startswith("h\x01")
    assert len(tid) == 2 + 32
    assert tid[2:].isascii() and tid[2:].isalnum()
    assert not set(tid[2:]) & set(SEPARATORS)
    assert tag_id(tag) == tid  # deterministic


def test_hashed_ids_distinguish_tags() -> None:
    tags = ["", "x" * 121, "x" * 122, "é", "è", "a\nb", "a\rb", "y" * 1_000_000, "y" * 999_999]
    assert len({tag_id(t) for t in tags}) == len(tags)


def test_a_plain_tag_can_never_collide_with_a_hashed_id() -> None:
    # \x01 is forbidden in raw ids, so a user tag that looks like a hashed id is hashed too.
    lookalike = tag_id("é")
    assert tag_id(lookalike) != lookalike


@pytest.mark.parametrize("bad", [None, 1, b"bytes", ("t",)])
def test_non_string_tag_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="tags are strings"):
        tag_id(bad)


def test_tag_ids_sorted_deduplicated_with_all_tag() -> None:
    assert tag_ids([]) == (ALL_TAG,)
    assert tag_ids(["b", "a", "b", ALL_TAG]) == ("*", "a", "b")
    ids = tag_ids(["é", "z"])
    assert ids == tuple(sorted(ids))
    assert ALL_TAG in ids and "z" in ids and tag_id("é") in ids


def test_table_tag() -> None:
    assert table_tag("users") == "table:users"
    assert table_tag("users", "public") == "table:public.users"
    assert table_tag("users", None) == "table:users"


# -- is_fresh truth table -------------------------------------------------------------------

ENTRY_SEQ = 10


def _expected(same_epoch: bool, marked: bool, top: int, horizon: int | None) -> bool:
    if not same_epoch or marked or top > ENTRY_SEQ:
        return False
    return horizon is None or top <= horizon


@pytest.mark.parametrize(
    ("same_epoch", "marked", "top", "horizon"),
    list(
        itertools.product(
            [True, False],
            [False, True],
            [0, ENTRY_SEQ - 1, ENTRY_SEQ, ENTRY_SEQ + 1],
            [None, 5, 10],
        )
    ),
)
def test_is_fresh_truth_table(
    same_epoch: bool, marked: bool, top: int, horizon: int | None
) -> None:
    snap = Snapshot("ep" if same_epoch else "other", seq=99, max_version=top, marked=marked)
    assert is_fresh("ep", ENTRY_SEQ, snap, horizon) is _expected(same_epoch, marked, top, horizon)


@pytest.mark.parametrize(
    ("snap", "horizon", "fresh"),
    [
        (Snapshot("ep", 10), None, True),  # nothing written since
        (Snapshot("ep", 50, max_version=10), None, True),  # written exactly at the observed seq
        (Snapshot("ep", 50, max_version=11), None, False),  # written after the observation
        (Snapshot("ep", 50, max_version=0, marked=True), None, False),  # being written
        (Snapshot("new", 0), None, False),  # version state lost: new epoch
        (Snapshot("new", 10**9, max_version=0), None, False),  # ... even after seq grew past
        (Snapshot("ep", 50, max_version=8), 7, False),  # newer than the transaction snapshot
        (Snapshot("ep", 50, max_version=7), 7, True),
    ],
)
def test_is_fresh_cases(snap: Snapshot, horizon: int | None, fresh: bool) -> None:
    assert is_fresh("ep", 10, snap, horizon) is fresh


def test_snapshot_defaults_and_immutability() -> None:
    s = Snapshot("ep", 3)
    assert (s.max_version, s.marked) == (0, False)
    with pytest.raises(AttributeError):
        s.seq = 4  # type: ignore[misc]
