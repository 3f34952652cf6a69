//! Hibernation: a client that has been quiet for a tick, holds no server connection and has
//! nothing in flight gives back its buffers and its running loop's future, and waits in a small
//! future for its next bytes, its idle timeout or shutdown. Thousands of idle clients then cost
//! little more than their session state.

use bytes::BytesMut;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::sync::watch;

use super::{idle_error, idle_limit, End, Loop};

/// What the accept loop tells the sessions that are running: shutdown, and a tick about every
/// [`TICK`] so that a quiet client can hibernate (no per-client timer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wake {
    pub shutdown: bool,
    pub tick: u64,
}

/// How often the accept loop ticks [`Wake`].
pub const TICK: Duration = Duration::from_secs(1);
/// A client with nothing in flight hibernates at a tick after this much quiet.
const HIBERNATE_AFTER: Duration = Duration::from_millis(500);

impl Loop<'_> {
    /// Whether the loop's next wait listens to `wake`: while it is the client's turn
    /// (`settled`). While the server owes an answer the loop turns again soon anyway, and a
    /// signal is looked at then, without registering with the channel on every turn.
    pub(super) fn listens(&mut self, wake: &mut watch::Receiver<Wake>, settled: bool) -> bool {
        if self.shutting_down {
            return false;
        }
        if settled {
            return true;
        }
        match wake.has_changed() {
            Ok(false) => {}
            Ok(true) => {
                let signal = *wake.borrow_and_update();
                self.woken(Ok(signal));
            }
            Err(e) => {
                self.woken(Err(e));
            }
        }
        false
    }

    /// A signal of the accept loop (`Err`: it is gone): shutdown, or a tick, at which a quiet
    /// session hibernates (true).
    pub(super) fn woken(&mut self, signal: Result<Wake, watch::error::RecvError>) -> bool {
        match signal {
            Ok(Wake {
                shutdown: false, ..
            }) => self.quiescent() && self.last_activity.elapsed() >= HIBERNATE_AFTER,
            _ => {
                self.shutting_down = true;
                false
            }
        }
    }

    /// Nothing is in flight and no server connection is held: the session's buffers may go.
    pub(super) fn quiescent(&self) -> bool {
        self.server.is_none()
            && self.routing.parked.is_empty()
            && self.routing.pending.is_empty()
            && self.from_client.is_empty()
            && self.to_client.is_empty()
            && self.to_server.is_empty()
            && self.events.is_empty()
            && self.relay.idle()
            && !self.held
            && !self.client_blocked
            && !self.client_gone
    }

    /// Gives back the buffers of a quiet client and waits, in a small future, for its next
    /// bytes, its idle timeout or shutdown. `None`: run the loop again.
    pub(super) async fn hibernate(&mut self) -> Option<End> {
        self.from_client = BytesMut::new();
        self.to_client = BytesMut::new();
        self.to_server = BytesMut::new();
        self.events = Vec::new();
        self.relay.shrink();
        self.routing.pending = Default::default();
        let limit = idle_limit(&self.state.config.proxy, self.txn.status(), true);
        // Boxed, and only when there is a timeout: most hibernating clients have none.
        let mut timeout = limit.map(|ms| {
            Box::pin(tokio::time::sleep_until(
                self.last_activity + Duration::from_millis(ms),
            ))
        });
        let state = self.state;
        let rung = state.shutdown.notified();
        tokio::pin!(rung);
        rung.as_mut().enable();
        if state.shutdown.rung() {
            self.shutting_down = true;
            return None;
        }
        let _counted = Hibernating::count(&self.state.hibernating);
        // Polled by hand, not through `readable()` and `select!`: their futures would make
        // every hibernating client's task bigger.
        let woke = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.client_reader.as_ref().poll_read_ready(cx) {
                return Poll::Ready(Woke::Client(r.is_ok()));
            }
            if rung.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Shutdown);
            }
            match timeout.as_mut().map(|t| t.as_mut().poll(cx)) {
                Some(Poll::Ready(())) => Poll::Ready(Woke::Timeout),
                _ => Poll::Pending,
            }
        })
        .await;
        match woke {
            Woke::Client(true) => {
                // Bytes (or the end) arrived: the next tick must not send it back here.
                self.last_activity = tokio::time::Instant::now();
                None
            }
            Woke::Client(false) => Some(End::ClientGone),
            Woke::Timeout => Some(self.fatal(idle_error(self.txn.status()))),
            Woke::Shutdown => {
                self.shutting_down = true;
                None
            }
        }
    }
}

/// What ended a hibernation.
enum Woke {
    /// The client's socket is readable (false: it failed).
    Client(bool),
    Shutdown,
    Timeout,
}

/// Counts a hibernating session for as long as it lives (a dropped task included).
struct Hibernating<'a>(&'a AtomicUsize);

impl<'a> Hibernating<'a> {
    fn count(n: &'a AtomicUsize) -> Hibernating<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Hibernating(n)
    }
}

impl Drop for Hibernating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
