//! Sharding by key: canonical key bytes ([`key`]), the consistent-hash ring ([`ring`]) and
//! the DBA tools built on them ([`tools`]). No I/O.
//!
//! A key's shard is `Ring::new(db).shard_for(ShardKey::from_text(type, value)?.canonical()
//! .as_bytes())`; see [`ring`] for the hash specification that golden tests pin.

pub mod copy;
pub mod key;
pub mod maintenance;
pub mod recovery;
pub mod ring;
pub mod route;
pub mod tools;

pub use key::{Canonical, KeyError, ShardKey};
pub use ring::Ring;
