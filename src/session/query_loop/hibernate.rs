//! Hibernation: a client that has been quiet for a tick, holds no server connection and has
//! nothing in flight gives back its buffers and its running loop's future, and waits in a small
//! future for its next bytes, its idle timeout or shutdown. Thousands of idle clients then cost
//! little more than their session state.

use bytes::BytesMut;

use crate::admin::stats::Meter;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::{idle_error, idle_limit, End, Loop, Routing};
use crate::session::client_state::ClientState;
use crate::session::machine::sync::SkipToSync;
use crate::session::machine::txn::Txn;
use crate::session::relay::Relay;
use crate::session::{CancelKeyGuard, Login};
use crate::state::ProxyState;

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
            && self.relay.at_rest()
            && !self.held
            && !self.client_blocked
            && !self.client_gone
    }
}

/// Gives back the buffers, relay and running future of a quiet client (see
/// [`Loop::quiescent`]) and waits, in a small future, for its next bytes, its idle timeout or
/// shutdown. `None`: run the loop again.
pub(super) async fn hibernate(l: Box<Loop<'_>>) -> (Box<Loop<'_>>, Option<End>) {
    let state = l.state;
    let limit = idle_limit(&state.config.proxy, l.txn.status(), true);
    // Boxed, and only when there is a timeout: most hibernating clients have none.
    let mut timeout = limit.map(|ms| {
        Box::pin(tokio::time::sleep_until(
            l.last_activity + Duration::from_millis(ms),
        ))
    });
    let rung = state.shutdown.notified();
    tokio::pin!(rung);
    rung.as_mut().enable();
    if state.shutdown.rung() {
        let mut l = l;
        l.shutting_down = true;
        return (l, None);
    }
    let dormant = Dormant::of(l);
    let woke = {
        let _counted = Hibernating::count(&state.hibernating);
        // Polled by hand, not through `readable()` and `select!`: their futures would make
        // every hibernating client's task bigger.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = dormant.parts.client_reader.as_ref().poll_read_ready(cx) {
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
        .await
    };
    let mut l = dormant.wake();
    let end = match woke {
        Woke::Client(true) => {
            // Bytes (or the end) arrived: the next tick must not send it back here.
            l.last_activity = tokio::time::Instant::now();
            None
        }
        Woke::Client(false) => Some(End::ClientGone),
        Woke::Timeout => Some(l.fatal(idle_error(l.txn.status()))),
        // A KILL nudges the bell without ringing it: the loop's next turn looks at its flag.
        Woke::Shutdown if !state.shutdown.rung() => None,
        Woke::Shutdown => {
            l.shutting_down = true;
            None
        }
    };
    (l, end)
}

/// What a hibernating session keeps of its [`Loop`]: all but what a quiescent loop holds
/// empty (buffers, server connection, events) or at rest (relay, flags), which waking
/// makes afresh.
struct Dormant<'a> {
    state: &'a ProxyState,
    parts: Detached,
    cancel: CancelKeyGuard<'a>,
}

/// A quiescent session between two states: what a [`Dormant`] keeps but the state and the
/// cancel key's guard (the key stays registered: the registry outlives reloads). After a
/// reload, a session moves to the new state through this at a transaction boundary.
pub(in crate::session) struct Detached {
    login: Login,
    client_reader: OwnedReadHalf,
    client_writer: OwnedWriteHalf,
    client: ClientState,
    managed: bool,
    unsynced: bool,
    txn: Txn,
    skip: SkipToSync,
    last_activity: tokio::time::Instant,
    routing: Routing,
}

impl<'a> Dormant<'a> {
    /// Takes a quiescent loop apart (every field named: a new one must be placed here).
    fn of(l: Box<Loop<'a>>) -> Box<Dormant<'a>> {
        debug_assert!(l.quiescent() && !l.shutting_down);
        let Loop {
            state,
            login,
            client_reader,
            client_writer,
            from_client: _,
            to_client: _,
            to_server: _,
            server: _,
            relay: _,
            events: _,
            client,
            managed,
            unsynced,
            txn,
            skip,
            client_blocked: _,
            held: _,
            last_activity,
            shutting_down: _,
            client_gone: _,
            mut routing,
            _cancel: cancel,
            mut meter,
        } = *l;
        // Quiescent: no request or transaction is open; what it counted goes to the database.
        login.stats.add(&mut meter);
        routing.pending = Default::default();
        routing.parked = Vec::new();
        let parts = Detached {
            login,
            client_reader,
            client_writer,
            client,
            managed,
            unsynced,
            txn,
            skip,
            last_activity,
            routing,
        };
        Box::new(Dormant {
            state,
            parts,
            cancel,
        })
    }

    /// The loop again, with fresh buffers and relay.
    fn wake(self: Box<Self>) -> Box<Loop<'a>> {
        let Dormant {
            state,
            parts: d,
            cancel,
        } = *self;
        Box::new(Loop {
            state,
            login: d.login,
            client_reader: d.client_reader,
            client_writer: d.client_writer,
            from_client: BytesMut::new(),
            to_client: BytesMut::new(),
            to_server: BytesMut::new(),
            server: None,
            relay: Relay::counting(state.notes_queries()),
            events: Vec::new(),
            client: d.client,
            managed: d.managed,
            unsynced: d.unsynced,
            txn: d.txn,
            skip: d.skip,
            client_blocked: false,
            held: false,
            last_activity: d.last_activity,
            shutting_down: false,
            client_gone: false,
            routing: d.routing,
            _cancel: cancel,
            meter: Meter::default(),
        })
    }

    /// Lets go of the state (see [`Detached`]).
    fn detach(self: Box<Self>) -> Box<Detached> {
        let Dormant { parts, cancel, .. } = *self;
        // The key stays registered: the session goes on under the new state.
        std::mem::forget(cancel);
        Box::new(parts)
    }
}

impl Detached {
    /// The session under `state`: its database's pools, shard map and counters are the new
    /// state's (unless the reload removed its user or database, or changed its number of
    /// shards: then it keeps what it had until it disconnects).
    pub(in crate::session) fn attach(self: Box<Self>, state: &ProxyState) -> Box<Loop<'_>> {
        let mut parts = *self;
        let l = &mut parts.login;
        let (user, database) = (l.user().to_string(), l.database().to_string());
        if let Some(shards) =
            (state.registry.get(&user, &database)).filter(|s| s.len() == l.shards.len())
        {
            l.split = l.pool_mode != crate::config::PoolMode::Session
                && state.config.routing.read_write_split
                && shards.iter().any(|s| s.has_replicas());
            if l.shard_map.is_some() {
                l.shard_map = (state.shard_maps.get(&database).cloned()).or(l.shard_map.take());
            }
            l.shards = shards;
            l.stats = state.db_stats(&database);
        }
        let pid = l.cancel_pid;
        Box::new(Dormant {
            state,
            parts,
            cancel: CancelKeyGuard { state, pid },
        })
        .wake()
    }
}

/// A quiescent session that a reload superseded lets go of its state.
pub(super) fn detach(l: Box<Loop<'_>>) -> Box<Detached> {
    Dormant::of(l).detach()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What one hibernating client keeps besides its task and socket: the dormant session
    /// (704 bytes in a debug build, against 952 for the running loop: the buffers, server
    /// slot, relay and events stay behind). A field that grows fails here first.
    #[test]
    fn a_dormant_session_is_small() {
        let dormant = std::mem::size_of::<Dormant<'static>>();
        let running = std::mem::size_of::<Loop<'static>>();
        println!("dormant {dormant} bytes, running {running} bytes");
        assert!(dormant <= 800, "a dormant session is {dormant} bytes");
        assert!(
            running - dormant >= 240,
            "dormant {dormant}, running {running}"
        );
    }
}
