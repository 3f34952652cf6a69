//! Fan-out merge: the answers of several shards to one statement, combined into the answer
//! one database would give. Pure: no I/O, no tokio; it takes each shard's raw backend
//! messages (RowDescription, DataRows, CommandComplete) and produces the client's bytes.
//!
//! - [`wire`]: decoding and encoding of the three messages involved.
//! - `value`, [`decimal`], `datetime`, `float`: typed comparison and exact arithmetic by
//!   type OID, matching Postgres's ordering and text output.
//! - [`error`]: [`MergeError`], with the SQLSTATE for the client.
#![warn(missing_docs)]

mod datetime;
pub mod decimal;
pub mod error;
mod float;
mod value;
pub mod wire;

pub use error::MergeError;
pub use value::oid;
pub use wire::{CommandTag, Field, RowDescription};
