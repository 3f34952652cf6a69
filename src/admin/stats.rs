//! Per-database traffic counters for `SHOW STATS`, `SHOW STATS_TOTALS` and
//! `SHOW STATS_AVERAGES`, with PgBouncer's meanings: transactions and queries (each
//! ReadyForQuery a client gets ends a query; one with status idle ends a transaction), bytes
//! from and to clients, and the time from a client's request to its answer (query time) and
//! from the first request of a transaction to its end (transaction time), in microseconds.
//! Wait time (for a server connection) is counted by the pools.
//!
//! A session counts into its own [`Meter`] and adds it to the shared [`DbStats`] at the end
//! of each transaction (a few atomic additions per transaction, not per message).
//! [`DbStats::roll`] turns the totals into the averages of the last period.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (µs) of the query and transaction duration histograms' buckets; the last
/// takes the rest.
pub const BUCKETS_US: [u64; 15] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    5_000_000,
    u64::MAX,
];

/// Counts per bucket of [`BUCKETS_US`].
pub type Buckets = [u64; BUCKETS_US.len()];

/// The bucket of a duration of `us` microseconds.
pub fn bucket(us: u64) -> usize {
    BUCKETS_US
        .iter()
        .position(|b| us <= *b)
        .unwrap_or(BUCKETS_US.len() - 1)
}
use std::sync::Mutex;
use std::time::Instant;

/// One database's counters (see the module documentation).
#[derive(Debug, Default)]
pub struct DbStats {
    xacts: AtomicU64,
    queries: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    xact_us: AtomicU64,
    query_us: AtomicU64,
    query_hist: [AtomicU64; BUCKETS_US.len()],
    xact_hist: [AtomicU64; BUCKETS_US.len()],
    /// The totals and the time at the last roll, and the averages it computed.
    period: Mutex<Period>,
}

#[derive(Debug, Default)]
struct Period {
    at: Option<Instant>,
    last: Totals,
    averages: Totals,
}

/// Counter values: totals, or averages (counts and bytes per second; times per transaction
/// or per query, wait per transaction).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

impl DbStats {
    /// The totals so far; `wait_us` is the pools' (passed in).
    pub fn totals(&self, wait_us: u64) -> Totals {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Totals {
            xacts: l(&self.xacts),
            queries: l(&self.queries),
            received: l(&self.received),
            sent: l(&self.sent),
            xact_us: l(&self.xact_us),
            query_us: l(&self.query_us),
            wait_us,
        }
    }

    /// The query and transaction duration histograms: counts per bucket.
    pub fn histograms(&self) -> (Buckets, Buckets) {
        let l = |h: &[AtomicU64; BUCKETS_US.len()]| h.each_ref().map(|a| a.load(Ordering::Relaxed));
        (l(&self.query_hist), l(&self.xact_hist))
    }

    /// The averages of the last period.
    pub fn averages(&self) -> Totals {
        lock(&self.period).averages
    }

    /// Ends a period at `now` with `totals`: the averages are over it (none for the first).
    pub fn roll(&self, now: Instant, totals: Totals) {
        let mut p = lock(&self.period);
        if let Some(at) = p.at {
            p.averages = averages(
                &p.last,
                &totals,
                now.saturating_duration_since(at).as_secs_f64(),
            );
        }
        p.at = Some(now);
        p.last = totals;
    }

    /// Adds a session's counts and clears them.
    pub fn add(&self, m: &mut Meter) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v > 0 {
                a.fetch_add(std::mem::take(v), Ordering::Relaxed);
            }
        };
        let c = &mut m.counts;
        add(&self.xacts, &mut c.xacts);
        add(&self.queries, &mut c.queries);
        add(&self.received, &mut c.received);
        add(&self.sent, &mut c.sent);
        add(&self.xact_us, &mut c.xact_us);
        add(&self.query_us, &mut c.query_us);
        for (a, v) in self.query_hist.iter().zip(m.query_hist.iter_mut()) {
            add(a, v);
        }
        for (a, v) in self.xact_hist.iter().zip(m.xact_hist.iter_mut()) {
            add(a, v);
        }
    }
}

/// The averages between two totals `secs` seconds apart.
pub fn averages(before: &Totals, after: &Totals, secs: f64) -> Totals {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let per_second = |a, b| {
        if secs > 0.0 {
            (d(a, b) as f64 / secs).round() as u64
        } else {
            0
        }
    };
    let per = |a, b, n: u64| d(a, b).checked_div(n).unwrap_or(0);
    let xacts = d(before.xacts, after.xacts);
    let queries = d(before.queries, after.queries);
    Totals {
        xacts: per_second(before.xacts, after.xacts),
        queries: per_second(before.queries, after.queries),
        received: per_second(before.received, after.received),
        sent: per_second(before.sent, after.sent),
        xact_us: per(before.xact_us, after.xact_us, xacts),
        query_us: per(before.query_us, after.query_us, queries),
        wait_us: per(before.wait_us, after.wait_us, xacts),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A session's counts since it last added them to its database's [`DbStats`].
#[derive(Debug, Default)]
pub struct Meter {
    /// The counts (`wait_us` is the pools', not counted here).
    pub counts: Totals,
    /// Query and transaction durations by bucket.
    pub query_hist: Buckets,
    pub xact_hist: Buckets,
    /// When the request being answered began (the first client message after the last
    /// answer).
    request: Option<Instant>,
    /// When the transaction being answered began.
    xact: Option<Instant>,
    /// The shapes of the requests being answered (`SHOW QUERIES`).
    pub pending: super::queries::Pending,
    /// The shape of the simple Query being routed, when routing looked it up (None: not
    /// looked up).
    pub query_shape: Option<Option<std::sync::Arc<super::queries::ShapeStats>>>,
    /// The portal last bound (its name) and its statement's shape.
    pub portal: Option<(Box<str>, std::sync::Arc<super::queries::ShapeStats>)>,
}

impl Meter {
    /// A client request (Query, Sync, FunctionCall) is taken at `now`; the first since the
    /// last answer starts the query (and maybe the transaction).
    pub fn request(&mut self, now: impl FnOnce() -> Instant) {
        if self.request.is_none() {
            let t = now();
            self.request = Some(t);
            self.xact.get_or_insert(t);
        }
    }

    /// The client got a ReadyForQuery at `now`: a query ended, and a transaction when
    /// `idle`. Returns the query's time (µs) and whether a transaction ended (time to add
    /// the counts).
    pub fn answered(&mut self, idle: bool, now: Instant) -> (u64, bool) {
        let since = |t: Option<Instant>| {
            t.map_or(0, |t| now.saturating_duration_since(t).as_micros() as u64)
        };
        let c = &mut self.counts;
        c.queries += 1;
        let us = since(self.request.take());
        if self.pending.owed() > 1 {
            // A pipeline: the next request's answer begins now.
            self.request = Some(now);
        }
        c.query_us += us;
        self.query_hist[bucket(us)] += 1;
        if !idle {
            return (us, false);
        }
        let query_us = us;
        c.xacts += 1;
        let us = since(self.xact.take());
        c.xact_us += us;
        self.xact_hist[bucket(us)] += 1;
        (query_us, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_transaction_of_two_queries_is_counted_with_its_times() {
        let t0 = Instant::now();
        let mut m = Meter::default();
        m.request(|| t0);
        m.request(|| t0 + Duration::from_secs(9));
        assert_eq!(
            m.answered(false, t0 + Duration::from_micros(100)),
            (100, false)
        );
        m.request(|| t0 + Duration::from_micros(300));
        assert_eq!(
            m.answered(true, t0 + Duration::from_micros(400)),
            (100, true)
        );
        assert_eq!((m.counts.queries, m.counts.xacts), (2, 1));
        assert_eq!((m.counts.query_us, m.counts.xact_us), (200, 400));
        // 100 µs and 100 µs: the first bucket (≤ 100 µs); the transaction's 400 µs: ≤ 500.
        assert_eq!(m.query_hist[0], 2);
        assert_eq!(m.xact_hist[bucket(400)], 1);
        assert_eq!(bucket(400), 2);
        assert_eq!(bucket(u64::MAX), BUCKETS_US.len() - 1);
        // An answer with no request (a proxy's own) counts a query of no time.
        assert_eq!(m.answered(true, t0), (0, true));
        assert_eq!(
            (m.counts.queries, m.counts.xacts, m.counts.xact_us),
            (3, 2, 400)
        );
        let s = DbStats::default();
        m.counts.received = 10;
        s.add(&mut m);
        assert_eq!(m.counts.queries, 0, "added counts are cleared");
        assert_eq!(m.query_hist.iter().sum::<u64>(), 0);
        assert_eq!(s.histograms().0.iter().sum::<u64>(), 3);
        let t = s.totals(7);
        assert_eq!((t.queries, t.xacts, t.received, t.wait_us), (3, 2, 10, 7));
    }

    #[test]
    fn averages_are_rates_per_second_and_times_per_transaction_or_query() {
        let before = Totals::default();
        let after = Totals {
            xacts: 20,
            queries: 40,
            received: 1000,
            sent: 3000,
            xact_us: 2000,
            query_us: 1200,
            wait_us: 400,
        };
        let a = averages(&before, &after, 2.0);
        assert_eq!(
            (a.xacts, a.queries, a.received, a.sent),
            (10, 20, 500, 1500)
        );
        assert_eq!((a.xact_us, a.query_us, a.wait_us), (100, 30, 20));
        assert_eq!(averages(&after, &after, 2.0), Totals::default());
        assert_eq!(averages(&before, &after, 0.0).xacts, 0);
        let s = DbStats::default();
        let t0 = Instant::now();
        s.roll(t0, before);
        assert_eq!(
            s.averages(),
            Totals::default(),
            "no average before a whole period"
        );
        s.roll(t0 + Duration::from_secs(2), after);
        assert_eq!(s.averages(), a);
    }
}
