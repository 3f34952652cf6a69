//! End-to-end merges of hand-built shard results, one file per topic; `mod.rs` holds the
//! builders. Expected outputs of aggregates were produced by PostgreSQL 15 running the same
//! query over the union of the shards' rows.

mod aggregate;
mod order;
mod plan;
mod protocol;

use bytes::BytesMut;

use super::wire::test_util::{complete, data_row};
use super::wire::{parse_data_row, RowDescription};
use super::*;
use crate::protocol::split_frame;

/// `"NULL"` stands for SQL NULL in the test tables.
pub(super) fn cells(row: &[&str]) -> Vec<Option<&'static str>> {
    row.iter()
        .map(|c| (*c != "NULL").then(|| &*String::leak(c.to_string())))
        .collect()
}

pub(super) fn shard(cols: &[(&str, u32)], rows: &[&[&str]], tag: &str) -> ShardResult {
    ShardResult {
        row_description: Some(wire::test_util::row_desc(cols)),
        data_rows: rows.iter().map(|r| data_row(&cells(r))).collect(),
        command_complete: complete(tag),
    }
}

pub(super) fn selected(cols: &[(&str, u32)], rows: &[&[&str]]) -> ShardResult {
    shard(cols, rows, &format!("SELECT {}", rows.len()))
}

/// The client's view of a merged result.
#[derive(Debug, PartialEq)]
pub(super) struct Out {
    pub columns: Vec<(String, u32)>,
    pub rows: Vec<Vec<String>>,
    pub tag: String,
}

pub(super) fn decode(bytes: BytesMut) -> Out {
    let mut buf = bytes;
    let mut out = Out {
        columns: Vec::new(),
        rows: Vec::new(),
        tag: String::new(),
    };
    while let Some(f) = split_frame(&mut buf, 1 << 20).unwrap() {
        match f.tag {
            b'T' => {
                let d = RowDescription::parse(&f.bytes).unwrap();
                out.columns = d.fields.into_iter().map(|f| (f.name, f.type_oid)).collect();
            }
            b'D' => {
                let ncols = u16::from_be_bytes([f.bytes[5], f.bytes[6]]) as usize;
                let values = parse_data_row(&f.bytes, ncols).unwrap();
                out.rows.push(
                    values
                        .into_iter()
                        .map(|v| {
                            v.map_or("NULL".into(), |v| String::from_utf8_lossy(&v).into_owned())
                        })
                        .collect(),
                );
            }
            b'C' => out.tag = CommandTag::parse(&f.bytes).unwrap().text(),
            t => panic!("unexpected message {}", t as char),
        }
    }
    assert!(buf.is_empty());
    out
}

pub(super) fn run(plan: &MergePlan, shards: &[ShardResult]) -> Out {
    decode(merge(plan, shards).unwrap())
}

pub(super) fn rows(r: &[&[&str]]) -> Vec<Vec<String>> {
    r.iter()
        .map(|r| r.iter().map(|c| c.to_string()).collect())
        .collect()
}

pub(super) fn column(out: &Out, i: usize) -> Vec<&str> {
    out.rows.iter().map(|r| r[i].as_str()).collect()
}

pub(super) fn sorted(keys: Vec<SortKey>) -> MergePlan {
    MergePlan {
        order_by: keys,
        ..MergePlan::default()
    }
}

pub(super) const INT: &[(&str, u32)] = &[("v", oid::INT4)];
