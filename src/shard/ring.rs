//! The consistent-hash ring: canonical key bytes -> shard.
//!
//! # The algorithm (fixed forever: changing it moves the rows of every deployed cluster)
//!
//! - `hash64(bytes)` is SipHash-2-4 (Aumasson & Bernstein, 2012, the reference `siphash.c`)
//!   with the 128-bit key of sixteen zero bytes, its 8-byte output read little-endian as a u64.
//! - Each shard `name` with `weight` gets `weight x virtual_nodes` points on a ring of u64s:
//!   point `i` (from 0) is `hash64(name as UTF-8 || 0xFF || i as 8 bytes big-endian)`. 0xFF
//!   never occurs in UTF-8, so a (name, i) pair has exactly one encoding. Raising a weight only
//!   adds points, so it only moves keys *to* that shard.
//! - A key belongs to the shard of the first point at or after `hash64(canonical key bytes)`,
//!   wrapping around past `u64::MAX`; points with equal values are ordered by shard name.
//!
//! The ring depends only on shard names, weights, `virtual_nodes` and the key, never on the
//! order of shards in the file, the process or the Rust version. Lookups go through
//! `consistent_hash::StaticHashRing` with [`StableHash`] as its `RingHash`;
//! [`Ring::points`] lists the same points for tools that reason about whole arcs, and a test
//! checks that the two agree.

use crate::config::DatabaseConfig;
use crate::shard::ShardId;
use consistent_hash::{Node, RingHash, StaticHashRing};
use siphasher::sip::SipHasher24;
use std::fmt;
use std::hash::{Hash, Hasher};

/// SipHash-2-4 with an all-zero key over `bytes`: the ring's hash function.
pub fn hash64(bytes: &[u8]) -> u64 {
    SipHasher24::new_with_keys(0, 0).hash(bytes)
}

/// The ring position of virtual node `index` of shard `name`.
pub fn vnode_point(name: &str, index: u64) -> u64 {
    let mut h = SipHasher24::new_with_keys(0, 0);
    h.write(name.as_bytes());
    h.write(&[0xff]);
    h.write(&index.to_be_bytes());
    h.finish()
}

/// Bytes fed to the hasher exactly as they are: `Hash` for `[u8]` would add a length prefix
/// whose encoding depends on the platform.
#[derive(Debug, Clone, Copy)]
struct RawBytes<'a>(&'a [u8]);

impl Hash for RawBytes<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0);
    }
}

/// A shard name as a ring node key; hashes as its UTF-8 bytes only (`Hash` for `str` would
/// append a 0xFF byte by a convention of std's, not by our specification).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct NodeName(String);

impl Hash for NodeName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// The ring's `RingHash`: [`hash64`] for items, [`vnode_point`] for virtual nodes. Items and
/// node keys must hash by a single `Hasher::write` of their bytes (as `RawBytes` and
/// `NodeName` do); other `Hash` impls would feed platform-dependent encodings.
#[derive(Debug, Clone, Copy, Default)]
pub struct StableHash;

impl RingHash for StableHash {
    fn hash_item<T: Hash>(&self, item: &T) -> u64 {
        let mut h = SipHasher24::new_with_keys(0, 0);
        item.hash(&mut h);
        h.finish()
    }

    fn hash_vnode<K: Hash>(&self, node_key: &K, vnode_seq: usize) -> u64 {
        let mut h = SipHasher24::new_with_keys(0, 0);
        node_key.hash(&mut h);
        h.write(&[0xff]);
        h.write(&(vnode_seq as u64).to_be_bytes());
        h.finish()
    }
}

/// One point of the ring: its position and the shard (index into `DatabaseConfig::shards`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Point {
    /// Position on the ring.
    pub at: u64,
    /// Index of the owning shard in `DatabaseConfig::shards`.
    pub shard: ShardId,
}

/// The hash ring of one database: maps canonical key bytes to a shard. Built once per config
/// (re)load and shared read-only.
pub struct Ring {
    /// Node values are indexes into `names`. The `'static` is the crate's way of saying "into
    /// its own node list", which it owns and never moves.
    ring: StaticHashRing<'static, NodeName, ShardId, StableHash>,
    /// Shard names in config order.
    names: Vec<String>,
    /// Points per shard (weight x virtual_nodes), in config order; 0 for a repeated name.
    quantities: Vec<u64>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("shards", &self.names)
            .field("points", &self.ring.len())
            .finish()
    }
}

impl Ring {
    /// Builds the ring of a database from its shard names, weights and `virtual_nodes`.
    ///
    /// `Config::validate` guarantees at least one shard, unique names and non-zero weights.
    /// Should a database have no shards anyway, every key maps to index 0 and the name `""`;
    /// of repeated names the first one counts (as in the crate).
    pub fn new(db: &DatabaseConfig) -> Ring {
        let mut quantities = Vec::with_capacity(db.shards.len());
        let mut nodes = Vec::with_capacity(db.shards.len());
        for (i, shard) in db.shards.iter().enumerate() {
            let repeated = db.shards[..i].iter().any(|s| s.name == shard.name);
            let quantity = if repeated {
                0
            } else {
                u64::from(shard.weight) * u64::from(db.virtual_nodes)
            };
            quantities.push(quantity);
            if !repeated {
                let count = usize::try_from(quantity).unwrap_or(usize::MAX);
                nodes.push(
                    Node::new(NodeName(shard.name.clone()))
                        .value(ShardId::new(i))
                        .quantity(count),
                );
            }
        }
        Ring {
            ring: StaticHashRing::new(StableHash, nodes.into_iter()),
            names: db.shards.iter().map(|s| s.name.clone()).collect(),
            quantities,
        }
    }

    /// The shard (index into `DatabaseConfig::shards`) that owns a key's canonical bytes.
    #[inline]
    pub fn shard_for(&self, key_bytes: &[u8]) -> ShardId {
        self.ring
            .calc_candidates(&RawBytes(key_bytes))
            .next()
            .map_or(ShardId::new(0), |node| node.value)
    }

    /// The name of the shard that owns a key's canonical bytes.
    pub fn shard_name_for(&self, key_bytes: &[u8]) -> &str {
        self.names
            .get(self.shard_for(key_bytes).index())
            .map_or("", String::as_str)
    }

    /// Shard names, in config order (the indexes [`Ring::shard_for`] returns).
    pub fn shard_names(&self) -> &[String] {
        &self.names
    }

    /// Every point of the ring in clockwise order (by position, then shard name), computed
    /// from the specification above. A key hashing to `h` belongs to the first point with
    /// `at >= h`, or to the first point if there is none.
    pub fn points(&self) -> Vec<Point> {
        let mut points: Vec<Point> = self
            .quantities
            .iter()
            .enumerate()
            .flat_map(|(index, &quantity)| {
                let name = &self.names[index];
                let shard = ShardId::new(index);
                (0..quantity).map(move |i| Point {
                    at: vnode_point(name, i),
                    shard,
                })
            })
            .collect();
        points.sort_by(|a, b| {
            (a.at, &self.names[a.shard.index()]).cmp(&(b.at, &self.names[b.shard.index()]))
        });
        points
    }
}

#[cfg(test)]
mod tests;
