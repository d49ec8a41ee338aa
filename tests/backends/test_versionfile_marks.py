"""The shared version file's mark records against a model of the marks they stand for.

Pure logic on one mapping (no other process): random marks, releases and the passing of
time on a few slots that share a window of records, so windows fill and records go far.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from yokedcache_sa.backends.versionfile import WINDOW, MappedFile, writer_hash
from yokedcache_sa.backends.versionlife import create

SLOTS = (0, 1, 2, 3)  # one home window: their records compete for the same WINDOW places
WRITERS = [f"writer-{i}" for i in range(WINDOW + 12)]

op = st.one_of(
    st.tuples(
        st.just("mark"), st.sampled_from(SLOTS), st.sampled_from(WRITERS), st.floats(0.5, 60.0)
    ),
    st.tuples(st.just("release"), st.sampled_from(SLOTS), st.sampled_from(WRITERS), st.just(0.0)),
    st.tuples(st.just("wait"), st.just(0), st.just(""), st.floats(0.1, 30.0)),
)


@pytest.fixture(scope="module")
def directory() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as d:
        yield d


def _mapping(directory: str, name: str) -> MappedFile:
    path = os.path.join(directory, name)
    create(path, replace=True)
    fd = os.open(path, os.O_RDWR)
    st_ = os.fstat(fd)
    return MappedFile(fd, (st_.st_dev, st_.st_ino))


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(op, max_size=120))
def test_a_slot_reads_as_marked_exactly_while_a_live_mark_is_on_it(
    directory: str, ops: list[tuple[str, int, str, float]]
) -> None:
    m = _mapping(directory, "marks.ver")
    try:
        marks: dict[tuple[int, str], float] = {}  # the model: live or expired, not released
        now = 1_000_000.0
        for kind, slot, writer, amount in ops:
            if kind == "wait":
                now += amount
            elif kind == "mark":
                key = (slot, writer)
                marks[key] = max(marks.get(key, 0.0), now + amount)
                m.mark((slot,), writer_hash(writer), now + amount, now)
            else:
                marks.pop((slot, writer), None)
                m.release((slot,), writer_hash(writer), now)
            for s in SLOTS:
                live = [exp for (s2, _), exp in marks.items() if s2 == s and exp > now]
                summary = m.mmax[s]
                # a read counts a slot marked while its summary is in the future
                assert (summary > now) == bool(live), (s, summary, live, now)
                if live:
                    assert summary >= max(live)
        assert sum(1 for k in m.mkey.tolist() if k) <= len(marks)
    finally:
        m.close()
