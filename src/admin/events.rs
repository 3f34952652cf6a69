//! Proxy-wide counts of rare events for `/metrics` (each a relaxed atomic addition where it
//! happens; none is on the path of an ordinary transaction).

use std::sync::atomic::{AtomicU64, Ordering};

/// Shard counts fan-outs are counted by: 2 to 8 each, then 9 or more.
pub const FAN_OUT_SHARDS: [&str; 8] = ["2", "3", "4", "5", "6", "7", "8", "9+"];

/// The counts.
#[derive(Debug, Default)]
pub struct Events {
    /// Reads replayed on another server before any byte reached the client.
    pub read_retries: AtomicU64,
    /// Transactions across shards committed with two-phase commit.
    pub two_phase_commits: AtomicU64,
    /// Of those, commits some participant of which was left to recovery.
    pub two_phase_left_to_recovery: AtomicU64,
    /// Two-phase commits that rolled back (a participant could not prepare).
    pub two_phase_aborts: AtomicU64,
    /// Prepared parts left behind (a proxy died between the phases) that recovery committed
    /// or rolled back (shared with the recovery task).
    pub two_phase_recovered: std::sync::Arc<AtomicU64>,
    /// Statements run on several shards, by shard count ([`FAN_OUT_SHARDS`]).
    pub fan_outs: [AtomicU64; FAN_OUT_SHARDS.len()],
    /// Clients pinned to their server connection (session state that cannot move).
    pub pins: AtomicU64,
    /// Errors servers sent to clients, by SQLSTATE class (the first of each request).
    pub server_errors: crate::protocol::ClassCounts,
}

impl Events {
    /// Counts one.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A statement on `shards` shards.
    pub fn fan_out(&self, shards: usize) {
        if shards >= 2 {
            let i = (shards - 2).min(FAN_OUT_SHARDS.len() - 1);
            Events::count(&self.fan_outs[i]);
        }
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fan_outs_are_counted_by_shard_count() {
        let e = Events::default();
        for n in [0, 1, 2, 2, 8, 9, 40] {
            e.fan_out(n);
        }
        let got: Vec<u64> = e.fan_outs.iter().map(Events::get).collect();
        assert_eq!(got, [2, 0, 0, 0, 0, 0, 1, 2]);
    }
}
