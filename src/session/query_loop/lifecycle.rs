//! How a session ends or moves between states outside the request/answer flow: the console's
//! `KILL`, a shutdown that finds it at a transaction boundary, a reload that supersedes its
//! state.

use std::time::Duration;

use super::{End, Loop};
use crate::protocol::{sqlstate, PgError, TxStatus};

/// See [`Loop::may_close`].
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

impl Loop<'_> {
    /// Whether the session moves to a reload's state now: one is in force, and the session
    /// is at a transaction boundary with nothing in flight (checked once per turn: one
    /// relaxed load while no reload happened).
    pub(super) fn renews(&self) -> bool {
        self.state.superseded()
            && !self.shutting_down
            && self.quiescent()
            && (self.state.controls.current())
                .is_some_and(|c| c.generation != self.state.generation)
    }

    /// A `KILL` of the client, or a shutdown that finds it at a transaction boundary: the
    /// session ends now.
    pub(super) fn ends_now(&mut self) -> Option<End> {
        if self
            .login
            .cancel
            .killed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Some(self.killed());
        }
        if !self.shutting_down {
            return None;
        }
        let idle = match &self.server {
            None => true,
            Some(_) => self.relay.idle() && !self.unsynced && self.txn.status() == TxStatus::Idle,
        };
        if !(idle && self.may_close()) {
            return None;
        }
        PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .encode(&mut self.to_client);
        Some(End::Shutdown)
    }

    /// While the proxy shuts down, whether an idle client is closed now: one that has run a
    /// transaction is closed at its end; one that has run none yet (it may have logged in
    /// just as the shutdown began, and be about to send its first query) gets
    /// [`SHUTDOWN_GRACE`] of quiet first.
    fn may_close(&self) -> bool {
        self.login
            .cancel
            .xacts
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
            || self.last_activity.elapsed() >= SHUTDOWN_GRACE
    }

    /// The console's `KILL` / `KILL_CLIENT`: the client gets FATAL 57P01 and every server
    /// connection it holds is closed (whatever was open there rolls back).
    fn killed(&mut self) -> End {
        if let Some(c) = self.server.as_deref_mut() {
            c.broken = true;
        }
        for (_, c) in &mut self.routing.parked {
            c.broken = true;
        }
        self.fatal(PgError::fatal(
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        ))
    }
}
