//! Per-query-shape statistics for `SHOW QUERIES` and `/metrics`: each statement's shape (its
//! text with literals and parameters masked and comments dropped, as the analysis cache
//! computes it, so a sqlcommenter `traceparent` makes no new shape) gets calls, errors, rows,
//! total time, a fine duration histogram (for p50 and p99), the shards it ran on, and how
//! many calls ran on a replica.
//!
//! Bounded: at most `proxy.query_stats_size` shapes are kept (the first ones seen; later new
//! shapes are counted in [`QueryStats::dropped`]), each with at most [`MAX_SHAPE_TEXT`] bytes
//! of text and a fixed-size histogram.
//!
//! A session notes the shapes of the request it is answering in a [`Pending`] list (one entry
//! per run of Executes of one shape, so a long pipeline costs one entry) and records them
//! when the client gets its ReadyForQuery, with the request's duration and what the server
//! answered (rows from each CommandComplete, the first error).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest `proxy.query_stats_size` (about 3 KiB per shape at most: its text and histogram).
pub const MAX_QUERY_STATS_SIZE: usize = 100_000;

/// Most bytes of a shape's text kept.
pub const MAX_SHAPE_TEXT: usize = 2000;

/// Locks the map is split over (fewer sessions wait on one).
const SHARDS: usize = 16;

/// Histogram buckets: one per microsecond below 8, then four per power of two (each bound
/// at most 25% above the last), up to about 2 hours; the last takes the rest.
const BUCKETS: usize = 128;

/// The bucket of `us` microseconds.
fn bucket_of(us: u64) -> usize {
    if us < 8 {
        return us as usize;
    }
    let msb = (63 - us.leading_zeros()) as usize;
    let frac = ((us >> (msb - 2)) & 3) as usize;
    (msb * 4 + frac - 4).min(BUCKETS - 1)
}

/// The largest duration (µs) bucket `i` holds (None: the last, unbounded).
fn upper_bound(i: usize) -> Option<u64> {
    if i + 1 >= BUCKETS {
        return None;
    }
    if i < 8 {
        return Some(i as u64);
    }
    let (msb, frac) = ((i + 4) / 4, (i + 4) % 4);
    Some(((4 + frac as u64 + 1) << (msb - 2)) - 1)
}

/// `text` cut at [`MAX_SHAPE_TEXT`] bytes (on a character boundary).
pub fn cut(text: &str) -> &str {
    let mut end = text.len().min(MAX_SHAPE_TEXT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The statistics of one shape.
#[derive(Debug)]
pub struct ShapeStats {
    /// The shape's text (cut at [`MAX_SHAPE_TEXT`] bytes).
    pub text: Box<str>,
    /// A stable identifier of the shape (a hash of its whole text) for metrics labels.
    pub id: u64,
    calls: AtomicU64,
    errors: AtomicU64,
    rows: AtomicU64,
    total_us: AtomicU64,
    /// Shards beyond one per call (0 for calls on one server: nothing to add then).
    extra_shards: AtomicU64,
    on_replica: AtomicU64,
    max_us: AtomicU64,
    /// When its plan was last fetched for the slow-query log (`health::now_ms`; 0: never).
    explained_ms: AtomicU64,
    hist: [AtomicU64; BUCKETS],
}

/// Shapes are the same when their identifiers are.
impl PartialEq for ShapeStats {
    fn eq(&self, other: &ShapeStats) -> bool {
        self.id == other.id
    }
}

impl Eq for ShapeStats {}

/// What `SHOW QUERIES` shows of a shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeRow {
    pub text: String,
    pub id: u64,
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    pub total_us: u64,
    /// Shards the calls ran on, summed (a call on one server counts 1, a fan-out its shards).
    pub shards: u64,
    pub on_replica: u64,
    /// The longest call (µs).
    pub max_us: u64,
    /// The largest duration in the buckets holding the median and the 99th percentile, at
    /// most the longest call (µs; at most 25% above the true value; `None`: no calls).
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// One request's part for a shape: what [`ShapeStats::record`] adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub calls: u64,
    pub errors: u64,
    pub rows: u64,
    /// Time of each call (µs).
    pub each_us: u64,
    pub shards: u64,
    pub on_replica: bool,
}

impl ShapeStats {
    fn new(text: &str, id: u64) -> ShapeStats {
        ShapeStats {
            text: cut(text).into(),
            id,
            calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            total_us: AtomicU64::new(0),
            extra_shards: AtomicU64::new(0),
            on_replica: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
            explained_ms: AtomicU64::new(0),
            hist: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Adds calls of this shape.
    pub fn record(&self, c: Calls) {
        let add = |a: &AtomicU64, n: u64| {
            if n > 0 {
                a.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&self.calls, c.calls);
        add(&self.errors, c.errors);
        add(&self.rows, c.rows);
        add(&self.total_us, c.each_us.saturating_mul(c.calls));
        add(&self.extra_shards, c.shards.saturating_sub(c.calls));
        add(&self.hist[bucket_of(c.each_us)], c.calls);
        if c.calls > 0 {
            // A load first: a new longest call is rare.
            if c.each_us > self.max_us.load(Ordering::Relaxed) {
                self.max_us.fetch_max(c.each_us, Ordering::Relaxed);
            }
        }
        if c.on_replica {
            add(&self.on_replica, c.calls);
        }
    }

    /// Whether its plan may be fetched at `now_ms` (at most once per `interval_ms`); if so,
    /// the fetch is counted as done now.
    pub fn explain_due(&self, now_ms: u64, interval_ms: u64) -> bool {
        let last = self.explained_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < interval_ms {
            return false;
        }
        let now = now_ms.max(1);
        (self.explained_ms)
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// What it counted so far.
    pub fn row(&self) -> ShapeRow {
        let hist: Vec<u64> = self
            .hist
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect();
        let count: u64 = hist.iter().sum();
        let quantile = |q: f64| {
            let want = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in hist.iter().enumerate() {
                seen += n;
                if seen >= want {
                    return upper_bound(i);
                }
            }
            None
        };
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let max_us = l(&self.max_us);
        // A bucket's bound may be above the longest call: the quantile is at most that.
        let quantile = |q| match count {
            0 => None,
            _ => Some(quantile(q).map_or(max_us, |b| b.min(max_us))),
        };
        ShapeRow {
            text: self.text.to_string(),
            id: self.id,
            calls: l(&self.calls),
            errors: l(&self.errors),
            rows: l(&self.rows),
            total_us: l(&self.total_us),
            shards: l(&self.calls) + l(&self.extra_shards),
            on_replica: l(&self.on_replica),
            max_us,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
        }
    }
}

/// Shapes by identifier (already a hash: foldhash's mixing, not SipHash, is enough).
type ShapeMap = HashMap<u64, Arc<ShapeStats>, foldhash::fast::FixedState>;

/// The shapes seen, bounded.
#[derive(Debug)]
pub struct QueryStats {
    shards: Vec<Mutex<ShapeMap>>,
    hasher: foldhash::fast::FixedState,
    per_shard: usize,
    dropped: AtomicU64,
}

impl QueryStats {
    /// At most `capacity` shapes (0: none tracked).
    pub fn new(capacity: usize) -> QueryStats {
        QueryStats {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::with_seed(0x5348_4152_4447_4154),
            per_shard: capacity.div_ceil(SHARDS),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether shapes are tracked at all.
    pub fn enabled(&self) -> bool {
        self.per_shard > 0
    }

    /// The statistics of `sql`'s shape (computed here, into a buffer of the thread's), if
    /// it is tracked.
    pub fn of(&self, sql: &str) -> Option<Arc<ShapeStats>> {
        if !self.enabled() {
            return None;
        }
        thread_local! {
            static TEXT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        TEXT.with(|t| {
            let mut text = t.take();
            crate::sql::shape_text_into(sql, &mut text);
            let found = self.of_shape(&text);
            if text.capacity() <= 4 * MAX_SHAPE_TEXT {
                t.replace(text);
            }
            found
        })
    }

    /// The statistics of a shape text, if it is tracked (a new one while there is room).
    pub fn of_shape(&self, text: &str) -> Option<Arc<ShapeStats>> {
        if !self.enabled() {
            return None;
        }
        let id = self.hasher.hash_one(text);
        let shard = &self.shards[(id as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get(&id) {
            return Some(s.clone());
        }
        if map.len() >= self.per_shard {
            drop(map);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let s = Arc::new(ShapeStats::new(text, id));
        map.insert(id, s.clone());
        Some(s)
    }

    /// The `n` shapes with the most total time, most first (then by text).
    pub fn top(&self, n: usize) -> Vec<ShapeRow> {
        let mut rows: Vec<ShapeRow> = self
            .shards
            .iter()
            .flat_map(|s| {
                let map = s.lock().unwrap_or_else(|p| p.into_inner());
                map.values().map(|v| v.row()).collect::<Vec<_>>()
            })
            .collect();
        rows.sort_by(|a, b| b.total_us.cmp(&a.total_us).then(a.text.cmp(&b.text)));
        rows.truncate(n);
        rows
    }

    /// Shapes kept.
    pub fn len(&self) -> usize {
        let n = |s: &Mutex<ShapeMap>| s.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.shards.iter().map(n).sum()
    }

    /// Whether no shape is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// New shapes that found no room.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The shapes of a client's prepared statements the proxy does not pool: the unnamed one,
/// and the named ones in session mode (at most [`MAX_NAMED_SHAPES`]; later ones are not
/// counted).
#[derive(Debug, Default)]
pub struct StatementShapes {
    pub unnamed: Option<Arc<ShapeStats>>,
    /// The text the unnamed statement was last parsed from (drivers parse the same text
    /// again and again: its shape is not looked for again).
    pub unnamed_text: String,
    pub named: HashMap<Box<str>, Arc<ShapeStats>>,
}

/// Most named statements of a session-mode client whose shapes are kept.
pub const MAX_NAMED_SHAPES: usize = 1000;

#[path = "queries_pending.rs"]
mod pending;
pub use pending::{Answered, Pending};

/// Most shapes `SHOW QUERIES` lists.
const SHOWN: usize = 1000;

/// `SHOW QUERIES`: the shapes with the most total time first (at most 1,000): an id (the one
/// `/metrics` labels), the shape's text, calls, errors, rows, total / mean / p50 / p99 time in
/// microseconds and the longest call, shards touched (summed over calls), and calls on replicas and on primaries.
pub fn table(stats: &QueryStats) -> crate::admin::table::Table {
    use crate::admin::table::{v, Table, INT8, TEXT};
    let mut t = Table::new(&[
        ("query_id", TEXT),
        ("query", TEXT),
        ("calls", INT8),
        ("errors", INT8),
        ("rows", INT8),
        ("total_us", INT8),
        ("mean_us", INT8),
        ("p50_us", INT8),
        ("p99_us", INT8),
        ("max_us", INT8),
        ("shards", INT8),
        ("on_replica", INT8),
        ("on_primary", INT8),
    ]);
    // A shape prepared but never run yet is not shown.
    for r in stats.top(SHOWN).into_iter().filter(|r| r.calls > 0) {
        t.row(vec![
            v(format!("{:016x}", r.id)),
            v(&r.text),
            v(r.calls),
            v(r.errors),
            v(r.rows),
            v(r.total_us),
            v(r.total_us / r.calls.max(1)),
            r.p50_us.map(v).unwrap_or_default(),
            r.p99_us.map(v).unwrap_or_default(),
            v(r.max_us),
            v(r.shards),
            v(r.on_replica),
            v(r.calls - r.on_replica.min(r.calls)),
        ]);
    }
    t
}

#[cfg(test)]
#[path = "queries_tests.rs"]
mod tests;
