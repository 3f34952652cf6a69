//! GROUP BY, aggregates and DISTINCT.

use super::*;
use crate::fanout::*;

/// Shard columns of `SELECT bid, count(*), count(abalance), sum(abalance), min(abalance),
/// max(abalance), sum(abalance) AS avg, count(abalance), sum(amount), sum(amount) AS avg,
/// count(amount) FROM t GROUP BY bid ORDER BY bid` (abalance int4, amount numeric).
const AGG_COLS: &[(&str, u32)] = &[
    ("bid", oid::INT4),
    ("count", oid::INT8),
    ("count", oid::INT8),
    ("sum", oid::INT8),
    ("min", oid::INT4),
    ("max", oid::INT4),
    ("avg", oid::INT8),
    ("count", oid::INT8),
    ("sum", oid::NUMERIC),
    ("avg", oid::NUMERIC),
    ("count", oid::INT8),
];

fn agg_columns() -> Vec<MergeColumn> {
    vec![
        MergeColumn::new(Agg::Value(0)),
        MergeColumn::new(Agg::Count(1)),
        MergeColumn::new(Agg::Count(2)),
        MergeColumn::new(Agg::Sum(3)),
        MergeColumn::new(Agg::Min(4)),
        MergeColumn::new(Agg::Max(5)),
        MergeColumn::new(Agg::Avg {
            sum_col: 6,
            count_col: 7,
        }),
        MergeColumn::new(Agg::Sum(8)),
        MergeColumn::new(Agg::Avg {
            sum_col: 9,
            count_col: 10,
        }),
    ]
}

/// Per-shard answers from PostgreSQL 15 for the rows
/// s0: (1,10,1.50) (1,NULL,2) (2,-5,-0.125) (NULL,7,NULL);
/// s1: (1,3,3.1) (3,100,0.125) (2,NULL,NULL); s2: no rows.
fn agg_shards() -> [ShardResult; 3] {
    [
        selected(
            AGG_COLS,
            &[
                &[
                    "1", "2", "1", "10", "10", "10", "10", "1", "3.50", "3.50", "2",
                ],
                &[
                    "2", "1", "1", "-5", "-5", "-5", "-5", "1", "-0.125", "-0.125", "1",
                ],
                &[
                    "NULL", "1", "1", "7", "7", "7", "7", "1", "NULL", "NULL", "0",
                ],
            ],
        ),
        selected(
            AGG_COLS,
            &[
                &["1", "1", "1", "3", "3", "3", "3", "1", "3.1", "3.1", "1"],
                &[
                    "2", "1", "0", "NULL", "NULL", "NULL", "NULL", "0", "NULL", "NULL", "0",
                ],
                &[
                    "3", "1", "1", "100", "100", "100", "100", "1", "0.125", "0.125", "1",
                ],
            ],
        ),
        selected(AGG_COLS, &[]),
    ]
}

#[test]
fn group_by_with_all_aggregates() {
    let plan = MergePlan {
        columns: agg_columns(),
        group_by: vec![0],
        order_by: vec![SortKey::asc(0)],
        ..MergePlan::default()
    };
    let out = run(&plan, &agg_shards());
    let types: Vec<u32> = out.columns.iter().map(|c| c.1).collect();
    assert_eq!(types, [23, 20, 20, 20, 23, 23, 1700, 1700, 1700]);
    assert_eq!(out.columns[6].0, "avg");
    // PostgreSQL: SELECT bid, count(*), count(abalance), sum(abalance), min(abalance),
    // max(abalance), avg(abalance), sum(amount), avg(amount) ... GROUP BY bid ORDER BY bid.
    assert_eq!(
        out.rows,
        rows(&[
            &[
                "1",
                "3",
                "2",
                "13",
                "3",
                "10",
                "6.5000000000000000",
                "6.60",
                "2.2000000000000000"
            ],
            &[
                "2",
                "2",
                "1",
                "-5",
                "-5",
                "-5",
                "-5.0000000000000000",
                "-0.125",
                "-0.12500000000000000000"
            ],
            &[
                "3",
                "1",
                "1",
                "100",
                "100",
                "100",
                "100.0000000000000000",
                "0.125",
                "0.12500000000000000000"
            ],
            &[
                "NULL",
                "1",
                "1",
                "7",
                "7",
                "7",
                "7.0000000000000000",
                "NULL",
                "NULL"
            ],
        ])
    );
    assert_eq!(out.tag, "SELECT 4");

    // ORDER BY avg DESC LIMIT 2 OFFSET 1 on the merged groups.
    let plan = MergePlan {
        columns: agg_columns(),
        group_by: vec![0],
        order_by: vec![SortKey::desc(6)],
        limit: Some(2),
        offset: 1,
        ..MergePlan::default()
    };
    let out = run(&plan, &agg_shards());
    assert_eq!(column(&out, 0), ["NULL", "1"]);
    assert_eq!(out.tag, "SELECT 2");
}

#[test]
fn aggregates_without_group_by() {
    // SELECT count(*), sum(abalance), min(amount), max(amount), avg(abalance), avg(amount)
    let cols: &[(&str, u32)] = &[
        ("count", oid::INT8),
        ("sum", oid::INT8),
        ("min", oid::NUMERIC),
        ("max", oid::NUMERIC),
        ("avg", oid::INT8),
        ("count", oid::INT8),
        ("avg", oid::NUMERIC),
        ("count", oid::INT8),
    ];
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Count(0)),
            MergeColumn::new(Agg::Sum(1)),
            MergeColumn::new(Agg::Min(2)),
            MergeColumn::new(Agg::Max(3)),
            MergeColumn::new(Agg::Avg {
                sum_col: 4,
                count_col: 5,
            }),
            MergeColumn::new(Agg::Avg {
                sum_col: 6,
                count_col: 7,
            }),
        ],
        ..MergePlan::default()
    };
    let shards = [
        selected(
            cols,
            &[&["4", "12", "-0.125", "2", "12", "3", "3.375", "3"]],
        ),
        selected(
            cols,
            &[&["3", "103", "0.125", "3.1", "103", "2", "3.225", "2"]],
        ),
        selected(
            cols,
            &[&["0", "NULL", "NULL", "NULL", "NULL", "0", "NULL", "0"]],
        ),
    ];
    let out = run(&plan, &shards);
    // PostgreSQL over all rows: 7|115|-0.125|3.1|23.0000000000000000|1.3200000000000000
    assert_eq!(
        out.rows,
        rows(&[&[
            "7",
            "115",
            "-0.125",
            "3.1",
            "23.0000000000000000",
            "1.3200000000000000"
        ]])
    );
    assert_eq!(out.tag, "SELECT 1");

    // Every shard empty: count 0, everything else NULL; still exactly one row.
    let empty = [
        selected(
            cols,
            &[&["0", "NULL", "NULL", "NULL", "NULL", "0", "NULL", "0"]],
        ),
        selected(
            cols,
            &[&["0", "NULL", "NULL", "NULL", "NULL", "0", "NULL", "0"]],
        ),
    ];
    let out = run(&plan, &empty);
    assert_eq!(
        out.rows,
        rows(&[&["0", "NULL", "NULL", "NULL", "NULL", "NULL"]])
    );
    // Even if the shards sent no row at all.
    let out = run(&plan, &[selected(cols, &[]), selected(cols, &[])]);
    assert_eq!(
        out.rows,
        rows(&[&["0", "NULL", "NULL", "NULL", "NULL", "NULL"]])
    );
    assert_eq!(out.tag, "SELECT 1");
}

#[test]
fn sums_check_range_and_floats_use_postgres_output() {
    let cols: &[(&str, u32)] = &[("sum", oid::INT8)];
    let plan = MergePlan {
        columns: vec![MergeColumn::new(Agg::Sum(0))],
        ..MergePlan::default()
    };
    let big = [
        selected(cols, &[&["9223372036854775807"]]),
        selected(cols, &[&["-9223372036854775808"]]),
        selected(cols, &[&["1"]]),
    ];
    assert_eq!(run(&plan, &big).rows, rows(&[&["0"]]));
    let over = [
        selected(cols, &[&["9223372036854775807"]]),
        selected(cols, &[&["1"]]),
    ];
    let e = merge(&plan, &over).unwrap_err();
    assert_eq!(e, MergeError::OutOfRange("bigint"));
    assert_eq!(e.sqlstate(), "22003");

    let f: &[(&str, u32)] = &[
        ("sum", oid::FLOAT8),
        ("avg", oid::FLOAT8),
        ("count", oid::INT8),
    ];
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Sum(0)),
            MergeColumn::new(Agg::Avg {
                sum_col: 1,
                count_col: 2,
            }),
        ],
        ..MergePlan::default()
    };
    let shards = [
        selected(f, &[&["0.1", "0.1", "1"]]),
        selected(f, &[&["0.2", "0.2", "1"]]),
    ];
    // PostgreSQL: sum(x), avg(x) over 0.1, 0.2 (float8).
    let out = run(&plan, &shards);
    assert_eq!(
        out.rows,
        rows(&[&["0.30000000000000004", "0.15000000000000002"]])
    );
    assert_eq!(out.columns[1].1, oid::FLOAT8);
}

#[test]
fn distinct_across_shards() {
    let cols: &[(&str, u32)] = &[("a", oid::INT4), ("n", oid::NUMERIC)];
    let shards = || {
        [
            selected(cols, &[&["1", "1.0"], &["2", "NULL"], &["3", "5"]]),
            selected(cols, &[&["1", "1.00"], &["2", "NULL"], &["4", "5"]]),
            selected(cols, &[&["1", "2"], &["3", "5.000"]]),
        ]
    };
    let plan = MergePlan {
        distinct: true,
        order_by: vec![SortKey::asc(0), SortKey::asc(1)],
        ..MergePlan::default()
    };
    let out = run(&plan, &shards());
    // numeric 1.0 = 1.00 and 5 = 5.000: the first one seen is kept, as Postgres keeps one.
    assert_eq!(
        out.rows,
        rows(&[
            &["1", "1.0"],
            &["1", "2"],
            &["2", "NULL"],
            &["3", "5"],
            &["4", "5"]
        ])
    );
    assert_eq!(out.tag, "SELECT 5");
    let unordered = MergePlan {
        distinct: true,
        ..MergePlan::default()
    };
    let out = run(&unordered, &shards());
    assert_eq!(out.rows.len(), 5);
    // SELECT DISTINCT a ... ORDER BY a LIMIT 2 on a partially covered sort.
    let plan = MergePlan {
        columns: vec![MergeColumn::new(Agg::Value(0))],
        distinct: true,
        order_by: vec![SortKey::asc(0)],
        limit: Some(2),
        ..MergePlan::default()
    };
    assert_eq!(column(&run(&plan, &shards()), 0), ["1", "2"]);
}

/// `SELECT bid, count(*), avg(abalance) FROM acc GROUP BY bid ORDER BY bid LIMIT 5`, sent to
/// three shards as `SELECT bid, count(*), sum(abalance) AS avg, count(abalance) FROM acc
/// GROUP BY bid ORDER BY bid`. Shard answers and the expected result are PostgreSQL 15's.
#[test]
fn pgbench_style_group_by_avg_with_limit() {
    let cols: &[(&str, u32)] = &[
        ("bid", oid::INT4),
        ("count", oid::INT8),
        ("avg", oid::INT8),
        ("count", oid::INT8),
    ];
    let shards = [
        selected(
            cols,
            &[
                &["1", "1", "277", "1"],
                &["2", "2", "-114", "2"],
                &["3", "2", "-558", "2"],
                &["4", "2", "-1", "2"],
                &["5", "2", "108", "2"],
                &["6", "2", "-56", "1"],
                &["7", "2", "221", "2"],
            ],
        ),
        selected(
            cols,
            &[
                &["1", "2", "-706", "2"],
                &["2", "2", "-463", "1"],
                &["3", "2", "-40", "2"],
                &["4", "2", "-484", "2"],
                &["5", "2", "73", "2"],
                &["6", "2", "182", "2"],
                &["7", "2", "-262", "2"],
            ],
        ),
        selected(
            cols,
            &[
                &["1", "2", "-188", "2"],
                &["2", "2", "-632", "2"],
                &["3", "2", "-75", "2"],
                &["4", "2", "34", "2"],
                &["5", "2", "-317", "1"],
                &["6", "2", "147", "2"],
                &["7", "1", "240", "1"],
            ],
        ),
    ];
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::new(Agg::Count(1)),
            MergeColumn::new(Agg::Avg {
                sum_col: 2,
                count_col: 3,
            }),
        ],
        group_by: vec![0],
        order_by: vec![SortKey::asc(0)],
        limit: Some(5),
        ..MergePlan::default()
    };
    assert_eq!(plan.shard_limit(), None);
    let out = run(&plan, &shards);
    assert_eq!(
        out.columns,
        [
            ("bid".to_string(), oid::INT4),
            ("count".to_string(), oid::INT8),
            ("avg".to_string(), oid::NUMERIC)
        ]
    );
    assert_eq!(
        out.rows,
        rows(&[
            &["1", "5", "-123.4000000000000000"],
            &["2", "6", "-241.8000000000000000"],
            &["3", "6", "-112.1666666666666667"],
            &["4", "6", "-75.1666666666666667"],
            &["5", "6", "-27.2000000000000000"],
        ])
    );
    assert_eq!(out.tag, "SELECT 5");
}
