//! The query loop of a logged-in client: forwards client messages to a pooled server connection
//! and server replies back, byte for byte, and decides at each ReadyForQuery whether the server
//! connection goes back to the pool (transaction and statement modes).
//!
//! Invariants:
//! - The [`Relay`] queue holds one entry per message sent to the server that gets a response;
//!   `unsynced` is set while extended-protocol messages await their Sync. A server connection is
//!   released only when the queue is empty, nothing awaits a Sync and the status is `I`.
//! - In transaction and statement modes, named statements are renamed to pooled `sg_N` names
//!   and prepared on whichever server connection needs them; SET/RESET, SQL-level PREPARE and
//!   DISCARD/DEALLOCATE are tracked so the client's session follows it (see `client_state`).
//! - A server connection leaves this loop idle and outside a transaction, or flagged broken so
//!   the pool closes it. Nothing the previous client did is visible to the next.

use bytes::{Buf, BytesMut};
use std::future::pending;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use super::client_state::{setup_sql, ClientState};
use super::relay::{Event, Expect, Relay};
use super::Login;
use crate::backend::ServerConn;
use crate::config::PoolMode;
use crate::pool::Checkout;
use crate::protocol::{sqlstate, PgError, TxStatus};
use crate::session::machine::leave::{on_leave, Cleanup, Leaving};
use crate::session::machine::sync::SkipToSync;
use crate::session::machine::txn::Txn;
use crate::state::{CancelTarget, ProxyState};

mod client_frames;
mod copy;
mod fanout;
mod fanout_batch;
mod fanout_stream;
mod hibernate;
mod lifecycle;
mod meter;
mod pipeline;
mod routing;
mod server_input;
mod shapes;
mod shard_conns;
mod slow;
mod statements;
mod twophase;

pub use hibernate::{Wake, TICK};
use routing::Routing;

/// Above this many buffered bytes in one direction, stop reading from the sender.
const BUF_CAP: usize = 256 * 1024;
/// Most responses a client may have outstanding on its server connection.
const MAX_OWED: usize = 65_536;
/// Most named prepared statements one client may hold.
const MAX_NAMED_STATEMENTS: usize = 10_000;
/// Read granularity.
const READ_CHUNK: usize = 16 * 1024;
/// What the injected query that applies a client's settings is called (its failure closes
/// the server connection).
const APPLY_SETTINGS: &str = "apply client settings";
/// Time allowed to roll back or reset a server connection a client left behind.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The client closed its socket (or a write to it failed).
    ClientGone,
    /// The client sent Terminate.
    Terminate,
    /// The proxy sent a FATAL error (in `to_client`) and closes the connection.
    Fatal,
    /// Proxy shutdown; a FATAL 57P01 is in `to_client`.
    Shutdown,
    /// Not an end: the client has been quiet, holds no server connection and nothing is in
    /// flight, so the session gives back its buffers and waits in a small state (see
    /// [`Loop::hibernate`]).
    Hibernate,
    /// Not an end: a reload put another state in force and the session is quiescent; it
    /// moves to that state (see [`hibernate::Detached`]).
    Renew,
}

pub(super) struct Loop<'a> {
    state: &'a ProxyState,
    login: Login,
    client_reader: OwnedReadHalf,
    client_writer: OwnedWriteHalf,
    /// Bytes from the client not yet handled.
    from_client: BytesMut,
    /// Bytes for the client.
    to_client: BytesMut,
    /// Bytes for the server.
    to_server: BytesMut,
    server: Option<Checkout>,
    relay: Relay,
    events: Vec<Event>,
    client: ClientState,
    /// Transaction or statement mode: statements and settings are managed across connections.
    managed: bool,
    unsynced: bool,
    /// The client's transaction (its status is what the client was last told).
    txn: Txn,
    /// After an error in the extended protocol: messages are dropped until Sync.
    skip: SkipToSync,
    /// Client frames wait because the output is full (see `output_full`) or a frame is held.
    client_blocked: bool,
    /// A frame waits in `routing.pending` for the server to answer what was sent before.
    held: bool,
    /// Last bytes read from the client or the server (idle timeouts count from here).
    last_activity: tokio::time::Instant,
    shutting_down: bool,
    /// The client closed its connection while the proxy waited on shards for it.
    client_gone: bool,
    /// Read/write split state.
    routing: Routing,
    /// However the session ends (a panic included), its cancel key goes away with it.
    _cancel: super::CancelKeyGuard<'a>,
    /// What the session counted for `SHOW STATS` since the end of its last transaction.
    meter: crate::admin::stats::Meter,
}

/// A logged-in client's connection: its socket's halves, its address, and what it sent after
/// its startup packet.
pub(super) struct ClientConn {
    pub reader: OwnedReadHalf,
    pub writer: OwnedWriteHalf,
    pub from_client: BytesMut,
}

/// The session of a client that just logged in (`from_client`: what it sent after its startup
/// packet). Boxed: a hibernating client's task holds little more than this pointer.
pub(super) fn new<'a>(
    conn: ClientConn,
    login: Login,
    state: &'a ProxyState,
    shutting_down: bool,
) -> Box<Loop<'a>> {
    let managed = login.pool_mode != PoolMode::Session;
    let client = ClientState::with_startup(login.startup.clone());
    let _cancel = super::CancelKeyGuard {
        state,
        pid: login.cancel_pid,
    };
    Box::new(Loop {
        state,
        login,
        client_reader: conn.reader,
        client_writer: conn.writer,
        from_client: conn.from_client,
        _cancel,
        to_client: BytesMut::new(),
        to_server: BytesMut::new(),
        server: None,
        relay: Relay::counting(state.notes_queries()),
        events: Vec::new(),
        client,
        managed,
        unsynced: false,
        txn: Txn::Idle,
        skip: SkipToSync::Off,
        client_blocked: false,
        held: false,
        last_activity: tokio::time::Instant::now(),
        shutting_down,
        client_gone: false,
        routing: Routing::default(),
        meter: Default::default(),
    })
}

/// Runs the session until the client leaves, then cleans up its server connections. The
/// running loop's future is boxed while it runs; a quiet client waits in [`Loop::hibernate`]
/// instead. A client that has said nothing since its login starts there: thousands of clients
/// that log in and wait cost no buffers.
/// `Some`: a reload superseded the session's state; it goes on under the new one.
pub(super) async fn run(
    l: Box<Loop<'_>>,
    wake: &mut watch::Receiver<Wake>,
) -> Option<Box<hibernate::Detached>> {
    let (mut l, mut ended) = match l.from_client.is_empty() && !l.shutting_down {
        true => hibernate::hibernate(l).await,
        false => (l, None),
    };
    let end = loop {
        if let Some(end) = ended {
            break end;
        }
        if l.renews() {
            return Some(hibernate::detach(l));
        }
        match Box::pin(l.main(wake)).await {
            End::Hibernate => (l, ended) = hibernate::hibernate(l).await,
            End::Renew => return Some(hibernate::detach(l)),
            end => ended = Some(end),
        }
    };
    Box::pin(l.finish(end)).await;
    None
}

async fn read_opt(
    rd: Option<&mut OwnedReadHalf>,
    buf: Option<&mut BytesMut>,
) -> std::io::Result<usize> {
    match (rd, buf) {
        (Some(rd), Some(buf)) => rd.read_buf(buf).await,
        _ => pending().await,
    }
}

async fn sleep_opt(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => pending().await,
    }
}

/// The idle timeout (ms) that applies while it is the client's turn to speak (`settled`: the
/// server owes nothing); `status` tells which one.
fn idle_limit(p: &crate::config::ProxyConfig, status: TxStatus, settled: bool) -> Option<u64> {
    let ms = match status {
        _ if !settled => 0,
        TxStatus::Idle => p.client_idle_timeout_ms,
        _ => p.idle_transaction_timeout_ms,
    };
    (ms > 0).then_some(ms)
}

/// The error a client gets when its idle timeout strikes.
fn idle_error(status: TxStatus) -> PgError {
    if status == TxStatus::Idle {
        PgError::fatal(
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to client idle timeout",
        )
    } else {
        PgError::fatal(
            sqlstate::IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            "terminating connection due to idle-in-transaction timeout",
        )
    }
}

async fn write_opt(wr: Option<&mut OwnedWriteHalf>, buf: &[u8]) -> std::io::Result<usize> {
    match wr {
        Some(wr) if !buf.is_empty() => wr.write(buf).await,
        _ => pending().await,
    }
}

/// Makes room to read into `buf`: small for idle clients (thousands of them should cost
/// little memory), doubling up to `READ_CHUNK` while data keeps coming.
fn reserve(buf: &mut BytesMut) {
    let spare = buf.capacity() - buf.len();
    if spare < 512 {
        buf.reserve(buf.capacity().clamp(2048, READ_CHUNK));
    }
}

impl Loop<'_> {
    async fn main(&mut self, wake: &mut watch::Receiver<Wake>) -> End {
        loop {
            if let Some(end) = self.handle_client_frames().await {
                return end;
            }
            if !self.events.is_empty() {
                // Responses the proxy made up itself (e.g. a refused query) may have finished
                // the transaction without a byte from the server.
                if let Some(end) = self.handle_server_input().await {
                    return end;
                }
            }
            if let Some(end) = self.ends_now() {
                return end;
            }
            // Write eagerly: most of the time the socket takes everything at once, which saves a
            // trip through the select below.
            if let Err(end) = self.try_flush() {
                return end;
            }
            if self.client_blocked && !self.held && !self.output_full() {
                // The flush made room: the client's next messages (maybe already read, like
                // the Sync after a large Parse) must be handled before waiting for anything.
                continue;
            }
            if self.renews() {
                return End::Renew;
            }
            // Settled: it is the client's turn to speak.
            let settled = self.relay.idle() && !self.unsynced && self.to_server.is_empty();
            // While shutting down, an idle client is closed at the end of its grace (see
            // `may_close`); a client in a transaction keeps its own idle timeout.
            let grace = self.shutting_down && settled && self.server.is_none();
            let idle_limit = match grace {
                true => Some(lifecycle::SHUTDOWN_GRACE.as_millis() as u64),
                false => idle_limit(&self.state.config.proxy, self.txn.status(), settled),
            };
            let listen = self.listens(wake, settled);
            reserve(&mut self.from_client);
            let (srd, swr, sin) = match self.server.as_deref_mut() {
                Some(ServerConn { rd, wr, inbuf, .. }) => {
                    reserve(inbuf);
                    (Some(rd), Some(wr), Some(inbuf))
                }
                None => (None, None, None),
            };
            let read_server = srd.is_some() && self.to_client.len() < BUF_CAP;
            tokio::select! {
                r = self.client_reader.read_buf(&mut self.from_client), if !self.client_blocked => {
                    let Ok(n @ 1..) = r else {
                        if let Err(e) = &r {
                            tracing::warn!(user = %self.login.user(), "client connection lost: {e}");
                        }
                        return End::ClientGone;
                    };
                    self.meter.counts.received += n as u64;
                    self.last_activity = tokio::time::Instant::now();
                }
                _ = sleep_opt(idle_limit.map(|ms| self.last_activity + Duration::from_millis(ms))) => {
                    if grace {
                        continue;
                    }
                    return self.fatal(idle_error(self.txn.status()));
                }
                r = read_opt(srd, sin), if read_server => {
                    self.last_activity = tokio::time::Instant::now();
                    if !matches!(r, Ok(n) if n > 0) {
                        if let Some(end) = self.lost("server closed the connection unexpectedly") {
                            return end;
                        }
                    }
                }
                r = self.client_writer.write(&self.to_client), if !self.to_client.is_empty() => match r {
                    Ok(n) => self.sent(n),
                    Err(e) => {
                        tracing::warn!(user = %self.login.user(), "client connection lost: {e}");
                        return End::ClientGone;
                    }
                },
                r = write_opt(swr, &self.to_server), if !self.to_server.is_empty() => match r {
                    Ok(n) => {
                        self.to_server.advance(n);
                        if let Some(c) = self.server.as_deref_mut() {
                            c.at_rest = false;
                        }
                    }
                    Err(_) => {
                        if let Some(end) = self.lost("could not send data to server") {
                            return end;
                        }
                    }
                },
                r = wake.changed(), if listen => {
                    let signal = r.map(|()| *wake.borrow_and_update());
                    if self.woken(signal) {
                        return End::Hibernate;
                    }
                }
            }
            if let Some(end) = self.handle_server_input().await {
                return end;
            }
        }
    }

    /// Ends the session with a FATAL error to the client, logged with its cause.
    fn fatal(&mut self, e: PgError) -> End {
        tracing::warn!(user = %self.login.user(), client = self.login.cancel_pid, code = e.code, "closing the client connection: {}", e.message);
        e.encode(&mut self.to_client);
        End::Fatal
    }

    /// Output towards the server or the client is at its cap: reading more from the client
    /// waits until it moves.
    fn output_full(&self) -> bool {
        self.to_server.len() >= BUF_CAP || self.to_client.len() >= BUF_CAP
    }

    /// Writes pending output in both directions without waiting.
    fn try_flush(&mut self) -> Result<(), End> {
        if !self.to_server.is_empty() {
            if let Some(conn) = self.server.as_deref_mut() {
                match conn.wr.try_write(&self.to_server) {
                    Ok(n) => {
                        self.to_server.advance(n);
                        conn.at_rest = false;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        if let Some(end) = self.lost("could not send data to server") {
                            return Err(end);
                        }
                    }
                }
            }
        }
        if !self.to_client.is_empty() {
            match self.client_writer.try_write(&self.to_client) {
                Ok(n) => self.sent(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return Err(End::ClientGone),
            }
        }
        Ok(())
    }

    /// The server connection failed mid-protocol: tell the client and close.
    fn server_lost(&mut self, what: &str) -> End {
        let addr = match self.server.as_deref_mut() {
            Some(c) => {
                c.broken = true;
                c.addr.to_string()
            }
            None => String::new(),
        };
        tracing::warn!(server = %addr, "{what}");
        PgError::fatal(sqlstate::CONNECTION_FAILURE, format!("{what} ({addr})"))
            .with_hint(
                "the server was lost while this transaction was open on it; reconnect and \
                 retry the transaction (new ones go to a server that answers)",
            )
            .encode(&mut self.to_client);
        End::Fatal
    }

    /// Makes the server connection's settings match the client's, ahead of its messages
    /// (which may then be replayed elsewhere if the server says goodbye before answering it,
    /// see `ReadRetry::guard_setup`).
    fn apply_settings(&mut self) {
        let Some(conn) = self.server.as_deref_mut() else {
            return;
        };
        if let Some(sql) = setup_sql(&self.client.settings, conn) {
            let _ = postgres_protocol::message::frontend::query(&sql, &mut self.to_server);
            self.relay.push(Expect::InjectedQuery(APPLY_SETTINGS));
            conn.settings = self.client.settings.clone();
            self.routing.retry.guard_setup();
        }
    }

    /// Flushes what is owed to the client and leaves the server connection clean or broken.
    async fn finish(mut self, end: End) {
        if end == End::Fatal {
            // The proxy closes this client's connection: say why (the FATAL it was sent).
            tracing::warn!(
                user = %self.login.user(),
                "closing the client connection: {}",
                fatal_message(&self.to_client).as_deref().unwrap_or("fatal error")
            );
        }
        if matches!(end, End::Fatal | End::Shutdown) && !self.to_client.is_empty() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.client_writer.write_all(&self.to_client),
            )
            .await;
        }
        let _ = self.client_writer.shutdown().await;
        self.login.stats.add(&mut self.meter);
        if self.state.config.proxy.log_connections {
            let c = &self.login.cancel;
            tracing::info!(
                peer = %c.peer.map(|p| p.to_string()).unwrap_or_default(),
                user = %c.user,
                database = %c.database,
                duration_ms = crate::health::now_ms().saturating_sub(c.since_ms),
                transactions = c.xacts.load(std::sync::atomic::Ordering::Relaxed),
                end = ?end,
                "client logged out"
            );
        }
        for (_, mut c) in std::mem::take(&mut self.routing.parked) {
            // Closing the connection rolls its part of the transaction back.
            c.broken = true;
        }
        let Some(mut conn) = self.server.take() else {
            return;
        };
        lock(&self.login.cancel.slot).clear();
        let reset_query = &self.state.config.proxy.server_reset_query;
        let leaving = Leaving {
            broken: conn.broken,
            owes: !self.relay.idle(),
            owes_ready: self.relay.owed_ready() > 0,
            unsynced: self.unsynced,
            status: self.txn.status(),
            pinned: self.client.pinned.is_some(),
            session_mode: self.login.pool_mode == PoolMode::Session,
            has_reset_query: !reset_query.is_empty(),
        };
        let (rollback, reset) = match on_leave(leaving) {
            Cleanup::Close => {
                conn.broken = true;
                return;
            }
            Cleanup::CancelAndClose => {
                let (addr, pid, secret) = (conn.addr.clone(), conn.pid, conn.secret.clone());
                tokio::spawn(async move {
                    let _ = ServerConn::cancel(&addr, pid, &secret).await;
                });
                conn.broken = true;
                return;
            }
            Cleanup::Clean { rollback, reset } => (rollback, reset.then(|| reset_query.clone())),
        };
        let cleanup = async {
            if rollback {
                conn.run("ROLLBACK").await?;
            }
            match &reset {
                Some(q) => conn.run(q).await,
                None => Ok(TxStatus::Idle),
            }
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
            Ok(Ok(TxStatus::Idle)) if conn.inbuf.is_empty() => {
                if reset.is_some() {
                    // DISCARD ALL (or the configured reset) dropped statements and settings.
                    conn.prepared.clear();
                    conn.sql_prepared.clear();
                    conn.settings = Default::default();
                }
            }
            _ => conn.broken = true,
        }
        if end == End::ClientGone {
            tracing::debug!(user = %self.login.user(), "client vanished; server connection cleaned up");
        }
    }
}

/// The message of the last ErrorResponse in `out` (what a closing session sent).
fn fatal_message(out: &[u8]) -> Option<String> {
    crate::protocol::whole_messages(out)
        .filter(|(tag, _)| *tag == b'E')
        .last()
        .map(|(_, body)| crate::protocol::error_fields(body).1)
}

fn lock(slot: &crate::state::CancelSlot) -> std::sync::MutexGuard<'_, Vec<CancelTarget>> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::fatal_message;

    #[test]
    fn the_cause_of_a_closed_connection_is_read_from_its_fatal() {
        let mut out = bytes::BytesMut::new();
        crate::protocol::ready_for_query(&mut out, crate::protocol::TxStatus::Idle);
        crate::protocol::PgError::fatal("08006", "server closed the connection").encode(&mut out);
        assert_eq!(
            fatal_message(&out).as_deref(),
            Some("server closed the connection")
        );
        assert_eq!(fatal_message(b"E\0\0"), None);
    }
}
