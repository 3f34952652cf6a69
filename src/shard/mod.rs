//! Sharding by key: canonical key bytes ([`key`]). No I/O.

pub mod key;

pub use key::{Canonical, KeyError, ShardKey};
