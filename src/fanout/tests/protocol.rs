//! Command tags, binary columns, streaming, Execute without RowDescription, and errors.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::fanout::wire::test_util::{complete, data_row, data_row_raw, field, row_desc};
use crate::fanout::wire::{parse_data_row, RowDescription, FORMAT_BINARY};
use crate::fanout::*;
use crate::protocol::split_frame;

#[test]
fn write_command_tags_are_summed() {
    let tag = |t: &str| ShardResult {
        command_complete: complete(t),
        ..ShardResult::default()
    };
    let out = run(
        &MergePlan::concat(),
        &[tag("INSERT 0 2"), tag("INSERT 0 3")],
    );
    assert_eq!((out.tag.as_str(), out.rows.len()), ("INSERT 0 5", 0));
    assert!(out.columns.is_empty());
    assert_eq!(
        run(&MergePlan::concat(), &[tag("UPDATE 1"), tag("UPDATE 0")]).tag,
        "UPDATE 1"
    );
    assert_eq!(
        run(&MergePlan::concat(), &[tag("DELETE 4"), tag("DELETE 6")]).tag,
        "DELETE 10"
    );
    assert_eq!(
        run(
            &MergePlan::concat(),
            &[tag("CREATE TABLE"), tag("CREATE TABLE")]
        )
        .tag,
        "CREATE TABLE"
    );
    // CREATE TABLE AS reports SELECT n without rows.
    assert_eq!(
        run(&MergePlan::concat(), &[tag("SELECT 2"), tag("SELECT 3")]).tag,
        "SELECT 5"
    );
    let e = merge(&MergePlan::concat(), &[tag("UPDATE 1"), tag("DELETE 1")]).unwrap_err();
    assert!(matches!(e, MergeError::Mismatch(_)));
    // INSERT ... RETURNING: rows concatenated, count summed.
    let ret = |rows: &[&[&str]], t: &str| shard(INT, rows, t);
    let out = run(
        &MergePlan::concat(),
        &[
            ret(&[&["1"]], "INSERT 0 1"),
            ret(&[&["2"], &["3"]], "INSERT 0 2"),
        ],
    );
    assert_eq!((out.rows.len(), out.tag.as_str()), (3, "INSERT 0 3"));
}

fn binary_shard(oids: &[u32], rows: &[Vec<Option<Vec<u8>>>]) -> ShardResult {
    let desc = RowDescription {
        fields: oids
            .iter()
            .enumerate()
            .map(|(i, &o)| field(&format!("c{i}"), o, FORMAT_BINARY))
            .collect(),
    };
    let mut t = BytesMut::new();
    desc.encode(&mut t);
    ShardResult {
        row_description: Some(t.freeze()),
        data_rows: rows
            .iter()
            .map(|r| {
                let raw: Vec<Option<&[u8]>> = r.iter().map(|v| v.as_deref()).collect();
                data_row_raw(&raw)
            })
            .collect(),
        command_complete: complete(&format!("SELECT {}", rows.len())),
    }
}

fn merge_binary(plan: &MergePlan, shards: &[ShardResult], ncols: usize) -> Vec<Vec<Option<Bytes>>> {
    let mut buf = merge(plan, shards).unwrap();
    let mut out = Vec::new();
    while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
        if f.tag == b'D' {
            out.push(parse_data_row(&f.bytes, ncols).unwrap());
        }
    }
    out
}

#[test]
fn binary_integer_columns() {
    let i4 = |v: i32| Some(v.to_be_bytes().to_vec());
    let i8 = |v: i64| Some(v.to_be_bytes().to_vec());
    let i2 = |v: i16| Some(v.to_be_bytes().to_vec());
    let oids = [oid::INT4, oid::INT2, oid::INT8];
    let shards = [
        binary_shard(
            &oids,
            &[vec![i4(-300), i2(5), i8(1)], vec![i4(256), i2(-1), i8(2)]],
        ),
        binary_shard(
            &oids,
            &[vec![i4(-1), i2(7), i8(3)], vec![None, None, i8(4)]],
        ),
    ];
    let out = merge_binary(&sorted(vec![SortKey::asc(0)]), &shards, 3);
    let firsts: Vec<Option<Bytes>> = out.iter().map(|r| r[0].clone()).collect();
    let want: Vec<Option<Bytes>> = [i4(-300), i4(-1), i4(256), None]
        .into_iter()
        .map(|v| v.map(Bytes::from))
        .collect();
    assert_eq!(firsts, want);

    // GROUP BY int2 key, count and sum(int8) and min(int4) in binary.
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::new(Agg::Count(1)),
            MergeColumn::new(Agg::Sum(2)),
            MergeColumn::new(Agg::Min(3)),
            MergeColumn::new(Agg::Avg {
                sum_col: 2,
                count_col: 1,
            }),
        ],
        group_by: vec![0],
        order_by: vec![SortKey::desc(0)],
        ..MergePlan::default()
    };
    let oids = [oid::INT2, oid::INT8, oid::INT8, oid::INT4];
    let shards = [
        binary_shard(
            &oids,
            &[
                vec![i2(1), i8(2), i8(10), i4(-4)],
                vec![i2(2), i8(1), i8(5), i4(9)],
            ],
        ),
        binary_shard(&oids, &[vec![i2(1), i8(3), i8(-1), i4(-7)]]),
    ];
    let out = merge_binary(&plan, &shards, 5);
    let mut avg = Vec::new();
    decimal::Numeric::parse("1.8000000000000000")
        .unwrap()
        .to_binary(&mut avg);
    let b = |v: Option<Vec<u8>>| v.map(Bytes::from);
    assert_eq!(
        out[1],
        [b(i2(1)), b(i8(5)), b(i8(9)), b(i4(-7)), b(Some(avg))]
    );
    assert_eq!(out[0][..4], [b(i2(2)), b(i8(1)), b(i8(5)), b(i4(9))]);
}

#[test]
fn streaming_merge_emits_as_soon_as_order_is_known() {
    let desc = wire::test_util::row_desc(INT);
    let mut m = Merger::new(sorted(vec![SortKey::asc(0)]), 2).unwrap();
    let mut out = BytesMut::new();
    m.push(0, desc.clone()).unwrap();
    m.push(0, data_row(&[Some("1")])).unwrap();
    m.push(0, data_row(&[Some("5")])).unwrap();
    m.drain(&mut out).unwrap();
    assert!(out.is_empty(), "shard 1 has not described its columns yet");
    assert_eq!(m.buffered_rows(0), 2);
    m.push(1, desc).unwrap();
    m.push(1, data_row(&[Some("3")])).unwrap();
    m.drain(&mut out).unwrap();
    // T, 1 and 3: shard 0's next row (5) and shard 1's stream order bound what may follow.
    let first = decode(out.split());
    assert_eq!(first.rows, rows(&[&["1"], &["3"]]));
    m.push(1, complete("SELECT 1")).unwrap();
    m.drain(&mut out).unwrap();
    assert_eq!(decode(out.split()).rows, rows(&[&["5"]]));
    assert!(!m.is_finished());
    m.push(0, complete("SELECT 2")).unwrap();
    m.drain(&mut out).unwrap();
    let last = decode(out.split());
    assert_eq!((last.rows.len(), last.tag.as_str()), (0, "SELECT 3"));
    assert!(m.is_finished());
}

#[test]
fn execute_without_row_description() {
    let desc = RowDescription::parse(&wire::test_util::row_desc(&[
        ("v", oid::INT4),
        ("h", oid::INT4),
    ]))
    .unwrap()
    .with_result_formats(&[])
    .unwrap();
    let plan = MergePlan {
        columns: vec![
            MergeColumn::new(Agg::Value(0)),
            MergeColumn::hidden(Agg::Value(1)),
        ],
        order_by: vec![SortKey::asc(1)],
        ..MergePlan::default()
    };
    assert_eq!(plan.output_row_description(&desc).unwrap().fields.len(), 1);
    let mut m = Merger::with_description(plan, 2, &desc).unwrap();
    m.push(0, data_row(&[Some("10"), Some("1")])).unwrap();
    m.push(1, data_row(&[Some("20"), Some("0")])).unwrap();
    m.push(0, complete("SELECT 1")).unwrap();
    m.push(1, complete("SELECT 1")).unwrap();
    let mut out = BytesMut::new();
    m.drain(&mut out).unwrap();
    let mut frames = Vec::new();
    while let Some(f) = split_frame(&mut out, 1 << 20).unwrap() {
        frames.push(f);
    }
    assert_eq!(frames.iter().map(|f| f.tag).collect::<Vec<_>>(), b"DDC");
    assert_eq!(
        parse_data_row(&frames[0].bytes, 1).unwrap()[0].as_deref(),
        Some(&b"20"[..])
    );
}

#[test]
fn malformed_and_mismatched_shards_are_errors() {
    let plan = sorted(vec![SortKey::asc(0)]);
    let bad_value = [selected(INT, &[&["1"]]), selected(INT, &[&["x"]])];
    assert!(matches!(
        merge(&plan, &bad_value),
        Err(MergeError::Malformed { shard: 1, .. })
    ));
    let other_type = [selected(INT, &[]), selected(&[("v", oid::TEXT)], &[])];
    assert!(matches!(
        merge(&plan, &other_type),
        Err(MergeError::Mismatch(_))
    ));
    let mut short = selected(INT, &[]);
    short.data_rows.push(data_row(&[Some("1"), Some("2")]));
    assert!(matches!(
        merge(&MergePlan::concat(), &[short]),
        Err(MergeError::Malformed { .. })
    ));
    let mut m = Merger::new(MergePlan::concat(), 1).unwrap();
    assert!(m.push(0, data_row(&[Some("1")])).is_err());
    assert!(m.push(0, Bytes::from_static(b"Z\0\0\0\x05I")).is_err());
    assert!(m.push(0, Bytes::from_static(b"T\0\0\0\x09")).is_err());
    assert!(m.push(3, complete("SELECT 0")).is_err());
    m.push(0, complete("SELECT 0")).unwrap();
    assert!(m.push(0, complete("SELECT 0")).is_err());
    let rows_and_none = [
        selected(INT, &[&["1"]]),
        ShardResult {
            command_complete: complete("SELECT 0"),
            ..ShardResult::default()
        },
    ];
    assert!(matches!(
        merge(&MergePlan::concat(), &rows_and_none),
        Err(MergeError::Mismatch(_))
    ));
}

#[test]
fn unsupported_queries_report_0a000_with_hint() {
    let e = AggFunc::classify("string_agg", false).unwrap_err();
    let pg = e.to_pg_error();
    assert_eq!(pg.code, "0A000");
    assert!(pg.hint.is_some());
    assert_eq!(MergeError::having().sqlstate(), "0A000");
    assert_eq!(MergeError::order_by_not_selected("b").sqlstate(), "0A000");
    let interval = [selected(&[("i", 1186)], &[&["1 day"]])];
    let e = merge(&sorted(vec![SortKey::asc(0)]), &interval).unwrap_err();
    assert_eq!(e.sqlstate(), "0A000");
    let ts: &[(&str, u32)] = &[("at", oid::TIMESTAMP)];
    let postgres_style = [
        selected(ts, &[&["2024-01-01 10:00:00"]]),
        selected(ts, &[&["Mon Jan 01 10:00:00 2024"]]),
    ];
    let e = merge(&sorted(vec![SortKey::asc(0)]), &postgres_style).unwrap_err();
    assert_eq!(e.to_pg_error().hint.as_deref(), Some("SET DateStyle = ISO"));
}

#[test]
fn limit_reached_tells_the_caller_to_stop_pushing_rows() {
    let plan = MergePlan {
        limit: Some(2),
        ..MergePlan::default()
    };
    let mut m = Merger::new(plan, 2).unwrap();
    let mut out = BytesMut::new();
    for shard in 0..2 {
        m.push(shard, row_desc(INT)).unwrap();
    }
    assert!(!m.limit_reached());
    for v in ["1", "2", "3"] {
        m.push(0, data_row(&[Some(v)])).unwrap();
    }
    m.drain(&mut out).unwrap();
    assert!(m.limit_reached());
    assert_eq!(m.buffered_rows(0), 0);
    m.push(0, complete("SELECT 3")).unwrap();
    m.push(1, data_row(&[Some("4")])).unwrap();
    m.push(1, complete("SELECT 1")).unwrap();
    m.drain(&mut out).unwrap();
    let got = decode(out);
    assert_eq!(
        (got.rows, got.tag.as_str()),
        (rows(&[&["1"], &["2"]]), "SELECT 2")
    );
    assert!(m.is_finished());
}
