//! Fan-out merge: the answers of several shards to one statement, combined into the answer
//! one database would give. Pure: no I/O, no tokio; it takes each shard's raw backend
//! messages (RowDescription, DataRows, CommandComplete) and produces the client's bytes.
//!
//! - [`plan`]: [`MergePlan`] (ORDER BY, LIMIT/OFFSET, GROUP BY and aggregates, DISTINCT,
//!   hidden helper columns), built by the SQL analyzer, and [`AggFunc::classify`], which
//!   decides whether an aggregate can be merged at all.
//! - [`wire`]: decoding and encoding of the three messages involved.
//! - `value`, [`decimal`], `datetime`, `float`: typed comparison and exact arithmetic by
//!   type OID, matching Postgres's ordering and text output.
//! - [`error`]: [`MergeError`], with the SQLSTATE for the client.
#![warn(missing_docs)]

mod datetime;
pub mod decimal;
pub mod error;
mod float;
pub mod plan;
mod value;
pub mod wire;

pub use error::MergeError;
pub use plan::{Agg, AggFunc, MergeColumn, MergePlan, SortKey};
pub use value::oid;
pub use wire::{CommandTag, Field, RowDescription};

#[cfg(test)]
mod tests;
