//! A bounded cache of statement analyses keyed by statement shape: the hot path is one shape
//! scan and one hash lookup; `sqlparser` runs only for a shape not seen recently.
//!
//! The key is the full shape text, not a hash of it, so two shapes never share an entry. The
//! cache is split into shards (each an LRU behind a `std::sync::Mutex` held only for the
//! lookup or the insert, never while parsing) chosen by a hash of the shape. The hasher is
//! `lru`'s default (foldhash, randomly seeded per process); nothing hashed here is persisted.
//! Two threads missing on the same shape at once both parse it; the second insert wins, with
//! an identical value.

use std::hash::BuildHasher;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::{DefaultHasher, LruCache};

use super::analyze::{classify_shaped, Analysis};
use super::shape::{shape, Literal};
use crate::admin::queries::{QueryStats, ShapeStats};

/// Shapes longer than this many bytes (bulk `INSERT ... VALUES` lists, huge `IN` lists) are
/// analysed every time instead of cached, so the cache's memory stays below about
/// `capacity * MAX_CACHED_SHAPE_LEN` bytes.
pub const MAX_CACHED_SHAPE_LEN: usize = 16 * 1024;

/// Shard count for caches of at least [`SHARD_THRESHOLD`] entries.
const SHARDS: usize = 16;
/// Below this capacity the cache has one shard, so eviction is exact LRU.
const SHARD_THRESHOLD: usize = 1024;

/// Statement analyses cached by shape; shared by all sessions (`Sync`).
#[derive(Debug)]
pub struct AnalysisCache {
    shards: Vec<Mutex<LruCache<String, Arc<Analysis>>>>,
    hasher: DefaultHasher,
    write_functions: Vec<String>,
    capacity: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl AnalysisCache {
    /// A cache holding at most `capacity` shapes (at least 1), classifying with the
    /// configured extra `write_functions` (see [`classify`]). A change of that list needs a
    /// new cache. Capacities of 1024 and more are split over 16 shards, each
    /// evicting its least recently used entry on its own.
    pub fn new(capacity: usize, write_functions: Vec<String>) -> Self {
        let capacity = capacity.max(1);
        let shards = if capacity >= SHARD_THRESHOLD {
            SHARDS
        } else {
            1
        };
        let per_shard = NonZeroUsize::new(capacity.div_ceil(shards)).unwrap_or(NonZeroUsize::MIN);
        AnalysisCache {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: DefaultHasher::default(),
            write_functions,
            capacity,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// Analyses `sql`: computes its shape, returns the cached [`Analysis`] of that shape or
    /// parses `sql` and caches the result. The literals are this statement's own values, in
    /// order (for shard keys).
    pub fn analyze(&self, sql: &str) -> (Arc<Analysis>, Vec<Literal>) {
        let (analysis, literals, _) = self.analyze_noting(sql, None);
        (analysis, literals)
    }

    /// [`Self::analyze`], also finding the shape's statistics in `queries` (from the same
    /// shape scan).
    pub fn analyze_noting(
        &self,
        sql: &str,
        queries: Option<&QueryStats>,
    ) -> (Arc<Analysis>, Vec<Literal>, Option<Arc<ShapeStats>>) {
        let shaped = shape(sql);
        let stats = queries.and_then(|q| q.of_shape(&shaped.text));
        if shaped.text.len() > MAX_CACHED_SHAPE_LEN {
            self.misses.fetch_add(1, Ordering::Relaxed);
            let analysis = classify_shaped(sql, &shaped, &self.write_functions);
            return (Arc::new(analysis), shaped.literals, stats);
        }
        let shard = &self.shards[self.shard_of(&shaped.text)];
        if let Some(hit) = lock(shard).get(shaped.text.as_str()) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return (Arc::clone(hit), shaped.literals, stats);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let analysis = Arc::new(classify_shaped(sql, &shaped, &self.write_functions));
        lock(shard).put(shaped.text, Arc::clone(&analysis));
        (analysis, shaped.literals, stats)
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Lookups that had to parse (including shapes too long to cache).
    pub fn misses(&self) -> u64 {
        self.misses.load(Ordering::Relaxed)
    }

    /// Shapes currently cached.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no shape is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The configured capacity (at least 1).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn shard_of(&self, key: &str) -> usize {
        if self.shards.len() == 1 {
            return 0;
        }
        (self.hasher.hash_one(key) as usize) % self.shards.len()
    }
}

/// Locks a shard, ignoring poisoning: the guarded sections are single LRU calls, and a stale
/// entry costs at most a re-parse.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
