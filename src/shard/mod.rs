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

/// Index of a shard in the shard map's `shards` list.
pub type ShardId = usize;

/// A map of two shards `s0` and `s1` with no tables, for unit tests that route keys.
#[cfg(test)]
pub(crate) fn two_shard_map() -> route::ShardMap {
    let c = crate::config::Config::parse(
        r#"
[[users]]
name = "u"
password = "p"
[[databases]]
name = "d"
[[databases.shards]]
name = "s0"
primary = "127.0.0.1:1"
[[databases.shards]]
name = "s1"
primary = "127.0.0.1:2"
"#,
        "test",
    )
    .expect("config");
    route::ShardMap::new(&c.databases[0]).expect("shard map")
}
