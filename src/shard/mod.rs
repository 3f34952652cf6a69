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

/// The index of a shard in a database's shard list (its position in `shard-config`).
///
/// A newtype rather than a `usize` so that a position among one statement's connections
/// cannot pass for a shard. `Display` prints the bare number, as the `usize` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(usize);

impl ShardId {
    /// The shard at `index` in the shard list.
    pub const fn new(index: usize) -> ShardId {
        ShardId(index)
    }

    /// Its position in the shard list.
    pub const fn index(self) -> usize {
        self.0
    }
}

impl std::fmt::Display for ShardId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

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

#[cfg(test)]
mod shard_id_tests {
    use super::ShardId;

    #[test]
    fn a_shard_id_prints_as_its_index() {
        for i in [0usize, 7, 63, usize::MAX] {
            let s = ShardId::new(i);
            assert_eq!(s.index(), i);
            assert_eq!(s.to_string(), i.to_string());
            assert_eq!(format!("[{s:>4}|{s:<4}]"), format!("[{i:>4}|{i:<4}]"));
        }
        assert!(ShardId::new(1) < ShardId::new(2));
        assert_eq!(ShardId::default(), ShardId::new(0));
    }
}
