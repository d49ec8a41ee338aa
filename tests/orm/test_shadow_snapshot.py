"""Shadow reads are not sampled in snapshot-isolated transactions (PostgreSQL REPEATABLE
READ): the database read would see another snapshot than the one served."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from tests.orm.ormkit import Address, Env
from tests.orm.test_shadow import captured, hit, read, shadowed  # noqa: F401  (fixtures)
from yokedcache_sa.orm import CachingSession, shadow

pytestmark = pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # REPEATABLE READ


def test_snapshot_isolated_transactions_are_not_sampled(
    env: Env,
    shadowed: Any,  # noqa: F811  (the imported fixture)
    captured: list[shadow.ShadowJob],  # noqa: F811
) -> None:
    cache, _, _registry = shadowed
    rr = sessionmaker(
        env.engine.execution_options(isolation_level="REPEATABLE READ"),
        class_=CachingSession,
        cache=cache,
    )
    with rr() as s:
        read(s)
    with rr() as s:
        s.scalars(select(Address).where(Address.id == 1)).all()  # takes the snapshot
        hit(cache, lambda: read(s))  # served under the snapshot's horizon
    assert captured == []
