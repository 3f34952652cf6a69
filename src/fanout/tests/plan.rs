//! Plan validation, aggregate classification and type binding.

use crate::fanout::plan::*;
use crate::fanout::wire::test_util::row_desc;
use crate::fanout::wire::RowDescription;
use crate::fanout::MergeError;

#[test]
fn classifies_aggregates() {
    assert_eq!(AggFunc::classify("count", false), Ok(AggFunc::Count));
    assert_eq!(AggFunc::classify("max", true), Ok(AggFunc::Max));
    assert_eq!(AggFunc::classify("bool_and", false), Ok(AggFunc::Min));
    for (name, distinct) in [
        ("count", true),
        ("sum", true),
        ("string_agg", false),
        ("percentile_cont", false),
        ("stddev", false),
    ] {
        let e = AggFunc::classify(name, distinct).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000", "{name}");
        assert!(e.to_pg_error().hint.is_some());
    }
}

#[test]
fn validates_structure() {
    let avg = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::new(Agg::Count(1)),
        ],
        group_by: vec![1],
        ..MergePlan::default()
    };
    assert!(matches!(avg.validate(), Err(MergeError::InvalidPlan(_))));
    let distinct_hidden = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::hidden(Agg::Value(1)),
        ],
        order_by: vec![SortKey::asc(1)],
        distinct: true,
        ..MergePlan::default()
    };
    assert!(matches!(
        distinct_hidden.validate(),
        Err(MergeError::Unsupported { .. })
    ));
    let out_of_range = MergePlan {
        order_by: vec![SortKey::asc(5)],
        columns: vec![MergeColumn::new(Agg::Value(0))],
        ..MergePlan::default()
    };
    assert!(out_of_range.validate().is_err());
    assert_eq!(
        MergePlan {
            limit: Some(5),
            offset: 3,
            ..MergePlan::default()
        }
        .shard_limit(),
        Some(8)
    );
}

#[test]
fn binds_types_and_hides_helpers() {
    let t = RowDescription::parse(&row_desc(&[
        ("bid", 23),
        ("count", 20),
        ("avg", 20),
        ("c", 20),
    ]))
    .unwrap();
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
        ..MergePlan::default()
    };
    let out = plan.output_row_description(&t).unwrap();
    let names: Vec<(&str, u32)> = out
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.type_oid))
        .collect();
    assert_eq!(names, [("bid", 23), ("count", 20), ("avg", 1700)]);

    let bad_sum = MergePlan {
        columns: vec![MergeColumn::new(Agg::Sum(0))],
        ..MergePlan::default()
    };
    let text = RowDescription::parse(&row_desc(&[("s", 25)])).unwrap();
    assert!(matches!(
        bad_sum.bind(&text),
        Err(MergeError::Unsupported { .. })
    ));
    let interval = RowDescription::parse(&row_desc(&[("i", 1186)])).unwrap();
    let sorted = MergePlan {
        order_by: vec![SortKey::asc(0)],
        ..MergePlan::default()
    };
    assert!(matches!(
        sorted.bind(&interval),
        Err(MergeError::Unsupported { .. })
    ));
    assert!(MergePlan::concat().bind(&interval).unwrap().identity);
    let wide = MergePlan {
        columns: vec![MergeColumn::new(Agg::Max(3))],
        ..MergePlan::default()
    };
    assert!(matches!(wide.bind(&text), Err(MergeError::InvalidPlan(_))));
}
