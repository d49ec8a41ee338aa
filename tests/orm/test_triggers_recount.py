"""PostgreSQL trigger writes counted late (the deferred recount): adversarial scenarios.

Each test compares a caching session with what a plain session sees, with the statement
counter proving the reads were cached before the write.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import String, TypeDecorator, bindparam, select, text
from sqlalchemy.orm import Session

from tests.orm.ormkit import Address, Env, P, Tag

A, T = Address.__tablename__, Tag.__tablename__
PG = pytest.mark.parametrize("db", ["postgresql"], indirect=True)


def tag_names(s: Session) -> Any:
    return s.scalars(select(Tag.name).order_by(Tag.id)).all()


def emails(s: Session) -> Any:
    return s.scalars(select(Address.email).order_by(Address.id)).all()


def _trigger(env: Env, body: str, when: str = "AFTER UPDATE", each: str = "ROW") -> Iterator[None]:
    fn, trg = P + "rc_fn", P + "rc_trg"
    with env.engine.begin() as c:
        c.exec_driver_sql(
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"{body}; RETURN NULL; END $$"
        )
        c.exec_driver_sql(
            f"CREATE TRIGGER {trg} {when} ON {A} FOR EACH {each} EXECUTE FUNCTION {fn}()"
        )
    try:
        yield
    finally:
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP TRIGGER {trg} ON {A}")
            c.exec_driver_sql(f"DROP FUNCTION {fn}()")


@pytest.fixture
def bang(env: Env) -> Iterator[None]:
    """addresses UPDATE -> tags UPDATE (a row trigger the metadata does not show)."""
    yield from _trigger(env, f"UPDATE {T} SET name = name || '!' WHERE id = 1")


class Refuses(TypeDecorator[str]):
    """A bind type that refuses some values before anything is sent (client-side)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value == "bad":
            raise ValueError("refused")
        return value


@PG
def test_client_side_error_after_a_trigger_write_does_not_lose_it(env: Env, bang: None) -> None:
    """A statement that fails before reaching the database (its bind processor raises) does
    not abort the PostgreSQL transaction: the commit goes through, trigger writes included,
    and what the trigger changed must be invalidated."""
    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'cs@x' WHERE id = 1"))
        with pytest.raises(Exception, match="refused"):
            s.connection().execute(select(bindparam("v", "bad", type_=Refuses())))
        s.commit()
    assert env.truth(tag_names) == ["red!", "blue"]
    assert env.fresh_read(tag_names) == ["red!", "blue"]


@PG
def test_cached_computation_after_a_client_side_error_reads_uncommitted_trigger_rows(
    env: Env, bang: None
) -> None:
    """After a trigger write and a statement refused client-side (the transaction goes on),
    an ``@cached`` computation reading the trigger's table sees uncommitted rows: it must not
    be stored for others."""
    from yokedcache_sa import cached

    calls: list[int] = []

    @cached(cache=env.cache)
    def tags_now(s: Session) -> list[str]:
        calls.append(1)
        return list(s.connection().scalars(select(Tag.name).order_by(Tag.id)))

    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'cs2@x' WHERE id = 1"))
        with pytest.raises(Exception, match="refused"):
            s.connection().execute(select(bindparam("v", "bad", type_=Refuses())))
        assert tags_now(s) == ["red!", "blue"]
        s.rollback()
    with env.Session() as s:
        assert tags_now(s) == ["red", "blue"] == env.truth(tag_names)
    assert len(calls) == 2, "a result of uncommitted trigger writes was stored"


@PG
def test_trigger_write_after_a_parameter_the_driver_cannot_adapt(env: Env, bang: None) -> None:
    """psycopg refuses a parameter it cannot adapt before sending anything: the transaction
    goes on, and a trigger write after that commits with it."""
    env.warm(tag_names)
    with env.Session() as s:
        with pytest.raises(Exception, match="adapt"):
            s.connection().execute(text("SELECT :v"), {"v": object()})
        s.execute(text(f"UPDATE {A} SET email = 'ad@x' WHERE id = 1"))
        s.commit()
    assert env.truth(tag_names) == ["red!", "blue"]
    assert env.fresh_read(tag_names) == ["red!", "blue"]


@PG
def test_a_failed_statement_still_stops_serving_until_rollback(env: Env, bang: None) -> None:
    """A statement PostgreSQL refused aborts the transaction: reads then raise as in a plain
    session, not served from the cache."""
    from sqlalchemy.exc import DBAPIError

    env.warm(tag_names)
    for factory in (env.Plain, env.Session):
        with factory() as s:
            with pytest.raises(DBAPIError):
                s.connection().execute(text("SELECT 1/0"))
            with pytest.raises(DBAPIError, match="aborted"):
                tag_names(s)
            s.rollback()
            assert tag_names(s) == ["red", "blue"]


@pytest.fixture
def truncating(env: Env) -> Iterator[None]:
    """addresses UPDATE -> TRUNCATE tags (a statement-level trigger)."""
    yield from _trigger(env, f"TRUNCATE {T} CASCADE", each="STATEMENT")


@PG
def test_trigger_that_truncates_a_table(env: Env, truncating: None) -> None:
    """TRUNCATE zeroes a table's transaction counters: inside a trigger the SQL text does
    not name it, so its counters are all that tell."""
    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'tr@x' WHERE id = 1"))
        assert env.queried(lambda: tag_names(s)) == []
        s.commit()
    assert env.truth(tag_names) == []
    assert env.fresh_read(tag_names) == []


@pytest.fixture
def tag_view(env: Env) -> Iterator[str]:
    """An automatically updatable view of tags (no trigger, no rule of its own)."""
    v = P + "rc_tagview"
    with env.engine.begin() as c:
        c.exec_driver_sql(f"CREATE VIEW {v} AS SELECT id, name FROM {T}")
    try:
        yield v
    finally:
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP VIEW {v}")


@pytest.mark.parametrize("db", ["postgresql", "mariadb"], indirect=True)
@pytest.mark.parametrize("how", ["session", "connection"])
def test_write_through_an_updatable_view(env: Env, tag_view: str, how: str) -> None:
    """UPDATE of an automatically updatable view writes its base table."""
    env.warm(tag_names)
    with env.Session() as s:
        sql = text(f"UPDATE {tag_view} SET name = 'viewed' WHERE id = 1")
        if how == "session":
            s.execute(sql)
        else:
            s.connection().execute(sql)
        assert env.queried(lambda: tag_names(s)) == ["viewed", "blue"]
        s.commit()
    assert env.truth(tag_names) == ["viewed", "blue"]
    assert env.fresh_read(tag_names) == ["viewed", "blue"]


@PG
def test_write_through_a_view_whose_base_table_has_a_trigger(env: Env, bang: None) -> None:
    v = P + "rc_addrview"
    with env.engine.begin() as c:
        c.exec_driver_sql(f"CREATE VIEW {v} AS SELECT id, email FROM {A}")
    try:
        env.warm(tag_names)
        with env.Session() as s:
            s.execute(text(f"UPDATE {v} SET email = 'v@x' WHERE id = 1"))
            assert env.queried(lambda: tag_names(s)) == ["red!", "blue"]
            s.commit()
        assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]
    finally:
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP VIEW {v}")


def _joined_update(env: Env, conn: Any, email: str, mode: str = "create_savepoint") -> None:
    """A caching session joined to *conn*'s external transaction writes and commits (the
    connection's transaction goes on; its owner ends it)."""
    from sqlalchemy import update

    from yokedcache_sa.orm import CachingSession

    s = CachingSession(bind=conn, cache=env.cache, join_transaction_mode=mode)
    s.execute(update(Address).where(Address.id == 1).values(email=email))
    s.commit()
    s.close()


@pytest.mark.parametrize(
    "mode",
    [
        "control_fully",  # session.commit() commits the connection's transaction
        "conditional_savepoint",
        "create_savepoint",
        "rollback_only",
    ],
)
@PG
@pytest.mark.parametrize("trigger", [True, False])
def test_session_joined_to_an_external_transaction_committed_later(
    env: Env, bang: None, mode: str, trigger: bool
) -> None:
    """The "join a session into an external transaction" recipe: session.commit() does not
    commit the connection's transaction; its owner commits it later. What another session
    caches in between is of the old rows, and must not outlive that COMMIT: the session's
    marks stay held until the connection's transaction ends."""
    from yokedcache_sa.orm import watch_engine

    watch_engine(env.engine)
    read = tag_names if trigger else emails
    before = env.warm(read)
    with env.engine.connect() as conn:
        trans = conn.begin()
        _joined_update(env, conn, "ext@x", mode)
        assert (env.truth(read) == before) is (mode != "control_fully")  # committed yet?
        with env.Session() as other:
            read(other)  # may store the old rows: they are still the committed ones
        if trans.is_active:
            trans.commit()
        after = env.truth(read)
        assert after != before
        with env.Session() as s2:
            assert read(s2) == after
        conn.execute(text("SELECT 1"))  # the connection's next transaction: marks released
    with env.Session() as s3:
        assert read(s3) == after  # stored again once the marks are released
    assert env.hit(read) == after


@PG
def test_marks_held_for_an_external_transaction_end_when_its_connection_is_closed(
    env: Env,
) -> None:
    """The owner commits the external transaction and closes the connection, and nothing
    begins on that pooled connection again: the held marks end as the pool takes it back,
    not at their lease (until then every read of the table is a miss that stores nothing).
    The reads after it go through another engine, which never touches that connection."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    from tests.sqlcount import SQLCounter
    from yokedcache_sa.orm import CachingSession, watch_engine

    watch_engine(env.engine)
    env.warm(emails)
    with env.engine.connect() as conn:
        trans = conn.begin()
        _joined_update(env, conn, "closed@x")
        trans.commit()
    other = create_engine(env.engine.url)
    try:
        watch_engine(other)
        sql = SQLCounter(other)
        with Session(other) as plain_session:
            after = emails(plain_session)
        assert "closed@x" in after
        OtherSession = sessionmaker(other, class_=CachingSession, cache=env.cache)
        for expected_statements in (1, 0):  # a miss that stores (no mark left), then a hit
            before = sql.n
            with OtherSession() as s2:
                assert emails(s2) == after
            assert sql.n - before == expected_statements, sql.statements[before:]
    finally:
        other.dispose()


@PG
def test_second_session_joined_to_the_same_external_transaction_stores_nothing(
    env: Env, bang: None
) -> None:
    """A first joined session commits (the connection's transaction goes on); a second one
    joined to it reads the trigger's uncommitted rows: they must not be stored, since the
    owner rolls the transaction back."""

    from yokedcache_sa.orm import CachingSession, watch_engine

    watch_engine(env.engine)
    before = env.warm(tag_names)
    with env.engine.connect() as conn:
        trans = conn.begin()
        _joined_update(env, conn, "ext2@x")
        s2 = CachingSession(bind=conn, cache=env.cache, join_transaction_mode="create_savepoint")
        assert env.queried(lambda: tag_names(s2)) == ["red!", "blue"]
        s2.close()
        trans.rollback()
    assert env.truth(tag_names) == before
    with env.Session() as s3:
        assert tag_names(s3) == before
    assert env.hit(tag_names) == before


@PG
def test_asyncpg_trigger_write_after_a_parameter_the_driver_refuses(env: Env, bang: None) -> None:
    """asyncpg encodes parameters client-side: a refused one leaves the transaction going
    on, and a trigger write after it commits with it."""
    import asyncio

    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from yokedcache_sa.orm import CachingSession

    env.warm(tag_names)
    url = env.engine.url.set(drivername="postgresql+asyncpg")

    async def main() -> None:
        engine = create_async_engine(url)
        try:
            S = async_sessionmaker(engine, sync_session_class=CachingSession, cache=env.cache)
            async with S() as s:
                conn = await s.connection()
                with pytest.raises(Exception, match="invalid input"):
                    await conn.execute(text("SELECT CAST(:v AS integer)"), {"v": "x"})
                await s.execute(text(f"UPDATE {A} SET email = 'apg@x' WHERE id = 1"))
                await s.commit()
        finally:
            await engine.dispose()

    asyncio.run(main())
    assert env.truth(tag_names) == ["red!", "blue"]
    assert env.fresh_read(tag_names) == ["red!", "blue"]


@pytest.fixture
def other_schema(env: Env) -> Iterator[Any]:
    """addresses UPDATE -> INSERT into a table of another schema (mapped with schema=)."""
    from sqlalchemy import Column, Integer, MetaData, Table

    schema = P + "rc_s2"
    with env.engine.begin() as c:
        c.exec_driver_sql(f"CREATE SCHEMA {schema}")
        c.exec_driver_sql(f"CREATE TABLE {schema}.audit (id serial PRIMARY KEY, n int)")
    audit = Table(
        "audit",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer),
        schema=schema,
    )
    gen = _trigger(env, f"INSERT INTO {schema}.audit (n) VALUES (NEW.id)")
    next(gen)
    try:
        yield audit
    finally:
        next(gen, None)
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@PG
def test_trigger_writes_a_table_of_another_schema(env: Env, other_schema: Any) -> None:
    def audit_ns(s: Session) -> Any:
        return s.scalars(select(other_schema.c.n).order_by(other_schema.c.id)).all()

    env.warm(audit_ns)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'sch@x' WHERE id = 1"))
        assert env.queried(lambda: audit_ns(s)) == [1]
        s.commit()
    assert env.fresh_read(audit_ns) == env.truth(audit_ns) == [1]


def tag_query(s: Session) -> Any:
    return [n for (n,) in s.query(Tag.name).order_by(Tag.id).all()]


def tag_get(s: Session) -> Any:
    t = s.get(Tag, 1)
    return t.name if t is not None else None


@PG
@pytest.mark.parametrize("read", [tag_names, tag_query, tag_get], ids=["select", "query", "get"])
@pytest.mark.parametrize("how", ["text", "orm", "core", "connection"])
def test_trigger_write_then_read_by_every_api(env: Env, bang: None, read: Any, how: str) -> None:
    """Every read spelling after a trigger write, in the transaction and after it."""
    from sqlalchemy import update

    was = env.warm(read)
    with env.Session() as s:
        if how == "text":
            s.execute(text(f"UPDATE {A} SET email = 'api@x' WHERE id = 1"))
        elif how == "orm":
            s.get_one(Address, 1).email = "api@x"
        elif how == "core":
            s.execute(update(Address).where(Address.id == 1).values(email="api@x"))
        else:
            s.connection().execute(text(f"UPDATE {A} SET email = 'api@x' WHERE id = 1"))
        inside = env.queried(lambda: read(s))
        assert inside != was
        s.commit()
    assert env.fresh_read(read) == env.truth(read) == inside


@PG
def test_trigger_write_in_a_released_savepoint(env: Env, bang: None) -> None:
    env.warm(tag_names)
    with env.Session() as s:
        with s.begin_nested():
            s.execute(text(f"UPDATE {A} SET email = 'rel@x' WHERE id = 1"))
        assert env.queried(lambda: tag_names(s)) == ["red!", "blue"]
        s.commit()
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red!", "blue"]


@PG
def test_trigger_write_then_integrity_error_then_rollback(env: Env, bang: None) -> None:
    from sqlalchemy.exc import IntegrityError

    was = env.warm(tag_names)
    with env.Session() as s:
        s.get_one(Address, 1).email = "ie@x"
        s.flush()
        s.add(Tag(id=1, name="dup"))
        with pytest.raises(IntegrityError):
            s.flush()
        s.rollback()
        assert tag_names(s) == was == env.truth(tag_names)
    assert env.hit(tag_names) == was


@PG
def test_trigger_write_with_expire_on_commit_off_and_two_sessions(env: Env, bang: None) -> None:
    """A second session on the engine reads while the first has an uncommitted trigger
    write, and again after its commit."""
    was = env.warm(tag_names)
    S = env.factory()
    with S(expire_on_commit=False) as a, S() as b:
        a.execute(text(f"UPDATE {A} SET email = 'two@x' WHERE id = 1"))
        assert env.queried(lambda: tag_names(a)) == ["red!", "blue"]
        assert tag_names(b) == was
        b.rollback()
        a.commit()
        assert env.queried(lambda: tag_names(b)) == ["red!", "blue"] == env.truth(tag_names)


@PG
def test_function_that_writes_called_in_a_select(env: Env) -> None:
    fn = P + "rc_writer"
    with env.engine.begin() as c:
        c.exec_driver_sql(
            f"CREATE FUNCTION {fn}() RETURNS int LANGUAGE plpgsql AS $$ BEGIN "
            f"UPDATE {T} SET name = name || '?' WHERE id = 2; RETURN 1; END $$"
        )
    try:
        env.warm(tag_names)
        with env.Session() as s:
            assert s.scalar(select(getattr(__import__("sqlalchemy").func, fn)())) == 1
            assert env.queried(lambda: tag_names(s)) == ["red", "blue?"]
            s.commit()
        assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red", "blue?"]
    finally:
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP FUNCTION {fn}()")


@pytest.fixture
def late_trigger(env: Env) -> Iterator[Any]:
    """A trigger (addresses -> tags) created by another connection of the engine, in a
    transaction committed while a caching session's write waits for its lock: the write
    looked the table up before the trigger was visible. Yields the write's thread result."""
    import threading
    import time

    fn, trg = P + "rc_late_fn", P + "rc_late_trg"
    env.warm(tag_names)
    ddl = env.engine.connect()
    errors: list[BaseException] = []
    try:
        ddl.exec_driver_sql(
            f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"UPDATE {T} SET name = name || '+' WHERE id = 1; RETURN NULL; END $$"
        )
        ddl.exec_driver_sql(
            f"CREATE TRIGGER {trg} AFTER UPDATE ON {A} FOR EACH ROW EXECUTE FUNCTION {fn}()"
        )

        def write() -> None:
            try:
                with env.Session() as s:
                    s.execute(text(f"UPDATE {A} SET email = 'late@x' WHERE id = 1"))
                    s.commit()
            except BaseException as exc:  # pragma: no cover - reported by the tests
                errors.append(exc)

        t = threading.Thread(target=write)
        t.start()
        time.sleep(0.5)  # the write has looked the table up and waits for the DDL's lock
        ddl.commit()
        t.join(30)
        assert not errors
        assert env.truth(tag_names) == ["red+", "blue"]
        yield errors
    finally:
        ddl.rollback()
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trg} ON {A}")
            c.exec_driver_sql(f"DROP FUNCTION IF EXISTS {fn}()")
        ddl.close()


@PG
def test_write_waiting_for_a_trigger_being_created(env: Env, late_trigger: Any) -> None:
    """The write looked its table up (no trigger) before the DDL's COMMIT made the trigger
    visible, then ran with it: what the trigger wrote was never counted, so its commit
    invalidates everything."""
    assert env.fresh_read(tag_names) == ["red+", "blue"]


@PG
def test_write_after_a_trigger_created_in_a_transaction_of_the_engine(
    env: Env, late_trigger: Any
) -> None:
    """The lookup made while the trigger's DDL was uncommitted must not outlive it: the
    next write to the table counts what the trigger changes."""
    env.cache.invalidate_tables_sync([T])  # the write above is another test's business
    env.warm(tag_names)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'later@x' WHERE id = 1"))
        s.commit()
    assert env.fresh_read(tag_names) == env.truth(tag_names) == ["red++", "blue"]


@PG
def test_explain_with_a_pending_change_to_a_trigger_table_runs_no_sql(env: Env, bang: None) -> None:
    """explain() must not autoflush a pending change (nor count what its trigger would do)."""
    from yokedcache_sa import explain

    env.warm(tag_names)
    with env.Session() as s:
        s.get_one(Address, 1).email = "pending@x"
        env.cached(lambda: explain(select(Tag.name).order_by(Tag.id), session=s))
        assert env.queried(lambda: tag_names(s)) == ["red!", "blue"]
        s.rollback()


@pytest.fixture
def on_insert(env: Env) -> Iterator[None]:
    """addresses INSERT -> tags UPDATE (a statement-level trigger)."""
    yield from _trigger(
        env,
        f"UPDATE {T} SET name = name || '#' WHERE id = 2",
        when="AFTER INSERT",
        each="STATEMENT",
    )


@PG
def test_orm_insert_of_many_rows_fires_a_statement_trigger(env: Env, on_insert: None) -> None:
    was = env.warm(tag_names)
    with env.Session() as s:
        s.add_all([Address(id=100 + i, user_id=1, email=f"m{i}@x") for i in range(5)])
        inside = env.queried(lambda: tag_names(s))
        assert inside != was and inside[1].startswith("blue#")
        s.commit()
    assert env.fresh_read(tag_names) == env.truth(tag_names) == inside


@pytest.fixture
def partitioned(env: Env) -> Iterator[Any]:
    """addresses UPDATE -> INSERT into a partitioned table (its rows live in a partition)."""
    from sqlalchemy import Column, Integer, MetaData, Table

    name = P + "rc_parts"
    with env.engine.begin() as c:
        c.exec_driver_sql(f"CREATE TABLE {name} (id int, n int) PARTITION BY RANGE (id)")
        c.exec_driver_sql(
            f"CREATE TABLE {name}_1 PARTITION OF {name} FOR VALUES FROM (0) TO (1000)"
        )
    parts = Table(name, MetaData(), Column("id", Integer, primary_key=True), Column("n", Integer))
    gen = _trigger(env, f"INSERT INTO {name} VALUES (NEW.id, 7)")
    next(gen)
    try:
        yield parts
    finally:
        next(gen, None)
        with env.engine.begin() as c:
            c.exec_driver_sql(f"DROP TABLE {name}")


@PG
def test_trigger_writes_a_partitioned_table(env: Env, partitioned: Any) -> None:
    """The counters move on the partition; reads name the partitioned table."""

    def part_ns(s: Session) -> Any:
        return s.scalars(select(partitioned.c.n).order_by(partitioned.c.id)).all()

    env.warm(part_ns)
    with env.Session() as s:
        s.execute(text(f"UPDATE {A} SET email = 'part@x' WHERE id = 1"))
        assert env.queried(lambda: part_ns(s)) == [7]
        s.commit()
    assert env.fresh_read(part_ns) == env.truth(part_ns) == [7]


@PG
@pytest.mark.parametrize("target", ["partition", "parent"])
def test_write_to_a_partition_or_its_parent(env: Env, partitioned: Any, target: str) -> None:
    """A write naming the partition changes what reads of the partitioned table return, and
    one naming the partitioned table changes the partition's rows."""
    from sqlalchemy import Column, Integer, MetaData, Table

    part = Table(
        partitioned.name + "_1",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("n", Integer),
    )
    with env.engine.begin() as c:
        c.exec_driver_sql(f"INSERT INTO {partitioned.name} VALUES (5, 1)")
    read_from = partitioned if target == "partition" else part

    def ns(s: Session) -> Any:
        return s.scalars(select(read_from.c.n).order_by(read_from.c.id)).all()

    env.warm(ns)
    written = part.name if target == "partition" else partitioned.name
    with env.Session() as s:
        s.execute(text(f"UPDATE {written} SET n = 2 WHERE id = 5"))
        assert env.queried(lambda: ns(s)) == [2]
        s.commit()
    assert env.fresh_read(ns) == env.truth(ns) == [2]
