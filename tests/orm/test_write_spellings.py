"""Every write is caught, however the SQL spells it; only provable reads are cached.

Each scenario proves the reads are cached first (0 statements), then writes: inside the
writing transaction the changed reads go to the database and see the write, after the
commit they do so in other sessions too, and reads of tables the write cannot change are
still served from the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text, update
from sqlalchemy.orm import Session

from tests.orm.ormkit import Address, Employee, Env, P, Tag, User
from yokedcache_sa.orm import CachingSession, FromCache, declare_function, routines

U, A, T = User.__tablename__, Address.__tablename__, Tag.__tablename__
PG = pytest.mark.parametrize("db", ["postgresql"], indirect=True)


def user_names(s: Session) -> Any:
    return s.scalars(select(User.name).order_by(User.id)).all()


def emails(s: Session) -> Any:
    return s.scalars(select(Address.email).order_by(Address.id)).all()


def tag_names(s: Session) -> Any:
    return s.scalars(select(Tag.name).order_by(Tag.id)).all()


def employee_names(s: Session) -> Any:
    return s.scalars(select(Employee.name).order_by(Employee.id)).all()


def check(
    env: Env,
    changed: Sequence[Callable[[Session], Any]],
    write: Callable[[Session], object],
    unaffected: tuple[Callable[[Session], Any], ...] = (),
) -> None:
    was = [env.warm(r) for r in changed]
    for r in unaffected:
        env.warm(r)
    with env.Session() as s:
        assert [env.cached(lambda r=r: r(s)) for r in changed] == was  # type: ignore[misc]
        write(s)
        inside = [env.queried(lambda r=r: r(s)) for r in changed]  # type: ignore[misc]
        assert inside != was, "the write did not change what the reads return"
        for r in unaffected:
            env.cached(lambda r=r: r(s))  # type: ignore[misc]
        s.commit()
    for r, mine in zip(changed, inside, strict=True):
        assert env.fresh_read(r) == env.truth(r) == mine
        assert env.hit(r) == mine
    for r in unaffected:
        env.hit(r)


# -- text() spellings ------------------------------------------------------------------------

SCHEMA = {"postgresql": "public", "mariadb": "test", "sqlite": "main"}
SET1 = "SET name = 'zed' WHERE id = 1"
SPELLINGS: dict[str, tuple[tuple[str, ...], str, str]] = {
    # name: (databases, SQL, which reads change: u = users, a = addresses)
    "schema_qualified": (("postgresql", "mariadb", "sqlite"), f"UPDATE {{s}}.{U} {SET1}", "u"),
    "upper_case": (("postgresql", "sqlite"), f"UPDATE {U.upper()} {SET1}", "u"),
    "double_quoted_qualified": (("postgresql", "sqlite"), f'UPDATE "{{s}}"."{U}" {SET1}', "u"),
    "backquoted_qualified": (("mariadb", "sqlite"), f"UPDATE `{{s}}`.`{U}` {SET1}", "u"),
    "on_conflict_qualified": (
        ("postgresql", "sqlite"),
        f"INSERT INTO {{s}}.{U} (id, name, age) VALUES (1, 'zed', 30) "
        "ON CONFLICT (id) DO UPDATE SET name = excluded.name",
        "u",
    ),
    "on_duplicate_key_qualified": (
        ("mariadb",),
        f"INSERT INTO {{s}}.{U} (id, name, age) VALUES (1, 'zed', 30) "
        "ON DUPLICATE KEY UPDATE name = VALUES(name)",
        "u",
    ),
    "update_join": (
        ("mariadb",),
        f"UPDATE {U} JOIN {A} ON {A}.user_id = {U}.id "
        f"SET {U}.name = 'zed', {A}.email = 'z@x' WHERE {U}.id = 1",
        "ua",
    ),
    "delete_join": (
        ("mariadb",),
        f"DELETE {A} FROM {A} JOIN {U} ON {A}.user_id = {U}.id WHERE {U}.name = 'alice'",
        "a",
    ),
    "delete_using_join": (
        ("mariadb",),
        f"DELETE FROM {A} USING {A} JOIN {U} ON {A}.user_id = {U}.id WHERE {U}.name = 'alice'",
        "a",
    ),
    "delete_using": (
        ("postgresql",),
        f"DELETE FROM {{s}}.{A} USING {U} WHERE {A}.user_id = {U}.id AND {U}.name = 'alice'",
        "a",
    ),
    "with_then_update": (
        ("postgresql", "sqlite"),
        f"WITH x AS (SELECT 1 AS one) UPDATE {U} {SET1}",
        "u",
    ),
    "update_inside_with": (
        ("postgresql",),
        f"WITH x AS (UPDATE {U} {SET1} RETURNING id) SELECT id FROM x",
        "u",
    ),
    "merge": (
        ("postgresql",),
        f"MERGE INTO {U} USING (SELECT 1 AS id) AS src ON {U}.id = src.id "
        "WHEN MATCHED THEN UPDATE SET name = 'zed'",
        "u",
    ),
}


@pytest.mark.parametrize(
    ("db", "case"),
    [(db, case) for case in sorted(SPELLINGS) for db in SPELLINGS[case][0]],
    indirect=["db"],
)
def test_text_write_spelling(env: Env, case: str) -> None:
    _, sql, what = SPELLINGS[case]
    sql = sql.format(s=SCHEMA[env.db.name])
    changed = [r for k, r in (("u", user_names), ("a", emails)) if k in what]
    check(env, changed, lambda s: s.execute(text(sql)), unaffected=(tag_names,))


def test_exec_driver_sql_schema_qualified(env: Env) -> None:
    sql = f"UPDATE {SCHEMA[env.db.name]}.{U} {SET1}"

    def write(s: Session) -> None:
        s.connection().exec_driver_sql(sql)

    check(env, [user_names], write, unaffected=(tag_names,))


# -- DML inside CTEs ---------------------------------------------------------------------


def ages(s: Session) -> Any:
    return s.scalars(select(User.age).order_by(User.id)).all()


@PG
def test_update_in_a_cte_runs_every_time_and_invalidates(env: Env) -> None:
    users = User.__table__
    stmt = select(
        update(users).where(users.c.id == 1).values(age=users.c.age + 1).returning(users.c.id).cte()
    )
    env.warm(ages)
    with env.Session() as s:
        assert env.cached(lambda: ages(s))[0] == 30
        for _ in range(3):
            env.queried(lambda: s.execute(stmt).all())
        assert env.queried(lambda: ages(s))[0] == 33
        s.commit()
    assert env.fresh_read(ages)[0] == 33
    assert env.truth(ages)[0] == 33


@PG
def test_nested_and_insert_from_select_ctes_are_writes(env: Env) -> None:
    users, tags = User.__table__, Tag.__table__
    inner = update(users).where(users.c.id == 1).values(name="zed").returning(users.c.id).cte()
    nested = select(select(inner).cte())
    bo = update(users).where(users.c.id == 2).values(name="bo").returning(users.c.id).cte()
    ins = insert(tags).from_select(
        ["id", "name"], select((bo.c.id + 10).label("id"), func.lower("GREEN"))
    )

    def write(s: Session) -> None:
        s.execute(nested).all()
        s.execute(ins)

    check(env, [user_names, tag_names], write, unaffected=(employee_names,))


# -- functions ---------------------------------------------------------------------------


def names_and_now(s: Session) -> Any:
    return s.execute(select(User.name, func.current_timestamp()).order_by(User.id)).all()


def names_and_random(s: Session) -> Any:
    return s.execute(select(User.name, func.random()).order_by(User.id)).all()


@pytest.mark.parametrize("read", [names_and_now, names_and_random])
def test_clock_and_random_functions_are_never_cached(env: Env, read: Any) -> None:
    for _ in range(2):
        with env.Session() as s:
            env.queried(lambda: read(s))


@pytest.fixture
def functions(env: Env) -> Iterator[dict[str, str]]:
    """Per-database user functions: ``bump`` writes the users table, ``twice`` does not."""
    bump, twice, pure = P + "bump", P + "twice", P + "pure"
    created: list[str] = []
    with env.engine.begin() as c:
        if env.db.name == "postgresql":
            c.exec_driver_sql(
                f"CREATE FUNCTION {bump}() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
                f"UPDATE {U} SET name = 'bumped' WHERE id = 1; RETURN 1; END $$"
            )
            c.exec_driver_sql(
                f"CREATE FUNCTION {twice}(x int) RETURNS int LANGUAGE sql AS 'SELECT x * 2'"
            )
            c.exec_driver_sql(
                f"CREATE FUNCTION {pure}(x int) RETURNS int LANGUAGE sql IMMUTABLE "
                "AS 'SELECT x * 3'"
            )
            created = [f"{bump}()", f"{twice}(int)", f"{pure}(int)"]
        elif env.db.name == "mariadb":
            c.exec_driver_sql(
                f"CREATE FUNCTION {bump}() RETURNS int MODIFIES SQL DATA BEGIN "
                f"UPDATE {U} SET name = 'bumped' WHERE id = 1; RETURN 1; END"
            )
            c.exec_driver_sql(
                f"CREATE FUNCTION {twice}(x int) RETURNS int DETERMINISTIC RETURN x * 2"
            )
            created = [bump, twice]
    try:
        yield {"bump": bump, "twice": twice, "pure": pure}
    finally:
        routines._declared.pop(twice.lower(), None)
        with env.engine.begin() as c:
            for f in created:
                c.exec_driver_sql(f"DROP FUNCTION {f}")


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("how", ["select", "text", "fragment"])
def test_a_function_that_writes_is_a_write(env: Env, functions: dict[str, str], how: str) -> None:
    bump = functions["bump"]
    stmt: Any = {
        "select": select(getattr(func, bump)()),
        "text": text(f"SELECT {bump}()"),
        # a text() fragment whose tables are named: cacheable, unless it calls a writer
        "fragment": select(text(f"{bump}()")).options(FromCache(tables=[U])),
    }[how]

    def write(s: Session) -> None:
        for _ in range(2):  # never served from the cache
            assert env.queried(lambda: s.execute(stmt).scalar()) == 1

    check(env, [user_names], write)


def doubled(s: Session) -> Any:
    return s.execute(select(getattr(func, P + "twice")(User.id)).order_by(User.id)).all()


def tripled(s: Session) -> Any:
    return s.execute(select(getattr(func, P + "pure")(User.id)).order_by(User.id)).all()


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
def test_unknown_functions_are_cached_only_once_declared_read_only(
    env: Env, functions: dict[str, str]
) -> None:
    for _ in range(2):
        with env.Session() as s:
            assert env.queried(lambda: doubled(s)) == [(2,), (4,), (6,), (8,)]
    declare_function(functions["twice"], readonly=True)
    env.warm(doubled)
    if env.db.name == "postgresql":
        # pg_proc says IMMUTABLE (learnt on the first run): cached without a declaration
        with env.Session() as s:
            env.queried(lambda: tripled(s))
        assert env.warm(tripled) == [(3,), (6,), (9,), (12,)]


# -- PostgreSQL: what the database itself counted ------------------------------------------

side = MetaData()
notes = Table(
    P + "notes", side, Column("id", Integer, primary_key=True), Column("user_id", Integer)
)


def note_ids(s: Session) -> Any:
    return s.scalars(select(notes.c.id).order_by(notes.c.id)).all()


@pytest.fixture
def pg_side_effects(env: Env) -> Iterator[None]:
    """A trigger (addresses -> tags) and an FK cascade (users -> notes) the metadata lacks."""
    fn, trg = P + "touch_tags", P + "addr_trg"
    with env.engine.begin() as c:
        c.exec_driver_sql(
            f"CREATE TABLE {notes.name} (id int PRIMARY KEY, "
            f"user_id int REFERENCES {U}(id) ON DELETE CASCADE)"
        )
        c.exec_driver_sql(f"INSERT INTO {notes.name} VALUES (1, 1), (2, 3)")
        c.exec_driver_sql(
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"UPDATE {T} SET name = name || '!' WHERE id = 1; RETURN NEW; END $$"
        )
        c.exec_driver_sql(
            f"CREATE TRIGGER {trg} AFTER UPDATE ON {A} FOR EACH ROW EXECUTE FUNCTION {fn}()"
        )
    try:
        yield
    finally:
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE {notes.name}")
            c.exec_driver_sql(f"DROP TRIGGER {trg} ON {A}")
            c.exec_driver_sql(f"DROP FUNCTION {fn}()")


@PG
def test_trigger_writes_are_invalidated(env: Env, pg_side_effects: None) -> None:
    def write(s: Session) -> None:
        s.get_one(Address, 1).email = "new@x"

    check(env, [emails, tag_names], write, unaffected=(user_names,))


@PG
def test_database_fk_cascade_missing_from_metadata(env: Env, pg_side_effects: None) -> None:
    def write(s: Session) -> None:
        s.execute(text(f"DELETE FROM {A} WHERE user_id = 1"))
        s.execute(text(f"DELETE FROM {P}user_tags WHERE user_id = 1"))
        s.execute(text(f"DELETE FROM {U} WHERE id = 1"))

    check(env, [note_ids, user_names], write, unaffected=(tag_names,))


@PG
def test_autocommit_write_to_a_table_with_a_trigger(env: Env, pg_side_effects: None) -> None:
    env.warm(tag_names)
    env.warm(employee_names)
    auto = env.engine.execution_options(isolation_level="AUTOCOMMIT")
    with env.Session(bind=auto) as s:
        s.execute(text(f"UPDATE {A} SET email = 'auto@x' WHERE id = 1"))
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]
    assert env.fresh_read(employee_names)  # unknown targets: everything was invalidated


@PG
def test_cached_computation_reading_a_trigger_write_is_not_stored(
    env: Env, pg_side_effects: None
) -> None:
    """A write whose trigger changes another table, then, in the same transaction, an
    ``@cached`` computation reading that table through the session's connection: it saw
    uncommitted rows, so it is not stored (the trigger's table counts as written before the
    computation's statement runs)."""
    from yokedcache_sa import cached

    calls: list[int] = []

    @cached(cache=env.cache)
    def tags_now(s: Session) -> list[str]:
        calls.append(1)
        return list(s.connection().scalars(select(Tag.name).order_by(Tag.id)))

    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'coll@x' WHERE id = 1"))
        assert tags_now(s) == ["red!", "blue"]
        s.rollback()
    with env.Session() as s:
        assert tags_now(s) == ["red", "blue"] == env.truth(tag_names)
    assert len(calls) == 2, "a result of uncommitted trigger writes was stored"


@PG
def test_connection_level_commit_counts_trigger_writes(env: Env, pg_side_effects: None) -> None:
    """A caching session bound to a connection whose owner commits the connection itself
    (not the session): the trigger's table is invalidated too."""
    env.warm(tag_names)
    with env.engine.connect() as conn:
        s = CachingSession(bind=conn, cache=env.cache)
        s.execute(text(f"UPDATE {A} SET email = 'conn@x' WHERE id = 1"))
        conn.commit()
        s.close()
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]


@PG
def test_connection_level_commit_whose_trigger_count_fails_invalidates_everything(
    env: Env, pg_side_effects: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If counting what the triggers wrote fails at a connection-level COMMIT, the commit
    still goes through and everything is invalidated (what the triggers wrote is unknown)."""
    from yokedcache_sa.orm import pgwrites

    env.warm(tag_names)
    env.warm(user_names)
    with env.engine.connect() as conn:
        s = CachingSession(bind=conn, cache=env.cache)
        s.execute(text(f"UPDATE {A} SET email = 'fail@x' WHERE id = 1"))
        real = pgwrites._pg_counts

        def failing(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("counting failed")

        monkeypatch.setattr(pgwrites, "_pg_counts", failing)
        conn.commit()
        monkeypatch.setattr(pgwrites, "_pg_counts", real)
        s.close()
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]
    assert env.fresh_read(user_names) == env.truth(user_names)  # unrelated: invalidated too


@PG
def test_explain_after_a_trigger_write_asks_nothing_and_says_so(
    env: Env, pg_side_effects: None
) -> None:
    """explain() runs no SQL: after a write to a table with triggers it says the read will
    ask what the write changed (and leaves that to the read, which then bypasses)."""
    from yokedcache_sa import explain
    from yokedcache_sa.orm.pgwrites import RECHECK_KEY

    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'explain@x' WHERE id = 1"))
        conn = s.connection()
        assert RECHECK_KEY in conn.__dict__
        e = explain(select(Tag.name).order_by(Tag.id), session=s)
        assert any("triggers or cascades" in n for n in e.notes), e.notes
        assert RECHECK_KEY in conn.__dict__  # nothing was asked
        assert tag_names(s) == ["red!", "blue"]  # the read asked, and bypassed
        assert RECHECK_KEY not in conn.__dict__
        s.rollback()


@PG
def test_trigger_write_before_a_savepoint_rolled_back_stays_written(
    env: Env, pg_side_effects: None
) -> None:
    """A trigger write, then a savepoint rolled back: what the trigger changed was written
    before the savepoint, so the transaction's reads of it still bypass the cache."""
    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'sp@x' WHERE id = 1"))  # tags via trigger
        sp = s.begin_nested()
        s.add(Employee(id=900, name="in savepoint", type="employee"))
        s.flush()  # the savepoint begins with this flush (to a table without side effects)
        sp.rollback()
        assert tag_names(s) == ["red!", "blue"]  # the transaction's own state, not the cache
        s.rollback()
    assert env.hit(tag_names) == env.truth(tag_names) == ["red", "blue"]


@PG
def test_async_session_sees_trigger_writes(env: Env, pg_side_effects: None) -> None:
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    env.warm(tag_names)
    url = env.engine.url.set(drivername="postgresql+asyncpg")

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            S = async_sessionmaker(engine, sync_session_class=CachingSession, cache=env.cache)
            async with S() as s:
                await s.execute(text(f"UPDATE {A} SET email = 'async@x' WHERE id = 1"))
                got = (await s.scalars(select(Tag.name).order_by(Tag.id))).all()
                assert got == ["red!", "blue"]
                await s.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]
