//! The client's ReadyForQuery, written where the session counts its queries and transactions
//! for `SHOW STATS` (see [`crate::admin::stats`]).

use super::Loop;
use crate::protocol::{self, TxStatus};

impl Loop<'_> {
    /// `n` bytes of the client's output were written to it.
    pub(super) fn sent(&mut self, n: usize) {
        self.meter.counts.sent += n as u64;
        bytes::Buf::advance(&mut self.to_client, n);
    }

    /// Writes a ReadyForQuery with `status` for the client: a query ends, and a transaction
    /// when `status` is idle (then the session's counts go to its database's).
    pub(super) fn ready_for_client(&mut self, status: TxStatus) {
        protocol::ready_for_query(&mut self.to_client, status);
        // The answer is written as the server's bytes arrive (`last_activity`; the stream
        // driver keeps it too): no clock read here.
        let now = self.last_activity.into_std();
        let (us, xact_ended) = self.meter.answered(status == TxStatus::Idle, now);
        let answered = std::mem::take(&mut self.relay.answered);
        if let Some(class) = answered.class {
            self.state.events.server_errors.count(&class);
        }
        if !self.meter.pending.is_empty() {
            let us = self.meter.pending.oldest_us(now, us);
            self.note_slow(us);
            let on_replica = !self.routing.on_primary;
            self.meter.pending.record(us, answered, on_replica);
            if self.relay.idle() && !self.meter.pending.is_empty() {
                // Nothing else is owed: whatever is still noted (a request answered in a way
                // not seen here) is dropped, so later answers stay matched to their requests.
                self.meter.pending.clear();
            }
        }
        if xact_ended {
            self.login.stats.add(&mut self.meter);
            self.login
                .cancel
                .xacts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}
