//! Sharding by key: canonical key bytes ([`key`]) and the consistent-hash ring ([`ring`]).
//! No I/O.
//!
//! A key's shard is `Ring::new(db).shard_for(ShardKey::from_text(type, value)?.canonical()
//! .as_bytes())`; see [`ring`] for the hash specification that golden tests pin.

pub mod key;
pub mod ring;

pub use key::{Canonical, KeyError, ShardKey};
pub use ring::Ring;
