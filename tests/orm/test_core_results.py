"""Results that are not ORM entities, read through a caching session, answer as a plain
Session's do: ``select("*")`` through the ORM, and a Core statement's result handed to the
legacy ``Query.instances()``. Each case runs in a plain Session for the truth, then through
a CachingSession twice, with a new statement object each time (a miss, then a hit that
sends no SQL).

Found by SQLAlchemy's ORM suite run with CachingSession swapped in (docs/sqlalchemy-suite.md):
``test_loading.py::SelectStarTest::test_single_star[orm-*]`` and
``test_deprecations.py::InstancesTest::test_contains_eager``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import literal_column, select, text
from sqlalchemy.exc import SADeprecationWarning
from sqlalchemy.orm import Session, contains_eager

from tests.orm.ormkit import Address, Env, User
from yokedcache_sa.orm import FromCache

pytestmark = pytest.mark.parametrize("db", ["sqlite"], indirect=True)


STARS: dict[str, Callable[[], Any]] = {
    "plain": lambda: select("*"),
    "literal_column": lambda: select(literal_column("*")),
    # SQL text is cached only when told its tables
    "text": lambda: select(text("*")).options(
        FromCache(tables=[User.__tablename__, Address.__tablename__])
    ),
}


@pytest.mark.parametrize("star", list(STARS))
def test_select_star_through_the_orm(env: Env, star: str) -> None:
    def read(s: Session) -> Any:
        stmt = (
            STARS[star]().select_from(User).join(Address).where(User.id == 1).order_by(Address.id)
        )
        result = s.execute(stmt)
        keys = list(result.keys())
        rows = result.all()
        return keys, [tuple(r) for r in rows], [r._mapping["email"] for r in rows]

    answers = env.three_ways(read, statements=1)
    keys, rows, emails = answers[0]
    assert keys == ["id", "name", "age", "id", "user_id", "email"]
    assert rows == [(1, "alice", 30, 1, 1, "a1@x"), (1, "alice", 30, 2, 1, "a2@x")]
    assert emails == ["a1@x", "a2@x"]


def test_query_instances_of_a_core_result(env: Env) -> None:
    users, addresses = User.__table__, Address.__table__

    def read(s: Session) -> Any:
        core = (
            users.outerjoin(addresses)
            .select()
            .where(users.c.id < 4)
            .order_by(users.c.id, addresses.c.id)
        )
        # typed Result; a plain Session returns a CursorResult, which instances() wants
        rows: Any = s.execute(core)
        with warnings.catch_warnings():
            # Query.instances() and calling it without a context are deprecated
            warnings.simplefilter("ignore", SADeprecationWarning)
            loaded = list(s.query(User).options(contains_eager(User.addresses)).instances(rows))
        return [(u.id, u.name, [a.email for a in u.__dict__["addresses"]]) for u in loaded]

    answers = env.three_ways(read, statements=1)
    assert answers[0] == [(1, "alice", ["a1@x", "a2@x"]), (2, "bob", []), (3, "carol", ["c@x"])]
