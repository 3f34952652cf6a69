//! Unit tests of fan-out query planning.

use super::*;

fn plan(sql: &str) -> (String, MergePlan) {
    let q = fan_out_query(sql).unwrap();
    let fields: Vec<String> = Vec::new();
    (q.shard_sql, q.spec.resolve(&fields).unwrap())
}

#[test]
fn plain_reads_are_sent_unchanged() {
    let (sql, p) = plan("SELECT aid, abalance FROM accounts WHERE abalance > 0");
    assert_eq!(sql, "SELECT aid, abalance FROM accounts WHERE abalance > 0");
    assert!(!p.is_aggregate() && p.order_by.is_empty());
}

#[test]
fn order_and_limit_push_down() {
    let (sql, p) =
        plan("SELECT aid, abalance FROM accounts ORDER BY abalance DESC, aid LIMIT 10 OFFSET 5");
    assert_eq!(
        sql,
        "SELECT aid, abalance FROM accounts ORDER BY abalance DESC, aid LIMIT 15"
    );
    assert_eq!(p.order_by, [SortKey::desc(1), SortKey::asc(0)]);
    assert_eq!((p.limit, p.offset), (Some(10), 5));
    let (sql, p) = plan("SELECT aid FROM accounts ORDER BY bid");
    assert_eq!(
        sql,
        "SELECT aid, bid AS _sg_sort_0 FROM accounts ORDER BY bid"
    );
    assert_eq!(p.order_by, [SortKey::asc(1)]);
    assert!(p.columns[1].hidden);
}

#[test]
fn aggregates_and_avg_rewrite() {
    let (sql, p) =
        plan("SELECT bid, count(*), avg(abalance) FROM t GROUP BY bid ORDER BY bid LIMIT 5");
    assert_eq!(sql, "SELECT bid, count(*), sum(abalance) AS avg, count(abalance) AS _sg_count_0 FROM t GROUP BY bid");
    assert_eq!(p.group_by, [0]);
    assert_eq!(
        p.columns[2].agg,
        Agg::Avg {
            sum_col: 2,
            count_col: 3
        }
    );
    assert_eq!(p.limit, Some(5));
    let (_, p) = plan("SELECT count(*) FROM pgbench_branches");
    assert_eq!(p.columns[0].agg, Agg::Count(0));
}

#[test]
fn unmergeable_queries_are_refused() {
    for sql in [
        "SELECT string_agg(x, ',') FROM t",
        "SELECT count(DISTINCT x) FROM t",
        "SELECT bid, count(*) FROM t GROUP BY bid HAVING count(*) > 1",
        "SELECT count(*) + 1 FROM t",
        "SELECT * FROM a UNION SELECT * FROM b",
        "SELECT DISTINCT ON (a) a, b FROM t",
        "SELECT x, row_number() OVER () FROM t",
        "SELECT * FROM t LIMIT $1",
    ] {
        let e = fan_out_query(sql).unwrap_err();
        assert_eq!(
            e.sqlstate(),
            crate::protocol::sqlstate::FEATURE_NOT_SUPPORTED,
            "{sql}: {e:?}"
        );
    }
}
