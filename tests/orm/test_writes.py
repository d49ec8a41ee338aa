"""Stale data: every way of writing invalidates the cached reads of what it wrote.

Each scenario first proves the read is cached (a hit sends 0 statements), then writes and
commits, then proves the next read goes to the database (>= 1 statement) and sees the new
data — and that it is cached again afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.orm import Session, selectinload

from tests.orm.ormkit import Address, Employee, Env, Manager, P, Tag, User, user_tags

pytestmark = pytest.mark.drivers("sync", "async", "listen")

Read = Callable[[Session], Any]
Write = Callable[[Session], None]


def user_names(s: Session) -> Any:
    return s.scalars(select(User.name).order_by(User.id)).all()


def users_by_id(s: Session) -> Any:
    return [(u.id, u.name) for u in s.scalars(select(User).order_by(User.id))]


def one_user(s: Session) -> Any:
    u = s.get(User, 1)
    return None if u is None else u.name


def emails(s: Session) -> Any:
    return s.scalars(select(Address.email).order_by(Address.id)).all()


def user_tag_names(s: Session) -> Any:
    u = s.scalars(select(User).options(selectinload(User.tags)).where(User.id == 1)).one()
    return [t.name for t in u.tags]


def tag_names(s: Session) -> Any:
    return s.scalars(select(Tag.name).order_by(Tag.id)).all()


def check_write(
    env: Env,
    reads: list[Read],
    write: Write,
    *,
    unaffected: tuple[Read, ...] = (),
    before: list[Any] | None = None,
) -> list[Any]:
    """Warm *reads* (and *unaffected*), commit *write*, return the reads' new results.

    Asserts: each read was a hit before (equal to *before* if given); after the commit each
    read queries the database, its result equals an uncached read, and it is a hit again;
    *unaffected* reads (tables the write cannot change, FK cascades included) still hit.
    """
    was = [env.warm(r) for r in reads]
    if before is not None:
        assert was == before
    for r in unaffected:
        env.warm(r)
    with env.Session() as s:
        write(s)
        s.commit()
    after = []
    for r in reads:
        new = env.fresh_read(r)
        assert new == env.truth(r)
        assert env.hit(r) == new
        after.append(new)
    for r in unaffected:
        env.hit(r)
    assert after != was, "the write did not change what the reads return"
    return after


# -- ORM unit of work -----------------------------------------------------------------------------


def test_orm_add(env: Env) -> None:
    def write(s: Session) -> None:
        s.add(User(id=5, name="erin"))

    [names, objs] = check_write(env, [user_names, users_by_id], write, unaffected=(tag_names,))
    assert names[-1] == "erin"
    assert objs[-1] == (5, "erin")


def test_orm_modify(env: Env) -> None:
    def write(s: Session) -> None:
        u = s.get(User, 1)
        assert u is not None
        u.name = "alicia"

    [names, got] = check_write(env, [user_names, one_user], write, unaffected=(tag_names,))
    assert names[0] == "alicia"
    assert got == "alicia"


def test_orm_modify_object_loaded_from_cache(env: Env) -> None:
    def write(s: Session) -> None:
        u = env.cached(lambda: s.get(User, 1))
        u.name = "from-cache"

    [got] = check_write(env, [one_user], write)
    assert got == "from-cache"


def test_orm_delete(env: Env) -> None:
    def write(s: Session) -> None:
        s.delete(s.get(User, 4))

    [names] = check_write(env, [user_names], write, unaffected=(tag_names,))
    assert names == ["alice", "bob", "carol"]


def test_orm_delete_parent_removes_children(env: Env) -> None:
    def write(s: Session) -> None:
        s.delete(s.get(User, 3))  # passive_deletes: the database cascades to addresses

    [mails] = check_write(env, [emails], write)
    assert mails == ["a1@x", "a2@x"]


def test_orm_add_child_through_relationship(env: Env) -> None:
    def write(s: Session) -> None:
        bob = s.get(User, 2)
        bob.addresses.append(Address(id=8, email="b@x"))

    [mails] = check_write(env, [emails], write, unaffected=(user_names,))
    assert mails[-1] == "b@x"


# -- bulk / DML statements through the session -----------------------------------------------------


def test_bulk_update_statement(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(update(User).where(User.id == 2).values(name="bobby"))

    [names] = check_write(env, [user_names], write, unaffected=(tag_names,))
    assert names[1] == "bobby"


def test_bulk_update_by_primary_key(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(update(User), [{"id": 1, "name": "A"}, {"id": 3, "name": "C"}])

    [names] = check_write(env, [user_names], write)
    assert names == ["A", "bob", "C", "dave"]


def test_bulk_delete_statement(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(delete(User).where(User.name == "dave"))

    [names] = check_write(env, [user_names], write)
    assert names == ["alice", "bob", "carol"]


def test_bulk_insert_statement(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(insert(User), [{"id": 5, "name": "erin"}, {"id": 6, "name": "frank"}])

    [names] = check_write(env, [user_names], write)
    assert names[-2:] == ["erin", "frank"]


def test_insert_values_statement(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(insert(Tag).values(id=3, name="green"))

    [tags] = check_write(env, [tag_names], write, unaffected=(user_names,))
    assert tags == ["red", "blue", "green"]


def test_core_table_update(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(Address.__table__.update().where(Address.id == 3).values(email="cc@x"))

    [mails] = check_write(env, [emails], write, unaffected=(user_names,))
    assert mails[-1] == "cc@x"


def test_query_update(env: Env) -> None:
    def write(s: Session) -> None:
        n = s.query(User).filter(User.id == 3).update({User.name: "caroline"})
        assert n == 1

    [names] = check_write(env, [user_names], write)
    assert names[2] == "caroline"


def test_query_delete(env: Env) -> None:
    def write(s: Session) -> None:
        n = s.query(Address).filter(Address.user_id == 1).delete()
        assert n == 2

    [mails] = check_write(env, [emails], write, unaffected=(user_names,))
    assert mails == ["c@x"]


# -- raw SQL ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (f"UPDATE {P}users SET name = 'T' WHERE id = 2", ["alice", "T", "carol", "dave"]),
        (
            f"INSERT INTO {P}users (id, name) VALUES (7, 'ted')",
            ["alice", "bob", "carol", "dave", "ted"],
        ),
        (f"DELETE FROM {P}users WHERE id = 4", ["alice", "bob", "carol"]),
        (f"update {P}users set name = 'T' where id = 2", ["alice", "T", "carol", "dave"]),
        (f"/* why */ UPDATE {P}users SET name = 'T' WHERE id = 2", ["alice", "T", "carol", "dave"]),
    ],
    ids=["update", "insert", "delete", "lowercase", "comment"],
)
@pytest.mark.parametrize("via", ["session.execute", "session.connection"])
def test_text_dml(env: Env, sql: str, expected: list[str], via: str) -> None:
    def write(s: Session) -> None:
        if via == "session.execute":
            s.execute(text(sql))
        else:
            s.connection().execute(text(sql))

    # a leading comment hides the target from the parser: everything is invalidated then
    unaffected = (tag_names,) if not sql.startswith("/*") else ()
    [names] = check_write(env, [user_names], write, unaffected=unaffected)
    assert names == expected


def test_text_dml_with_bound_parameters(env: Env) -> None:
    def write(s: Session) -> None:
        s.execute(text(f"UPDATE {P}tags SET name = :n WHERE id = :i"), {"n": "crimson", "i": 1})

    [tags] = check_write(env, [tag_names], write, unaffected=(user_names,))
    assert tags == ["crimson", "blue"]


def test_exec_driver_sql(env: Env) -> None:
    def write(s: Session) -> None:
        s.connection().exec_driver_sql(f"UPDATE {P}tags SET name = 'x' WHERE id = 2")

    [tags] = check_write(env, [tag_names], write, unaffected=(emails,))
    assert tags == ["red", "x"]


def test_unparseable_raw_sql_invalidates_everything(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    # a literal that ends in a different place with or without backslash escapes: the
    # scanner cannot tell which reading the server uses, so the targets are unknown
    lit = r"'it\'s' <> ''" if env.db.name == "mariadb" else r"'x\' <> ''"
    sql = f"UPDATE {P}users SET name = 'hidden' WHERE id = 1 AND {lit}"

    def write(s: Session) -> None:
        s.execute(text(sql))

    env.warm(tag_names)
    env.warm(emails)
    with caplog.at_level(logging.DEBUG, logger="yokedcache_sa"):  # warned once per process
        [names] = check_write(env, [user_names], write)
    assert names[0] == "hidden"
    assert "cannot tell which tables" in caplog.text
    # tables the statement did not touch were invalidated too (nothing else is provable)
    assert env.fresh_read(tag_names) == ["red", "blue"]
    assert env.fresh_read(emails) == ["a1@x", "a2@x", "c@x"]


def test_written_table_of_unparseable_sql_in_session_bypasses(env: Env) -> None:
    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"-- x\nUPDATE {P}tags SET name = 'mine' WHERE id = 1"))
        # the whole cache is bypassed for the rest of this transaction
        assert env.queried(lambda: tag_names(s)) == ["mine", "blue"]
        assert env.queried(lambda: user_names(s))[0] == "alice"
        s.rollback()
    assert env.hit(tag_names) == ["red", "blue"]


# -- relationships ---------------------------------------------------------------------------------


def test_many_to_many_append(env: Env) -> None:
    def write(s: Session) -> None:
        bob = s.get(User, 2)
        bob.tags.append(s.get_one(Tag, 1))

    def bob_tags(s: Session) -> Any:
        u = s.scalars(select(User).options(selectinload(User.tags)).where(User.id == 2)).one()
        return [t.name for t in u.tags]

    def joined(s: Session) -> Any:
        return s.execute(
            select(User.name, Tag.name).join(User.tags).order_by(User.id, Tag.id)
        ).all()

    [_bob, rows] = check_write(env, [bob_tags, joined], write, unaffected=(user_names, tag_names))
    assert ("bob", "red") in rows


def test_many_to_many_remove(env: Env) -> None:
    def write(s: Session) -> None:
        alice = s.get(User, 1)
        alice.tags.remove(s.get_one(Tag, 1))

    def secondary(s: Session) -> Any:
        return s.execute(select(user_tags).order_by(user_tags.c.user_id, user_tags.c.tag_id)).all()

    [tags, rows] = check_write(
        env, [user_tag_names, secondary], write, unaffected=(user_names, tag_names)
    )
    assert tags == ["blue"]
    assert (1, 1) not in rows


def test_joined_inheritance_subclass_column_via_base_query(env: Env) -> None:
    def staff(s: Session) -> Any:
        return [
            (type(e).__name__, e.name, getattr(e, "budget", None))
            for e in s.scalars(select(Employee).order_by(Employee.id))
        ]

    def write(s: Session) -> None:
        m = s.get(Manager, 2)
        m.budget = 250  # UPDATE of the managers table only

    [rows] = check_write(env, [staff], write, unaffected=(user_names,))
    assert rows == [("Employee", "eve", None), ("Manager", "mallory", 250)]


def test_joined_inheritance_text_update_of_subclass_table(env: Env) -> None:
    def budgets(s: Session) -> Any:
        return [
            getattr(e, "budget", None) for e in s.scalars(select(Employee).order_by(Employee.id))
        ]

    def write(s: Session) -> None:
        s.execute(text(f"UPDATE {P}managers SET budget = 7 WHERE id = 2"))

    [rows] = check_write(env, [budgets], write)
    assert rows == [None, 7]


def test_joined_inheritance_add_subclass(env: Env) -> None:
    def names(s: Session) -> Any:
        return s.scalars(select(Employee.name).order_by(Employee.id)).all()

    def write(s: Session) -> None:
        s.add(Manager(id=3, name="oscar", budget=1))

    [rows] = check_write(env, [names], write)
    assert rows == ["eve", "mallory", "oscar"]


@pytest.mark.parametrize("how", ["text", "core"])
def test_fk_on_delete_cascade_invalidates_children(env: Env, how: str) -> None:
    """Deleting a user cascades (in the database) to addresses and user_tags: the cached
    reads of those tables must go, although the statement only names users."""

    def write(s: Session) -> None:
        if how == "text":
            s.execute(text(f"DELETE FROM {P}users WHERE id = 1"))
        else:
            s.execute(User.__table__.delete().where(User.id == 1))

    def secondary(s: Session) -> Any:
        return s.execute(select(user_tags).order_by(user_tags.c.user_id, user_tags.c.tag_id)).all()

    [mails, rows] = check_write(env, [emails, secondary], write, unaffected=(tag_names,))
    assert mails == ["c@x"]
    assert rows == [(3, 2)]


# -- writes the session does not see ---------------------------------------------------------------


def test_write_outside_the_session_needs_invalidate_tables(env: Env) -> None:
    env.warm(user_names)
    env.warm(tag_names)
    with env.engine.begin() as conn:  # not through a caching session
        conn.execute(text(f"UPDATE {P}users SET name = 'outside' WHERE id = 1"))
    assert env.hit(user_names)[0] == "alice"  # the cache cannot know
    env.cache.invalidate_tables_sync([f"{P}users"])
    assert env.fresh_read(user_names)[0] == "outside"
    assert env.hit(user_names)[0] == "outside"
    assert env.hit(tag_names) == ["red", "blue"]


def test_plain_session_write_needs_invalidate_tables(env: Env) -> None:
    env.warm(one_user)
    with env.Plain() as s:
        s.get(User, 1).name = "plain"
        s.commit()
    assert env.hit(one_user) == "alice"
    env.cache.invalidate_tables_sync([f"{P}users"])
    assert env.fresh_read(one_user) == "plain"


# -- cached "not found" ----------------------------------------------------------------------------


def test_cached_not_found_first_is_invalidated_by_insert(env: Env) -> None:
    """cacheops #478: a cached empty result must not hide a row inserted later."""

    def zed(s: Session) -> Any:
        u = s.scalars(select(User).where(User.name == "zed")).first()
        return None if u is None else (u.id, u.name)

    def write(s: Session) -> None:
        s.add(User(id=26, name="zed"))

    [found] = check_write(env, [zed], write, before=[None])
    assert found == (26, "zed")


def test_cached_not_found_get_is_invalidated_by_text_insert(env: Env) -> None:
    def get9(s: Session) -> Any:
        u = s.get(User, 9)
        return None if u is None else u.name

    def write(s: Session) -> None:
        s.execute(text(f"INSERT INTO {P}users (id, name) VALUES (9, 'nine')"))

    [found] = check_write(env, [get9], write, before=[None])
    assert found == "nine"


def test_cached_count_and_empty_list(env: Env) -> None:
    def count(s: Session) -> Any:
        return s.query(Address).filter(Address.user_id == 2).count()

    def lst(s: Session) -> Any:
        return s.scalars(select(Address.email).where(Address.user_id == 2)).all()

    def write(s: Session) -> None:
        s.execute(insert(Address).values(id=9, user_id=2, email="b@x"))

    assert check_write(env, [count, lst], write, before=[0, []]) == [1, ["b@x"]]


# -- several writes in one transaction, and writes after reads in the same session -----------------


def test_several_tables_in_one_commit(env: Env) -> None:
    def write(s: Session) -> None:
        s.get(User, 1).name = "x"
        s.get(Tag, 2).name = "y"
        s.execute(update(Address).where(Address.id == 1).values(email="z"))

    [names, tags, mails] = check_write(env, [user_names, tag_names, emails], write)
    assert (names[0], tags[1], mails[0]) == ("x", "y", "z")


def test_read_then_write_then_read_in_one_session(env: Env) -> None:
    env.warm(user_names)
    with env.Session() as s:
        assert env.cached(lambda: user_names(s))[0] == "alice"
        s.execute(update(User).where(User.id == 1).values(name="own"))
        assert env.queried(lambda: user_names(s))[0] == "own"
        s.commit()
        # after the commit the session starts over: a miss that stores, then a hit
        assert env.queried(lambda: user_names(s))[0] == "own"
        assert env.cached(lambda: user_names(s))[0] == "own"
    assert env.hit(user_names)[0] == "own"
