"""Declared dependencies live on ``MetaData.info`` (issue 11); the name-only form still works."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, create_engine, insert, select

from tests.orm.ormkit import SQLCounter
from yokedcache_sa import YokedCache, declare_dependency
from yokedcache_sa.orm import CachingSession, dependents


def _two_tables() -> tuple[MetaData, Table, Table]:
    md = MetaData()
    base = Table("dep_base", md, Column("id", Integer, primary_key=True))
    fed = Table("dep_fed", md, Column("id", Integer, primary_key=True))
    return md, base, fed


@pytest.mark.parametrize("form", ["tables", "names+metadata"])
def test_declared_dependency_is_kept_on_the_metadata(
    form: str, tmp_path: Any, cache: YokedCache
) -> None:
    md, base, fed = _two_tables()
    if form == "tables":
        declare_dependency(fed, [base])
    else:
        declare_dependency("dep_fed", ["dep_base"], metadata=md)
    assert md.info["yokedcache_dependents"] == {"table:dep_base": {"table:dep_fed"}}
    assert "table:dep_base" not in dependents._UNATTACHED.info["yokedcache_dependents"]
    assert dependents.dependencies([md]) == {"table:dep_base": frozenset({"table:dep_fed"})}

    engine = create_engine(f"sqlite:///{tmp_path / 'deps.db'}")
    md.create_all(engine)
    counter = SQLCounter(engine)
    read = select(fed.c.id)
    with CachingSession(engine, cache=cache) as s:
        s.execute(read).all()
    with CachingSession(engine, cache=cache) as s:  # the writer knows md from the declaration
        s.execute(insert(base).values(id=1))  # (a trigger would fill dep_fed)
        s.commit()
    with CachingSession(engine, cache=cache) as s:
        _, n = counter.run(lambda: s.execute(read).all())
    assert n == 1  # invalidated through the declared dependency
    counter.remove()


def test_declared_dependency_by_names_still_works() -> None:
    md, _, _ = _two_tables()
    declare_dependency("dep_names_fed", ["dep_names_base"])
    try:
        closure = dependents.cascade_closure({"table:dep_names_base"}, [md])
        assert "table:dep_names_fed" in closure
    finally:
        dependents._UNATTACHED.info["yokedcache_dependents"].pop("table:dep_names_base")


def test_metadata_set_holds_its_members_weakly() -> None:
    """The write path's registry of MetaData (what it asks at every statement) lists the
    live members once each and keeps none alive."""
    import gc

    kept, dropped = MetaData(), MetaData()
    known = dependents.MetadataSet([kept])
    known.add(dropped)
    known.add(kept)  # again: still one entry
    assert sorted(map(id, known.members())) == sorted([id(kept), id(dropped)])
    assert dropped in known and len(known) == 2
    del dropped
    gc.collect()
    assert known.members() == [kept] and list(known) == [kept]
    later = MetaData()
    known.add(later)  # a new member: the dead ones are gone from the list too
    assert len(known._refs) == 2 and set(map(id, known)) == {id(kept), id(later)}
