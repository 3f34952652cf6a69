//! Statements that only read: SELECT, TABLE, VALUES, EXPLAIN, COPY TO STDOUT, cursors.

use super::{analyze, assert_kinds, kind};
use crate::sql::Kind;

#[test]
fn pgbench_select_is_a_read_of_its_table() {
    let a = analyze("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    assert_eq!(a.kind, Kind::Read);
    assert_eq!(a.tables, ["pgbench_accounts"]);
    assert!(!a.for_update && !a.writing_cte && a.write_function.is_none());
    assert_eq!(a.statements, 1);
    assert_eq!(a.parse_error, None);
}

#[test]
fn select_forms_are_reads() {
    assert_kinds(
        Kind::Read,
        &[
            "SELECT 1",
            "select * from t where a = 'x' order by b desc nulls last limit 10 offset 5",
            "SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b",
            "SELECT a, count(*) FROM t GROUP BY ROLLUP (a) HAVING count(*) > 1",
            "SELECT array_agg(x ORDER BY y) FILTER (WHERE z) OVER (PARTITION BY w) FROM t",
            "SELECT a::int, b::text[], c ->> 'x', d @> '{}'::jsonb, e ? 'k' FROM t",
            "SELECT * FROM t WHERE a = ANY($1) AND ts > now() - interval '1 day'",
            "SELECT * FROM a JOIN b USING (id) LEFT JOIN LATERAL (SELECT 1) x ON true",
            "SELECT 1 UNION ALL SELECT 2 INTERSECT SELECT 3",
            "SELECT * FROM generate_series(1, 10) g",
            "SELECT pg_sleep(0), current_setting('search_path'), now()",
            "SELECT 1 FROM t FETCH FIRST 5 ROWS ONLY",
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r",
            "WITH t AS MATERIALIZED (SELECT 1) SELECT * FROM t",
            "(SELECT 1)",
        ],
    );
}

#[test]
fn table_and_values_are_reads() {
    // sqlparser 0.64 cannot parse `TABLE t`; the analyzer reads it as `SELECT * FROM t`.
    let a = analyze("TABLE pgbench_branches");
    assert_eq!(
        (a.kind, a.tables.as_slice()),
        (Kind::Read, &["pgbench_branches".to_string()][..])
    );
    assert_eq!(kind("table t order by 1 limit 2"), Kind::Read);
    assert_eq!(kind("VALUES (1, 'a'), (2, 'b')"), Kind::Read);
    assert_eq!(kind("SELECT * FROM (VALUES (1), (2)) v(a)"), Kind::Read);
}

#[test]
fn explain_is_a_read_unless_it_analyzes_a_write() {
    assert_kinds(
        Kind::Read,
        &[
            "EXPLAIN SELECT * FROM t",
            "EXPLAIN (FORMAT JSON) SELECT 1",
            "EXPLAIN ANALYZE SELECT * FROM t",
            "EXPLAIN UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "EXPLAIN (ANALYZE off, COSTS) INSERT INTO t VALUES (1)",
        ],
    );
    assert_kinds(
        Kind::Write,
        &[
            "EXPLAIN ANALYZE UPDATE t SET a = 1",
            "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
            "EXPLAIN (ANALYZE true) INSERT INTO t VALUES (1)",
            "EXPLAIN ANALYZE SELECT nextval('s')",
            "EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE",
        ],
    );
}

#[test]
fn copy_to_stdout_and_cursors_read() {
    assert_kinds(
        Kind::Read,
        &[
            "COPY t TO STDOUT",
            "COPY (SELECT * FROM t WHERE a > 1) TO STDOUT WITH (FORMAT csv)",
            "DECLARE c CURSOR FOR SELECT * FROM t",
        ],
    );
    assert_eq!(analyze("COPY orders TO STDOUT").tables, ["orders"]);
    assert_eq!(
        kind("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE"),
        Kind::Write
    );
}

#[test]
fn tables_are_folded_qualified_and_deduplicated() {
    let a =
        analyze(r#"SELECT * FROM Public.Orders o JOIN s."MixedCase" m ON true, orders, ORDERS"#);
    assert_eq!(a.tables, ["public.orders", "s.MixedCase", "orders"]);
    let a =
        analyze("SELECT * FROM a WHERE id IN (SELECT id FROM b WHERE EXISTS (SELECT 1 FROM c))");
    assert_eq!(a.tables, ["a", "b", "c"]);
}

#[test]
fn cte_names_and_table_functions_are_not_tables() {
    let a = analyze("WITH x AS (SELECT * FROM t) SELECT * FROM x, generate_series(1, 3) g");
    assert_eq!(a.tables, ["t"]);
}
