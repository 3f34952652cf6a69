//! Fan-out merge: the answers of several shards to one statement, combined into the answer
//! one database would give. Pure: no I/O, no tokio; it takes each shard's raw backend
//! messages (RowDescription, DataRows, CommandComplete) and produces the client's bytes.
//!
//! - [`plan`]: [`MergePlan`] (ORDER BY, LIMIT/OFFSET, GROUP BY and aggregates, DISTINCT,
//!   hidden helper columns), built by the SQL analyzer, and [`AggFunc::classify`], which
//!   decides whether an aggregate can be merged at all.
//! - [`merger`]: [`Merger`], the streaming merge (k-way heap merge for ORDER BY, in-memory
//!   grouping for aggregates); [`merge`] runs it over complete results.
//! - [`wire`]: decoding and encoding of the three messages involved.
//! - `value`, [`decimal`], `datetime`, `float`: typed comparison and exact arithmetic by
//!   type OID, matching Postgres's ordering and text output.
//! - [`error`]: [`MergeError`], with the SQLSTATE for the client (`0A000` + hint for
//!   queries a merge cannot answer).
//!
//! Differences from a single Postgres, by design or not yet handled:
//! - Text compares byte-wise, which is Postgres's `C` collation; shards sorting with another
//!   collation must be asked to sort `COLLATE "C"` (or the query kept on one shard).
//! - Date/time text must be in `DateStyle = ISO` (the default); `bytea` text in
//!   `bytea_output = hex` (the default); otherwise the merge reports an error.
//! - Float sums and float `avg` add the shards' partial sums, so the last bits can differ
//!   from a single server's (floating-point addition is not associative); float text output
//!   assumes `extra_float_digits >= 1` (the default).
//! - `avg` of `real` columns should be sent to the shards as `sum(x::float8)` (Postgres
//!   accumulates `real` in double precision; a `real` sum per shard loses precision).
//! - `bigint` sums are checked for overflow only at the end (Postgres fails on an
//!   intermediate overflow even when the final sum would fit).
#![warn(missing_docs)]

mod aggregate;
pub mod binary;
mod datetime;
pub mod decimal;
pub mod error;
mod float;
pub mod merger;
mod order;
pub mod plan;
mod value;
pub mod wire;

use bytes::{Bytes, BytesMut};

pub use error::MergeError;
pub use merger::Merger;
pub use plan::{Agg, AggFunc, MergeColumn, MergePlan, SortKey};
pub use value::oid;
pub use wire::{answered_in, CommandTag, Field, RowDescription};

/// One shard's complete answer to the statement, as raw messages (tag and length included).
#[derive(Debug, Clone, Default)]
pub struct ShardResult {
    /// The RowDescription ('T'); `None` for statements without rows.
    pub row_description: Option<Bytes>,
    /// The DataRows ('D'), in the shard's order.
    pub data_rows: Vec<Bytes>,
    /// The CommandComplete ('C').
    pub command_complete: Bytes,
}

/// Merges complete shard results into the client's messages: RowDescription (if the
/// statement returns rows), DataRows, CommandComplete.
pub fn merge(plan: &MergePlan, shards: &[ShardResult]) -> Result<BytesMut, MergeError> {
    let mut m = Merger::new(plan.clone(), shards.len())?;
    let mut out = BytesMut::new();
    for (i, s) in shards.iter().enumerate() {
        if let Some(t) = &s.row_description {
            m.push(i, t.clone())?;
        }
        for d in &s.data_rows {
            m.push(i, d.clone())?;
        }
        m.push(i, s.command_complete.clone())?;
        m.drain(&mut out)?;
    }
    m.drain(&mut out)?;
    if !m.is_finished() {
        return Err(MergeError::InvalidPlan("merge did not complete".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
