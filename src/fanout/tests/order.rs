//! ORDER BY k-way merges, NULL placement, LIMIT and OFFSET.

use super::*;
use crate::fanout::*;

#[test]
fn order_by_ints_including_negatives() {
    let shards = [
        selected(INT, &[&["-20"], &["-3"], &["7"], &["100"]]),
        selected(INT, &[&["-5"], &["0"], &["7"]]),
        selected(INT, &[]),
        selected(INT, &[&["-2147483648"], &["2147483647"]]),
    ];
    let out = run(&sorted(vec![SortKey::asc(0)]), &shards);
    assert_eq!(out.columns, [("v".to_string(), oid::INT4)]);
    assert_eq!(
        column(&out, 0),
        [
            "-2147483648",
            "-20",
            "-5",
            "-3",
            "0",
            "7",
            "7",
            "100",
            "2147483647"
        ]
    );
    assert_eq!(out.tag, "SELECT 9");

    let desc = [
        selected(INT, &[&["100"], &["7"], &["-3"]]),
        selected(INT, &[&["9"], &["-10"]]),
    ];
    let out = run(&sorted(vec![SortKey::desc(0)]), &desc);
    assert_eq!(column(&out, 0), ["100", "9", "7", "-3", "-10"]);
}

#[test]
fn order_by_numeric_with_different_scales() {
    let cols: &[(&str, u32)] = &[("n", oid::NUMERIC)];
    let shards = [
        selected(cols, &[&["-12.50"], &["0.001"], &["3"], &["NaN"]]),
        selected(cols, &[&["-Infinity"], &["-3.0"], &["2.9999"], &["10.00"]]),
        selected(cols, &[&["-12.5000001"], &["3.000"], &["Infinity"]]),
    ];
    let out = run(&sorted(vec![SortKey::asc(0)]), &shards);
    assert_eq!(
        column(&out, 0),
        [
            "-Infinity",
            "-12.5000001",
            "-12.50",
            "-3.0",
            "0.001",
            "2.9999",
            "3",
            "3.000",
            "10.00",
            "Infinity",
            "NaN"
        ]
    );
}

#[test]
fn order_by_text_timestamps_and_floats() {
    let text: &[(&str, u32)] = &[("s", oid::TEXT)];
    let shards = [
        selected(text, &[&["B"], &["a"], &["ab"]]),
        selected(text, &[&[""], &["Z"], &["abc"], &["é"]]),
    ];
    let out = run(&sorted(vec![SortKey::asc(0)]), &shards);
    assert_eq!(column(&out, 0), ["", "B", "Z", "a", "ab", "abc", "é"]);

    // timestamptz in America/New_York around the end of daylight saving time, as Postgres
    // prints it: the instants are ordered, not the text.
    let ts: &[(&str, u32)] = &[("at", oid::TIMESTAMPTZ)];
    let shards = [
        selected(
            ts,
            &[&["2024-11-03 00:59:00-04"], &["2024-11-03 01:10:00-05"]],
        ),
        selected(
            ts,
            &[&["2024-11-03 01:30:00-04"], &["2024-11-03 02:00:00-05"]],
        ),
        selected(ts, &[&["0044-03-15 12:00:00-04:56:02 BC"], &["infinity"]]),
    ];
    let out = run(&sorted(vec![SortKey::asc(0)]), &shards);
    assert_eq!(
        column(&out, 0),
        [
            "0044-03-15 12:00:00-04:56:02 BC",
            "2024-11-03 00:59:00-04",
            "2024-11-03 01:30:00-04",
            "2024-11-03 01:10:00-05",
            "2024-11-03 02:00:00-05",
            "infinity"
        ]
    );

    let fl: &[(&str, u32)] = &[("f", oid::FLOAT8)];
    let shards = [
        selected(fl, &[&["NaN"], &["1e+21"], &["-0"]]),
        selected(fl, &[&["Infinity"], &["1.5"], &["-Infinity"]]),
    ];
    let out = run(&sorted(vec![SortKey::desc(0)]), &shards);
    assert_eq!(
        column(&out, 0),
        ["NaN", "Infinity", "1e+21", "1.5", "-0", "-Infinity"]
    );
}

#[test]
fn nulls_first_and_last() {
    let shards = || {
        [
            selected(INT, &[&["1"], &["3"], &["NULL"]]),
            selected(INT, &[&["2"], &["NULL"]]),
        ]
    };
    let asc = |k: SortKey| run(&sorted(vec![k]), &shards());
    assert_eq!(
        column(&asc(SortKey::asc(0)), 0),
        ["1", "2", "3", "NULL", "NULL"]
    );
    let shards_nf = [
        selected(INT, &[&["NULL"], &["1"], &["3"]]),
        selected(INT, &[&["NULL"], &["2"]]),
    ];
    let out = run(&sorted(vec![SortKey::asc(0).nulls_first(true)]), &shards_nf);
    assert_eq!(column(&out, 0), ["NULL", "NULL", "1", "2", "3"]);
    let desc = [
        selected(INT, &[&["NULL"], &["3"], &["1"]]),
        selected(INT, &[&["NULL"], &["2"]]),
    ];
    let out = run(&sorted(vec![SortKey::desc(0)]), &desc);
    assert_eq!(column(&out, 0), ["NULL", "NULL", "3", "2", "1"]);
    let desc_last = [
        selected(INT, &[&["3"], &["1"], &["NULL"]]),
        selected(INT, &[&["2"], &["NULL"]]),
    ];
    let out = run(
        &sorted(vec![SortKey::desc(0).nulls_first(false)]),
        &desc_last,
    );
    assert_eq!(column(&out, 0), ["3", "2", "1", "NULL", "NULL"]);
}

#[test]
fn multi_key_order_and_hidden_sort_column() {
    // SELECT name FROM t ORDER BY grp DESC, name: the shards also return grp.
    let cols: &[(&str, u32)] = &[("name", oid::VARCHAR), ("grp", oid::INT8)];
    let shards = [
        selected(cols, &[&["b", "2"], &["a", "1"], &["c", "1"]]),
        selected(cols, &[&["a", "2"], &["b", "1"]]),
    ];
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::hidden(Agg::Value(1)),
        ],
        order_by: vec![SortKey::desc(1), SortKey::asc(0)],
        ..MergePlan::default()
    };
    let out = run(&plan, &shards);
    assert_eq!(out.columns, [("name".to_string(), oid::VARCHAR)]);
    assert_eq!(out.rows, rows(&[&["a"], &["b"], &["a"], &["b"], &["c"]]));
    assert_eq!(out.tag, "SELECT 5");
}

#[test]
fn limit_and_offset_after_the_merge() {
    let shards = || {
        [
            selected(INT, &[&["1"], &["4"], &["5"], &["8"]]),
            selected(INT, &[&["2"], &["3"], &["6"], &["7"]]),
        ]
    };
    let plan = MergePlan {
        order_by: vec![SortKey::asc(0)],
        limit: Some(3),
        offset: 2,
        ..MergePlan::default()
    };
    assert_eq!(plan.shard_limit(), Some(5));
    let out = run(&plan, &shards());
    assert_eq!(column(&out, 0), ["3", "4", "5"]);
    assert_eq!(out.tag, "SELECT 3");

    let unordered = MergePlan {
        limit: Some(5),
        offset: 1,
        ..MergePlan::default()
    };
    let out = run(&unordered, &shards());
    assert_eq!(out.rows.len(), 5);
    assert_eq!(out.tag, "SELECT 5");

    let past_end = MergePlan {
        offset: 10,
        ..MergePlan::default()
    };
    let out = run(&past_end, &shards());
    assert!(out.rows.is_empty());
    assert_eq!(out.tag, "SELECT 0");
    let zero = MergePlan {
        limit: Some(0),
        order_by: vec![SortKey::asc(0)],
        ..MergePlan::default()
    };
    assert_eq!(run(&zero, &shards()).tag, "SELECT 0");
}
