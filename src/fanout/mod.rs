//! Fan-out merge: the answers of several shards to one statement, combined into the answer
//! one database would give. Pure: no I/O, no tokio; it takes each shard's raw backend
//! messages (RowDescription, DataRows, CommandComplete) and produces the client's bytes.
//!
//! - [`wire`]: decoding and encoding of the three messages involved.
//! - [`error`]: [`MergeError`], with the SQLSTATE for the client.
#![warn(missing_docs)]

pub mod error;
pub mod wire;

pub use error::MergeError;
pub use wire::{CommandTag, Field, RowDescription};
