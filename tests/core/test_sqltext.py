"""The raw SQL scanner: which tables a statement writes and which functions it calls."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from yokedcache_sa.orm.sqltext import scan_fragment, scan_reads, scan_sql
from yokedcache_sa.orm.tracking import tags_of_names, with_aliases, written_tables_of_sql


def targets(sql: str) -> set[tuple[str | None, str]] | None:
    written = scan_sql(sql).written
    return None if written is None else {(n.schema, n.table) for n in written}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("UPDATE public.t SET a = 1", {("public", "t")}),
        ("update test.t set a = 1", {("test", "t")}),
        ("UPDATE db.sch.t SET a = 1", {("sch", "t")}),
        ('UPDATE "Sch"."T" SET a = 1', {("Sch", "T")}),
        ("UPDATE `t` SET a = 1", {(None, "t")}),
        ("UPDATE [t] SET a = 1", {(None, "t")}),
        ("UPDATE ONLY t SET a = 1", {(None, "t")}),
        ("UPDATE LOW_PRIORITY IGNORE t SET a = 1", {(None, "t")}),
        ("UPDATE OR REPLACE t SET a = 1", {(None, "t")}),
        ("UPDATE t AS x SET a = 1 FROM u WHERE x.id = u.id", {(None, "t")}),
        ("UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = 1", {(None, "t1"), (None, "t2")}),
        ("UPDATE t1, t2 SET t1.a = t2.a", {(None, "t1"), (None, "t2")}),
        ("INSERT INTO t (a) VALUES (1) ON CONFLICT (a) DO UPDATE SET a = 2", {(None, "t")}),
        ("INSERT INTO t VALUES (1) ON DUPLICATE KEY UPDATE a = VALUES(a)", {(None, "t")}),
        ("INSERT IGNORE INTO t SELECT * FROM u", {(None, "t")}),
        ("INSERT OR REPLACE INTO t VALUES (1)", {(None, "t")}),
        ("INSERT t (a) VALUES (1)", {(None, "t")}),
        ("REPLACE INTO t (a) VALUES (1)", {(None, "t")}),
        ("DELETE FROM t WHERE a = 1", {(None, "t")}),
        ("DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id", {(None, "t1"), (None, "t2")}),
        (
            "DELETE a FROM t1 AS a JOIN t2 b ON a.id = b.id",
            {(None, "a"), (None, "t1"), (None, "t2")},
        ),
        ("DELETE FROM t1 USING t2 WHERE t1.id = t2.id", {(None, "t1"), (None, "t2")}),
        ("DELETE FROM t1, t2 USING t1 JOIN t2", {(None, "t1"), (None, "t2")}),
        ("WITH x AS (SELECT 1) UPDATE t SET a = 1", {(None, "t")}),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING id) SELECT * FROM x", {(None, "t")}),
        (
            "WITH a AS (DELETE FROM t1 RETURNING *), b AS (INSERT INTO t2 SELECT * FROM a) "
            "SELECT 1",
            {(None, "t1"), (None, "t2")},
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET a = s.a "
            "WHEN MATCHED THEN DELETE WHEN NOT MATCHED THEN INSERT (id) VALUES (s.id)",
            {(None, "t")},
        ),
        ("TRUNCATE TABLE a, ONLY b * RESTART IDENTITY", {(None, "a"), (None, "b")}),
        ("TRUNCATE a, b", {(None, "a"), (None, "b")}),
        ("/* hi */ -- there\n DELETE FROM t", {(None, "t")}),
        ("EXPLAIN ANALYZE UPDATE t SET a = 1", {(None, "t")}),
        ("SELECT 1; UPDATE t SET a = 1;", {(None, "t")}),
        ("SELECT * FROM t FOR UPDATE", set()),
        ("SELECT * FROM t FOR NO KEY UPDATE OF t", set()),
        ("SELECT 'UPDATE u SET a = 1' FROM t", set()),
        ("SELECT $$UPDATE u SET a = 1$$ FROM t", set()),
        ('SELECT "update" FROM t', set()),
        ("SELECT replace(a, 'x', 'y'), insert(a, 1, 2, 'z') FROM t", set()),
        ("WITH RECURSIVE c(n) AS (SELECT 1) SELECT n FROM c", set()),
        # PostgreSQL: refreshing a materialized view writes it
        ("REFRESH MATERIALIZED VIEW mv", {(None, "mv")}),
        ("refresh materialized view concurrently s.mv", {("s", "mv")}),
        ('REFRESH MATERIALIZED VIEW "S"."Mv" WITH NO DATA', {("S", "Mv")}),
        ("REFRESH MATERIALIZED VIEW mv WITH DATA; UPDATE t SET a = 1", {(None, "mv"), (None, "t")}),
        # cannot be accounted for: unknown
        ("TRUNCATE a CASCADE", None),
        ("SELECT a INTO b FROM t", None),
        ("CALL p()", None),
        ("REFRESH mv", None),
        ("REFRESH MATERIALIZED VIEW mv CASCADE", None),
        ("REFRESH MATERIALIZED VIEW", None),
        ("DO $$ BEGIN UPDATE t SET a = 1; END $$", None),
        ("CREATE TABLE t (a int)", None),
        ("COPY t FROM STDIN", None),
        ("/*!50000 UPDATE t SET a = 1 */", None),
        ("SELECT 'unterminated", None),
        ("UPDATE SET a = 1", None),
        # a quote whose end depends on backslash escapes: both readings must agree
        (r"UPDATE t SET a = 'x\' WHERE 1 = 1; UPDATE u SET b = ''", None),
    ],
)
def test_targets(sql: str, expected: set[tuple[str | None, str]] | None) -> None:
    assert targets(sql) == expected


def test_functions_are_collected() -> None:
    scan = scan_sql(
        'SELECT count(*), s.f(x), "G"(y), CAST(z AS varchar(10)), CURRENT_TIMESTAMP '
        "FROM generate_series(1, 3) AS g(n) WHERE a IN (1) AND EXISTS (SELECT 1)"
    )
    assert scan.functions == {"count", "s.f", "G", "current_timestamp", "generate_series"}
    assert scan_sql("INSERT INTO t (a) VALUES (f(1))").functions == {"f"}
    assert scan_fragment("lower(name) = 'x'").functions == {"lower"}


def test_tags_over_approximate_names() -> None:
    assert written_tables_of_sql("UPDATE Public.Users SET a = 1") == frozenset(
        {
            "table:Users",
            "table:users",
            "table:Public.Users",
            "table:Public.users",
            "table:public.Users",
            "table:public.users",
        }
    )
    assert tags_of_names(()) == frozenset()


def test_default_schema_aliases() -> None:
    assert with_aliases({"table:t"}, "public", ()) == {"table:t", "table:public.t"}
    assert with_aliases({"table:public.t"}, "public", ()) == {"table:t", "table:public.t"}
    assert with_aliases({"table:other.t"}, "public", ()) == {"table:other.t"}


_SQL_BITS = st.sampled_from(
    ["UPDATE", "t", "SET", "a", "=", "'", "\\", '"', "`", "$$", "--", "\n", "/*", "*/", ";",
     "(", ")", "WITH", "INSERT", "INTO", "DELETE", "FROM", "#", "x", ",", "."]
)  # fmt: skip


@given(st.lists(_SQL_BITS, max_size=30))
def test_scanner_never_misses_a_visible_update(bits: list[str]) -> None:
    # Appending a plain UPDATE of "zz" as a separate statement: the scanner either reports
    # it or gives up (None); it never returns a target set without it.
    sql = " ".join(bits) + "\n; UPDATE zz SET a = 1"
    written = scan_sql(sql).written
    if written is not None:
        assert any(n.table == "zz" for n in written)


def reads(sql: str) -> set[tuple[str | None, str]] | None:
    tables = scan_reads(sql).tables
    return None if tables is None else {(n.schema, n.table) for n in tables}


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT a FROM t", {(None, "t")}),
        ("SELECT * FROM s.t x, u AS y WHERE x.id = y.id", {("s", "t"), (None, "u")}),
        (
            "SELECT * FROM t1 JOIN t2 ON t1.id = t2.id LEFT OUTER JOIN t3 USING (id), t4",
            {(None, "t1"), (None, "t2"), (None, "t3"), (None, "t4")},
        ),
        # MariaDB's information_schema.VIEWS.VIEW_DEFINITION
        (
            "select `a`.`id` AS `id`,`b`.`y` AS `y` from (`test`.`t1` `a` join `test`.`t2` `b` "
            "on(`a`.`id` = `b`.`id`)) join `test`.`t1` `c` where `c`.`id` = `a`.`id`",
            {("test", "t1"), ("test", "t2")},
        ),
        # PostgreSQL's pg_get_viewdef()
        (
            " SELECT a.id,\n    b.y\n   FROM (t1 a\n     JOIN t2 b ON ((a.id = b.id)));",
            {(None, "t1"), (None, "t2")},
        ),
        (
            "SELECT * FROM t WHERE id IN (SELECT id FROM u) AND EXISTS (SELECT 1 FROM v)",
            {(None, "t"), (None, "u"), (None, "v")},
        ),
        ("SELECT * FROM (SELECT * FROM t) AS d", {(None, "t")}),
        ("SELECT a FROM t UNION ALL SELECT b FROM u ORDER BY 1", {(None, "t"), (None, "u")}),
        # SQLite's sqlite_master.sql
        ("CREATE VIEW v(a) AS SELECT x FROM t", {(None, "t")}),
        ('CREATE TEMP VIEW IF NOT EXISTS "v" AS SELECT x FROM "T"', {(None, "T")}),
        # a CTE name is over-reported (a tag nobody writes); its body's tables are found
        ("WITH c AS (SELECT * FROM t) SELECT * FROM c", {(None, "c"), (None, "t")}),
        ("SELECT * FROM generate_series(1, 3) g, t", {(None, "t")}),
        ("SELECT 1", set()),
        ("TABLE t", {(None, "t")}),
        # not a query that only reads: unknown
        ("UPDATE t SET a = 1", None),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", None),
        ("CREATE TABLE t (a int)", None),
        ("SELECT 1; SELECT 2", None),
        ("SELECT 'unterminated FROM t", None),
    ],
)
def test_reads(sql: str, expected: set[tuple[str | None, str]] | None) -> None:
    assert reads(sql) == expected


def test_reads_collect_functions() -> None:
    assert scan_reads("SELECT now(), lower(a) FROM t").functions == {"now", "lower"}
    assert scan_reads("CREATE VIEW v AS SELECT f(a) FROM t").functions == {"f"}
