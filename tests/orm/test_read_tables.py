"""The tables an entry is tagged with are the tables its SQL reads (issue 9, class 1).

ORM constructs expand only when compiled (relationship joins inside ``count()``'s subquery,
``any()``/``has()``, CTEs, ``column_property`` subqueries, loader criteria, inheritance, eager
joins): every table the rendered SQL names must invalidate the entry.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    exists,
    func,
    select,
    union,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    aliased,
    column_property,
    joinedload,
    mapped_column,
    query_expression,
    relationship,
    with_expression,
    with_loader_criteria,
)

from tests.orm.ormkit import Address, Base, Employee, Env, Manager, P, Tag, User


class RBase(DeclarativeBase):
    __table__: ClassVar[Table]


membership = Table(
    P + "rt_membership",
    RBase.metadata,
    Column("group_id", ForeignKey(P + "rt_groups.id"), primary_key=True),
    Column("member_id", ForeignKey(P + "rt_members.id"), primary_key=True),
)


class Member(RBase):
    __tablename__ = P + "rt_members"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    groups: Mapped[list[Group]] = relationship(secondary=membership, back_populates="members")


class Group(RBase):
    __tablename__ = P + "rt_groups"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    members: Mapped[list[Member]] = relationship(secondary=membership, back_populates="groups")
    extra: Mapped[int | None] = query_expression()


Group.n_members = column_property(
    select(func.count())
    .where(membership.c.group_id == Group.id)
    .correlate_except(membership)
    .scalar_subquery()
)


@pytest.fixture
def renv(env: Env) -> Iterator[Env]:
    RBase.metadata.drop_all(env.engine)
    RBase.metadata.create_all(env.engine)
    with env.engine.begin() as conn:
        conn.execute(Member.__table__.insert(), [{"id": 1, "name": "m1"}, {"id": 2, "name": "m2"}])
        conn.execute(Group.__table__.insert(), [{"id": 1, "name": "g1"}, {"id": 2, "name": "g2"}])
        conn.execute(membership.insert(), [{"group_id": 1, "member_id": 1}])
    try:
        yield env
    finally:
        RBase.metadata.drop_all(env.engine)


def _subq_union() -> Any:
    u = union(
        select(User.id).select_from(User).join(User.tags),
        select(Address.user_id).select_from(Address).join(Address.user),
    ).subquery()
    return select(u.c.id).order_by(u.c.id)


ua = aliased(User)

STATEMENTS: dict[str, Callable[[], Any]] = {
    "count-subquery-join": lambda: select(func.count()).select_from(
        select(Group).join(Group.members).where(Member.id == 1).subquery()
    ),
    "any": lambda: select(User.id).where(User.tags.any(Tag.name == "red")),
    "has": lambda: select(Address.id).where(Address.user.has(User.name == "alice")),
    "exists-join": lambda: select(Tag.id).where(
        exists(select(User.id).join(User.addresses).where(Address.email == "c@x"))
    ),
    "scalar-subquery-join": lambda: select(
        Group.id,
        select(func.count()).select_from(Member).join(Member.groups).scalar_subquery(),
    ),
    "cte-join": lambda: select(select(User.id).join(User.tags).cte("with_tags").c.id),
    "aliased-of-type": lambda: select(Address.id).join(Address.user.of_type(ua)),
    "joined-inheritance": lambda: select(Manager.name),
    "polymorphic-base": lambda: select(Employee).order_by(Employee.id),
    "joinedload": lambda: select(User).options(joinedload(User.tags)).order_by(User.id),
    "column-property": lambda: select(Group).order_by(Group.id),
    "with-expression": lambda: (
        select(Group)
        .options(
            with_expression(
                Group.extra,
                select(func.max(Member.id)).where(Member.name != "x").scalar_subquery(),
            )
        )
        .order_by(Group.id)
    ),
    "loader-criteria": lambda: select(User.id).options(
        with_loader_criteria(User, User.id.in_(select(Address.user_id)))
    ),
    "union-select-from-in-subquery": _subq_union,
    "nested-subquery-relationship": lambda: select(Group.name).where(
        Group.id.in_(
            select(membership.c.group_id).where(
                membership.c.member_id.in_(select(Member.id).join(Member.groups))
            )
        )
    ),
}

_NAMES = sorted(
    {t.name for t in Base.metadata.tables.values()}
    | {t.name for t in RBase.metadata.tables.values()},
    key=len,
    reverse=True,
)


def _named_tables(sql: str) -> set[str]:
    return {n for n in _NAMES if re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", sql)}


@pytest.mark.parametrize("name", list(STATEMENTS))
def test_every_table_in_the_rendered_sql_invalidates_the_entry(renv: Env, name: str) -> None:
    stmt = STATEMENTS[name]()
    sql = str(stmt.compile(renv.engine))
    tables = _named_tables(sql)
    assert tables, sql

    def read(s: Session) -> Any:
        return s.execute(stmt).unique().all()

    renv.warm(read)
    for t in sorted(tables):
        renv.cache.invalidate_tables_sync([t])
        assert renv.fresh_read(read) is not None, f"{t} missing from the tags of {name}"
        renv.hit(read)


def test_query_count_over_a_relationship_join_sees_an_association_insert(renv: Env) -> None:
    def count(s: Session) -> int:
        return s.query(Group).join(Group.members).filter(Member.id == 2).count()

    assert renv.warm(count) == 0
    with renv.Session() as s:
        member, group = s.get(Member, 2), s.get(Group, 1)
        assert member is not None and group is not None
        member.groups.append(group)
        s.commit()
    assert renv.fresh_read(count) == 1
    assert renv.hit(count) == 1
