//! The transparent retry of a read whose server failed before any byte of its answer
//! reached the client: the query loop's side of [`crate::session::machine::retry`] (ban the
//! server, replay the read's frames on another one).

use super::super::{lock, End, Loop};
use crate::session::machine::retry::{hold, ReadHold};

impl Loop<'_> {
    /// Whether a failure of the current server can be hidden by retrying elsewhere.
    fn can_retry(&self) -> bool {
        self.routing.retry.can_retry() && self.server.is_some()
    }

    /// The server connection failed: retry the read elsewhere if nothing reached the client
    /// yet (returns None), else tell the client and close.
    pub(in crate::session::query_loop) fn lost(&mut self, what: &str) -> Option<End> {
        if !self.routing.retry.retry_on_drop() {
            return Some(self.server_lost(what));
        }
        self.retry_elsewhere(what, true)
    }

    /// The current server failed the read (`ban`: it is banned as well, else only avoided
    /// by this read): retry it elsewhere if nothing reached the client yet (returns None),
    /// else tell the client and close. The connection is closed, whatever it was doing.
    pub(in crate::session::query_loop) fn retry_elsewhere(
        &mut self,
        what: &str,
        ban: bool,
    ) -> Option<End> {
        if !self.can_retry() {
            return Some(self.server_lost(what));
        }
        let Some(mut conn) = self.server.take() else {
            return Some(self.server_lost(what));
        };
        conn.broken = true;
        crate::admin::events::Events::count(&self.state.events.read_retries);
        let addr = conn.addr.to_string();
        drop(conn);
        let ban_ms = self.state.config.routing.ban_time_ms;
        for pool in self.login.shards.iter().flat_map(|s| s.servers.iter()) {
            if ban && pool.addr() == addr {
                pool.health.ban(ban_ms, what);
            }
        }
        tracing::info!(server = %addr, "{what}; retrying the request on another connection");
        lock(&self.login.cancel.slot).clear();
        self.relay.reset();
        self.to_server.clear();
        self.events.clear();
        self.unsynced = false;
        for f in self.routing.retry.retry(addr).into_iter().rev() {
            self.routing.pending.push_front(f);
        }
        self.txn.retried();
        None
    }

    /// For a read that can still be retried: forward the server's input only once the
    /// answer is complete (see [`hold`]), so that a server dying mid-answer (a notice
    /// already sent, or rows without their ReadyForQuery) never shows on the client.
    pub(in crate::session::query_loop) fn read_hold(&self) -> ReadHold {
        if !self.routing.retry.retryable() {
            return ReadHold::Go;
        }
        let Some(conn) = self.server.as_deref() else {
            return ReadHold::Go;
        };
        let skip = self.relay.mid_message();
        let buf = conn.inbuf.get(skip..).unwrap_or_default();
        hold(buf, self.relay.owed_ready(), !self.routing.on_primary)
    }
}
